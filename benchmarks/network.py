"""Network benchmark: parameters (live / as in the paper), forward GFLOPs and median forward time per Table 3 variant.

All variants run in one process on the same input; ratios are against the `conv` / `conv` baseline (3D U-Net).
GFLOPs come from torch.utils.flop_counter (2 x multiply-accumulates of convolutions, on a meta copy of the network);
time is the median wall time of `--repeats` forwards under torch.inference_mode (after `--warmup` untimed ones).

    python benchmarks/network.py                       # [1, 1, 16, 320, 320], base 32, CPU: several minutes
    python benchmarks/network.py --patch 16 64 64 --base-channels 8 --repeats 3   # seconds
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from RCSegNeXtCore.network import build_network
from RCSegNeXtCore.network.summary import summarize_network
from RCSegNeXtCore.planning import plan_for_patch
from RCSegNeXtCore.progress import ProgressBar

VARIANTS = [("conv", "conv"), ("aninext", "conv"), ("aninext", "convnext"), ("aninext", "res2net"),
            ("aninext", "res2next"), ("aninext", "isonext")]


def time_forward(network: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds of one forward (inference mode); synchronises CUDA around each call."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            network(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 0.875, 0.875], metavar=("Z", "Y", "X"))
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 320, 320], metavar=("Z", "Y", "X"))
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed forwards before timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="run in channels_last_3d memory format")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels, strides = plan_for_patch(args.spacing, args.patch)
    device = torch.device(args.device)
    memory_format = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    x = torch.randn(1, 1, *args.patch, generator=torch.Generator().manual_seed(0)).to(device,
                                                                                    memory_format=memory_format)
    rows = []
    with ProgressBar(len(VARIANTS), "network benchmark", unit="variant") as bar:
        for aniso, iso in VARIANTS:
            arch = dict(base_channels=args.base_channels, aniso_block=aniso, iso_block=iso)
            summary = summarize_network(kernels, strides, args.patch, **arch)
            torch.manual_seed(0)
            network = build_network(kernels, strides, **arch).to(device, memory_format=memory_format).eval()
            seconds = time_forward(network, x, args.repeats, args.warmup)
            rows.append((f"{aniso}/{iso}", summary.live_params, summary.paper_params, summary.gflops, seconds))
            del network
            bar.update(1, last=f"{aniso}/{iso}")
    base = rows[0]
    print(f"RCSegNeXt variants (Table 3), plan for spacing {args.spacing}: kernels {kernels}, strides {strides}")
    print(f"input [1, 1, {', '.join(map(str, args.patch))}], base width {args.base_channels}, device {device}"
          f"{' channels_last_3d' if args.channels_last else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats} forward(s) after {args.warmup} warm-up")
    header = (f"{'aniso/iso':<18}{'live params':>13}{'paper params':>14}{'GFLOPs':>9}{'time s':>9}"
              f"{'params x':>10}{'GFLOPs x':>10}{'time x':>8}")
    print(header)
    print("-" * len(header))
    for name, live, paper, gflops, seconds in rows:
        print(f"{name:<18}{live:>13,}{paper:>14,}{gflops:>9.1f}{seconds:>9.2f}"
              f"{live / base[1]:>10.3f}{gflops / base[3]:>10.3f}{seconds / base[4]:>8.3f}")
    print("ratios (x) are against conv/conv (live params, GFLOPs, time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
