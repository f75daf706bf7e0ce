"""Training throughput: median seconds per iteration, split into data (patch sampling + augmentation) and compute
(forward + backward + optimiser step).

CPU default: batch 1, patch [16, 160, 160] (the paper's batch 2 x [16, 320, 320] needs ~30 GB on CPU), width 32.
On a GPU: `python benchmarks/training.py --device cuda --batch-size 2 --patch 16 320 320 --base-channels 32`.
Cases are synthetic (a phantom-like volume in memory) at the paper's Dataset A spacing, so the plan is the paper's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from RCSegNeXtCore.planning import make_plans_from_values  # noqa: E402
from RCSegNeXtCore.training.augment import AugmentConfig, Augmenter, context_size, use_dummy_2d  # noqa: E402
from RCSegNeXtCore.training.loss import DiceCELoss  # noqa: E402
from RCSegNeXtCore.training.sampler import PatchSampler, TrainingCase, class_locations_from  # noqa: E402
from RCSegNeXtCore.devices import resolve_device  # noqa: E402
from RCSegNeXtCore.training.trainer import amp_dtype  # noqa: E402


def synthetic_case(shape, seed=0) -> TrainingCase:
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:shape[1], :shape[2]]
    disc = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (shape[1] / 6) ** 2
    spot = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2 - shape[2] / 12) ** 2) < (shape[1] / 14) ** 2
    label = np.zeros(shape, np.int8)
    label[2:-2] = np.where(spot, 2, np.where(disc, 1, 0))
    data = (label[None] + rng.normal(0, 0.5, (1, *shape))).astype(np.float32)
    return TrainingCase(f"synthetic_{seed}", data, label, class_locations_from(None, label))


# --augmentation: the official pipeline's augmentation (nnU-Net v2.1 + batchgenerators v1) or RCSegNeXt 0.1's choices
AUGMENTATIONS = {
    "nnunet_v1": {},
    "0.1": dict(spatial_scaling="all_axes_uniform", noise_sd="sqrt", intensity="0.1", interpolation="linear_nearest"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 160, 160])
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--augmentation", choices=[*AUGMENTATIONS, "both"], default="nnunet_v1",
                        help="nnunet_v1 (default, the official pipeline's), 0.1 (RCSegNeXt 0.1's), or both: "
                             "alternate iterations in one process and report each")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, allow_mps=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    plans = make_plans_from_values([4.0, 0.875, 0.875], args.patch, base_channels=args.base_channels,
                                   batch_size=args.batch_size)
    network = plans.build_network().to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    dtype = amp_dtype(device.type, True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_fn = DiceCELoss()
    variants = list(AUGMENTATIONS) if args.augmentation == "both" else [args.augmentation]
    dummy_2d = use_dummy_2d(args.patch, plans.target_spacing)
    configs = {v: AugmentConfig(mirror_axes=list(plans.mirror_axes), dummy_2d=dummy_2d, **AUGMENTATIONS[v])
               for v in variants}
    shape = [max(p, s) for p, s in zip(args.patch, [24, 400, 400])]
    sampler = PatchSampler([synthetic_case(shape, i) for i in range(2)], context_size(args.patch, configs[variants[0]]),
                           seed=0)
    augmenters = {v: Augmenter(args.patch, configs[v],
                               torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(0))
                  for v in variants}
    data_times, compute_times = {v: [] for v in variants}, {v: [] for v in variants}
    for it in range(len(variants) * (args.warmup + args.iterations)):
        variant = variants[it % len(variants)]
        sync(device)
        t0 = time.perf_counter()
        images, labels, _ = sampler.batch(args.batch_size)
        x = torch.from_numpy(images).to(device)
        y = torch.from_numpy(labels).to(device)
        x, y = augmenters[variant](x, y)
        sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = network(x)
        loss = loss_fn(out, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()
        sync(device)
        t2 = time.perf_counter()
        if it >= len(variants) * args.warmup:
            data_times[variant].append(t1 - t0)
            compute_times[variant].append(t2 - t1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    print(f"device: {name}; AMP {amp}; batch {args.batch_size} x patch {args.patch}; base channels "
          f"{args.base_channels}; {args.iterations} timed iterations after {args.warmup} warm-up")
    for variant in variants:
        data, compute = statistics.median(data_times[variant]), statistics.median(compute_times[variant])
        if len(variants) > 1:
            print(f"\naugmentation {variant}:")
        print("| part | median s/iteration | share |")
        print("|---|---:|---:|")
        total = data + compute
        print(f"| data (sampling + augmentation) | {data:.4f} | {100 * data / total:.1f} % |")
        print(f"| compute (forward + backward + step) | {compute:.4f} | {100 * compute / total:.1f} % |")
        print(f"| total | {total:.4f} | 100 % |")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
