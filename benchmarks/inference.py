"""Inference speed against the field's default, in one process, on the same weights and volume.

  (a)  reference: nnU-Net v2's default sliding window (step = half the patch, Gaussian sigma = patch/8, logits
       averaged over the 8 mirrorings, softmax at the end), re-implemented here independently of RCSegNeXtCore;
  (a') the same without mirroring;
  (b)  RCSegNeXtCore.inference.sliding_window with its defaults (fewest tiles at the plan's patch size with a
       minimum overlap of 1/4 of the patch, at least two bottleneck cells, at most half the patch; Gaussian-weighted
       logits as nnU-Net; no mirroring);
  (b') with --also-whole-volume: the opt-in single whole-volume pass (faster, not equivalent for instance norms);
  (c)  (b) with mirroring TTA over the plan's axes.
Printed: wall time, peak memory (CUDA: max allocated; CPU: peak resident-set growth during the run), forward passes
(one network call on one tile; a whole-volume pass also counted in patch-equivalents = voxels / patch voxels),
mean |p - p_ref| of the softmax probabilities and per-class Dice agreement of the argmax label maps.

On a slow CPU (a)'s mirrored cost is extrapolated from one tile's 8 passes (--full-reference runs it; on CUDA it is
run by default); then |(c)-(a)| cannot be computed and |(c)-(a')| is shown instead.

  python benchmarks/inference.py                          # CPU: base width 8, [24, 512, 512], patch [16, 320, 320]
  python benchmarks/inference.py --device cuda            # full width (32), (a) run in full
  python benchmarks/inference.py --model-dir MODEL_DIR    # a trained model folder (fold 0)
  python benchmarks/inference.py --model-dir MODEL_DIR --image IMG [IMG ...]   # label agreement on real images
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from RCSegNeXtCore.inference.sliding_window import predict_sliding_window  # noqa: E402
from RCSegNeXtCore.strides import total_stride  # noqa: E402


# -- (a) nnU-Net v2 default tiling, re-implemented from its documented behaviour ---------------------------------------
def nnunet_steps(size: int, patch: int, step_fraction: float = 0.5) -> list[int]:
    """Tile starts: as many steps of <= step_fraction x patch as needed, spread evenly from 0 to size - patch."""
    if size <= patch:
        return [0]
    count = int(math.ceil((size - patch) / (patch * step_fraction))) + 1
    actual = (size - patch) / (count - 1)
    return [int(round(actual * i)) for i in range(count)]


def nnunet_gaussian(patch) -> torch.Tensor:
    """nnU-Net's map: a unit impulse at index patch // 2 blurred with sigma = patch / 8, scaled to max 10, exact
    zeros raised to the smallest non-zero value."""
    grids = torch.meshgrid(*[torch.arange(p, dtype=torch.float64) for p in patch], indexing="ij")
    exponent = sum(((g - (p // 2)) / (p / 8.0)) ** 2 for g, p in zip(grids, patch))
    gauss = torch.exp(-0.5 * exponent)
    gauss = gauss / gauss.max() * 10.0
    gauss[gauss == 0] = gauss[gauss > 0].min()
    return gauss.float()


@torch.inference_mode()
def nnunet_reference(net, data: torch.Tensor, patch, num_classes: int, mirror: bool, device, amp: bool,
                     tiles_limit: int | None = None):
    """Softmax of Gaussian-weighted, mirror-averaged logits; returns (probabilities or None, passes, tiles)."""
    shape = data.shape[1:]
    pad = [max(p - s, 0) for s, p in zip(shape, patch)]
    padding = [v for a in reversed(pad) for v in (a // 2, a - a // 2)]
    x = torch.nn.functional.pad(data, padding).to(device)
    starts = [nnunet_steps(s, p) for s, p in zip(x.shape[1:], patch)]
    tiles = list(itertools.product(*starts))
    gauss = nnunet_gaussian(patch).to(device)
    logits_sum = torch.zeros((num_classes, *x.shape[1:]), device=device)
    weight_sum = torch.zeros(x.shape[1:], device=device)
    flips = [c for r in range(4) for c in itertools.combinations((2, 3, 4), r)] if mirror else [()]
    passes = 0
    for tile in tiles[:tiles_limit]:
        region = tuple(slice(s, s + p) for s, p in zip(tile, patch))
        t = x[(slice(None), *region)][None]
        out = torch.zeros((1, num_classes, *patch), device=device)
        for dims in flips:
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                y = net(torch.flip(t, dims) if dims else t).float()
            out += torch.flip(y, dims) if dims else y
            passes += 1
        logits_sum[(slice(None), *region)] += out[0] / len(flips) * gauss
        weight_sum[region] += gauss
    if tiles_limit is not None:
        return None, passes, len(tiles)
    probs = torch.softmax(logits_sum / weight_sum, 0)
    crop = tuple(slice(a // 2, a // 2 + s) for a, s in zip(pad, shape))
    return probs[(slice(None), *crop)].cpu(), passes, len(tiles)


# -- measuring -----------------------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak CUDA memory allocated, or peak growth of the process's resident set (sampled every 20 ms) on CPU."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss() - self.base)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self.thread.join()
            self.peak = max(self.peak, self._rss() - self.base)


def timed(device, fn):
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return result, seconds, memory.peak


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def agreement(p: torch.Tensor, q: torch.Tensor, num_classes: int) -> str:
    la, lb = p.argmax(0).numpy(), q.argmax(0).numpy()
    dices = " ".join(f"{dice(la == k, lb == k):.4f}" for k in range(1, num_classes))
    return f"mean|dp| {float((p - q).abs().mean()):.5f}  max|dp| {float((p - q).abs().max()):.4f}  Dice/class {dices}"


def synthetic_volume(shape, seed=0) -> torch.Tensor:
    """A smooth, z-scored volume with structure at several scales (so the network's output varies)."""
    gen = torch.Generator().manual_seed(seed)
    volume = torch.zeros(1, 1, *shape)
    for scale in (4, 16, 64):
        coarse = torch.randn(1, 1, *[max(2, s * scale // 512 + 2) for s in shape], generator=gen)
        volume += torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)
    volume += 0.3 * torch.randn(1, 1, *shape, generator=gen)
    return ((volume - volume.mean()) / volume.std())[0]


def shifted_reference(net, data: torch.Tensor, patch, num_classes: int, device, amp: bool, shift: int):
    """(a') with its tiles moved: the volume zero-padded by `shift` voxels before y and x, the result cropped back."""
    padded = torch.nn.functional.pad(data, (shift, 0, shift, 0))
    probs, _, _ = nnunet_reference(net, padded, patch, num_classes, False, device, amp)
    return probs[:, :, shift:, shift:]


@torch.inference_mode()
def single_tile_agreement(net, data: torch.Tensor, ref_labels: np.ndarray, patch, counts: np.ndarray, rng,
                          tiles: int = 24, bin_width: int = 4) -> None:
    """Adds, per in-plane distance of a voxel from its tile's border (bins of `bin_width`), the |a and b|, |a|, |b|
    counts per class of single tiles at random positions against the reference labels: how much a tile's own
    answer depends on where the voxel sits in it."""
    if data.shape[2] < patch[1] or data.shape[3] < patch[2]:
        return  # an image narrower than the patch in-plane has no tile positions to vary
    data = torch.nn.functional.pad(data, [0, 0, 0, 0, 0, max(0, patch[0] - data.shape[1])])
    ref_labels = np.pad(ref_labels, [(0, data.shape[1] - ref_labels.shape[0]), (0, 0), (0, 0)])
    yy, xx = np.meshgrid(np.arange(patch[1]), np.arange(patch[2]), indexing="ij")
    inset = np.minimum(np.minimum(yy, patch[1] - 1 - yy), np.minimum(xx, patch[2] - 1 - xx)) // bin_width
    device = next(net.parameters()).device
    for _ in range(tiles):
        y0, x0 = (int(rng.integers(0, data.shape[a] - patch[a - 1] + 1)) for a in (2, 3))
        window = (slice(0, patch[0]), slice(y0, y0 + patch[1]), slice(x0, x0 + patch[2]))
        labels = net(data[(slice(None), *window)][None].to(device))[0].argmax(0).cpu().numpy()
        ref = ref_labels[window]
        for b in range(counts.shape[0]):
            a_, r_ = labels[:, inset == b], ref[:, inset == b]
            for k in range(1, counts.shape[1]):
                counts[b, k] += [np.logical_and(a_ == k, r_ == k).sum(), (a_ == k).sum(), (r_ == k).sum()]


def image_agreement(net, plans, images, device, amp: bool, stride, overlap: float | None, shift: int = 5,
                    tile_insets: bool = False) -> None:
    """Label agreement of (b) with (a') on real image files (preprocessed exactly as the plan says): Dice per class
    per image, and pooled over all images (intersections and sizes summed). Also the model's own sensitivity to tile
    placement: (a') against (a') with its tiles moved by `shift` voxels in y and x (0: not measured)."""
    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.data.preprocess import preprocess_case

    classes, patch = plans.num_classes, list(plans.patch_size)
    pooled = {"(b) vs (a')": np.zeros((classes, 3))}  # per class: |a and b|, |a|, |b|
    if shift:
        pooled[f"(a') moved {shift} voxels vs (a')"] = np.zeros((classes, 3))
    insets = np.zeros(((min(patch[1:]) - 1) // 2 // 4 + 1, classes, 3)) if tile_insets else None  # bins of 4
    rng = np.random.default_rng(0)
    extra = {} if overlap is None else {"overlap": overlap}

    def count(name, a, b):
        for k in range(1, classes):
            pooled[name][k] += [np.logical_and(a == k, b == k).sum(), (a == k).sum(), (b == k).sum()]

    for path in images:
        case = preprocess_case(read_image(path), plans)
        data = torch.from_numpy(np.ascontiguousarray(case.data, dtype=np.float32))
        ref, passes_ref, _ = nnunet_reference(net, data, patch, classes, False, device, amp)
        ours, stats = predict_sliding_window([net], data, patch, classes, total_stride=stride, device=device, amp=amp,
                                             **extra)
        count("(b) vs (a')", ours.argmax(0).numpy(), ref.argmax(0).numpy())
        line = f"{Path(path).name}: preprocessed {list(data.shape[1:])}; (a') {passes_ref} passes, (b) " \
               f"{stats.forward_passes} passes ({stats.mode}, tiles {stats.tile_grid}); {agreement(ours, ref, classes)}"
        if shift:
            moved = shifted_reference(net, data, patch, classes, device, amp, shift)
            count(f"(a') moved {shift} voxels vs (a')", moved.argmax(0).numpy(), ref.argmax(0).numpy())
        if insets is not None:
            single_tile_agreement(net, data, ref.argmax(0).numpy(), patch, insets, rng)
        print(line, flush=True)
    for name, counts in pooled.items():
        dices = " ".join(f"{2 * i / max(a + b, 1):.4f}" for i, a, b in counts[1:])
        print(f"pooled over {len(images)} image(s): {name} label Dice per class (1..{classes - 1}): {dices}")
    if insets is not None:
        print("single tiles at random positions vs (a'), by in-plane distance of the voxel from the tile border:")
        for b, counts in enumerate(insets):
            dices = " ".join(f"{2 * i / max(a + r, 1):.3f}" for i, a, r in counts[1:])
            print(f"  {4 * b:3d}-{4 * b + 3:3d} voxels: label Dice per class {dices}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--model-dir", default=None, help="a model folder (fold 0 is used); default random weights")
    parser.add_argument("--base-channels", type=int, default=None, help="width (default 8 on CPU, 32 on CUDA)")
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 512, 512])
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 0.875, 0.875])
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 320, 320])
    parser.add_argument("--full-reference", action="store_true", help="run (a) in full (default on CUDA)")
    parser.add_argument("--skip-tta", action="store_true", help="do not run (c)")
    parser.add_argument("--also-whole-volume", action="store_true",
                        help="also run (b') with the opt-in whole-volume pass (one pass when it fits in memory)")
    parser.add_argument("--image", nargs="+", default=None, metavar="PATH",
                        help="real image file(s) instead of a synthetic volume: only the label agreement of (b) with "
                             "(a') is measured (needs --model-dir)")
    parser.add_argument("--overlap", type=float, default=None, help="(b)'s minimum tile overlap (default: ours)")
    parser.add_argument("--shift", type=int, default=5,
                        help="with --image: also compare (a') with (a') whose tiles are moved by this many voxels in "
                             "y and x, the model's own sensitivity to tile placement (0: skip)")
    parser.add_argument("--tile-insets", action="store_true",
                        help="with --image: also single tiles at random positions against (a'), by the voxels' "
                             "distance from the tile border")
    parser.add_argument("--threads", type=int, default=None)
    return parser


def load_network(model_dir, base_channels, spacing, patch, device):
    """(plans, network in eval mode on `device`, a description): fold 0 of a model folder, or random weights."""
    if model_dir:
        from RCSegNeXtCore.inference.model_folder import ModelFolder
        model = ModelFolder(model_dir)
        plans, net = model.plans, model.load_networks([model.folds[0]], device=device)[0]
        source = f"model folder {model.name} fold {model.folds[0]}"
    else:
        from RCSegNeXtCore.planning import make_plans_from_values
        width = base_channels or (32 if device.type == "cuda" else 8)
        plans = make_plans_from_values(spacing, patch, base_channels=width)
        torch.manual_seed(0)
        net = plans.build_network().to(device).eval()
        source = "random weights (seed 0)"
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)
    return plans, net, source


def run_reference(net, data, patch, classes, device, amp: bool, full: bool, report):
    """(a') and (a) (extrapolated from one tile's 8 passes unless `full`): (p_a', p_a or None)."""
    ref_np, t, mem = timed(device, lambda: nnunet_reference(net, data, patch, classes, False, device, amp))
    p_a1, passes, tiles = ref_np
    report(("(a') nnU-Net default, no mirroring", t, mem, passes, passes, ""))
    if full:
        (p_a, passes_a, _), t_a, mem_a = timed(device, lambda: nnunet_reference(net, data, patch, classes, True,
                                                                                device, amp))
        report(("(a)  nnU-Net default (8 mirrors)", t_a, mem_a, passes_a, passes_a, ""))
        return p_a1, p_a
    (_, one, _), t_one, mem_a = timed(device, lambda: nnunet_reference(net, data, patch, classes, True, device,
                                                                      amp, tiles_limit=1))
    report(("(a)  nnU-Net default (8 mirrors)", t_one * tiles, mem_a, one * tiles, one * tiles,
            f"extrapolated: {tiles} tiles x one tile's 8 passes ({t_one:.1f} s); "
            f"8 x (a') would be {8 * t:.0f} s"))
    return p_a1, None


def run_ours(net, data, plans, device, amp: bool, runs, overlap, report) -> dict:
    """(b), and (c) / (b') when in `runs` ((name, mirror axes, whole_volume_max_voxels)): probabilities by name."""
    patch, stride = list(plans.patch_size), total_stride(plans.strides)
    extra = {} if overlap is None else {"overlap": overlap}
    ours = {}
    for name, mirror, limit in runs:
        (probs, stats), t, mem = timed(device, lambda m=mirror, v=limit: predict_sliding_window(
            [net], data, patch, plans.num_classes, total_stride=stride, mirror_axes=m, device=device, amp=amp,
            whole_volume_max_voxels=v, **extra))
        equivalents = stats.forward_passes * math.prod(stats.padded_shape if stats.mode == "whole-volume" else patch) \
            / math.prod(patch)
        ours[name[:3]] = probs
        report((name, t, mem, stats.forward_passes, equivalents, f"{stats.mode}, tiles {stats.tile_grid}"))
    return ours


def print_results(rows, ours: dict, p_a1, p_a, classes: int) -> None:
    base = rows[1][1]
    print(f"\n| run | wall s | x faster than (a) | peak mem MiB | forward passes | patch-equivalents | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, t, mem, passes, eq, note in rows:
        print(f"| {name} | {t:.1f} | {base / t:.1f} | {mem / 2**20:.0f} | {passes} | {eq:.1f} | {note} |")
    print(f"\n(b) vs (a'): {agreement(ours['(b)'], p_a1, classes)}")
    whole = ours.get("(b'")
    if whole is not None:
        print(f"(b') vs (a'): {agreement(whole, p_a1, classes)}")
    if "(c)" in ours:
        if p_a is not None:
            print(f"(c) vs (a):  {agreement(ours['(c)'], p_a, classes)}")
        else:
            print(f"(c) vs (a):  not computed ((a) extrapolated; run --full-reference); (c) vs (a'): "
                  f"{agreement(ours['(c)'], p_a1, classes)}")
    print("targets on CPU: (b) >= 10x faster than (a); (b) forward passes <= half of (a'); mean|dp| (b)-(a') <= 0.02")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    plans, net, source = load_network(args.model_dir, args.base_channels, args.spacing, args.patch, device)
    amp = device.type == "cuda"
    patch, classes = list(plans.patch_size), plans.num_classes
    if args.image:
        if not args.model_dir:
            parser.error("--image needs --model-dir (a trained model and its plan)")
        image_agreement(net, plans, args.image, device, amp, total_stride(plans.strides), args.overlap, args.shift,
                        args.tile_insets)
        return 0
    data = synthetic_volume(args.shape)
    print(f"device {device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"device {device} "
          f"({torch.cuda.get_device_name(device)}, autocast + channels_last_3d)")
    print(f"network base width {plans.architecture.base_channels}, {source}; volume {args.shape} at spacing "
          f"{plans.target_spacing}; patch {patch}; mirror axes {plans.mirror_axes}")
    with torch.inference_mode():  # warm-up (kernel selection) so the first timed run is not penalised
        net(data[None, :, :patch[0], :patch[1], :patch[2]].to(device))
    rows = []

    def report(row):
        rows.append(row)
        print(f"  done: {row[0]}: {row[1]:.1f} s, {row[3]} passes {row[5]}", flush=True)
    p_a1, p_a = run_reference(net, data, patch, classes, device, amp, args.full_reference or device.type == "cuda",
                              report)
    runs = [("(b)  RCSegNeXt default", (), 0)]
    if not args.skip_tta:
        runs.append(("(c)  RCSegNeXt + TTA", tuple(plans.mirror_axes), 0))
    if args.also_whole_volume:
        runs.append(("(b') RCSegNeXt, whole-volume opt-in", (), None))
    ours = run_ours(net, data, plans, device, amp, runs, args.overlap, report)
    print_results(rows, ours, p_a1, p_a, classes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
