"""CPU inference engines for RCSegNeXt, against nnU-Net's 3d_fullres network in PyTorch measured in the same run.

    python benchmarks/engines.py [--repeats 3] [--warmup 1] [--rounds 1] [--width 32]
                                 [--trained MODEL_DIR --images IMG [IMG ...]] [--json OUT.json]

One [1, 1, 16, 320, 320] patch of a smooth random volume, the paper's Dataset A plan (spacing [4.0, 0.875, 0.875]),
RCSegNeXt at `--width` (32: the paper's) with random weights (seed 0), exported by `rcsegnext export-onnx`. Every run
is its own fresh process (peak memory = its VmHWM, the peak resident memory: imports, model, compilation and
the passes), one after the
other, each using every core this process may use:

  nnunet            nnU-Net v2's 3d_fullres network for Dataset A: PlainConvUNet(1 -> 3 classes, features
                    [32, 64, 128, 256, 320, 320, 320], kernels [1,3,3] x 2 then [3,3,3] x 5, strides [1,1,1],
                    [1,2,2], [1,2,2], [2,2,2], [2,2,2], [1,2,2], [1,2,2], 2 convs per stage, InstanceNorm3d(affine),
                    LeakyReLU), built below from that published shape; PyTorch eager, f32: the baseline
  torch             RCSegNeXt, PyTorch eager, f32 (today's path)
  torch-cl3d        RCSegNeXt, PyTorch with channels_last_3d
  onnxruntime       ONNX Runtime CPU, the backend's settings (memory arena off)
  onnxruntime-arena ONNX Runtime CPU with its default memory arena
  openvino          OpenVINO CPU, the backend's settings (precision hint f32)
  openvino-default  OpenVINO CPU at its default precision (bf16 on CPUs with AVX512-BF16 / AMX, f16 on ARM)

Printed per run: seconds per patch (median of `--repeats` after `--warmup`, over `--rounds` rounds), the ratio to
`nnunet`'s, the time to load (and compile), peak memory, and agreement with `torch` (max |logit difference|,
voxels with the same label, Dice of each class's voxels between the two label maps).

With `--trained MODEL_DIR --images ...` (a trained model folder, e.g. the demo's `demo_output/run`, and its held-out
images): every tile the predictor places on each preprocessed image is run through torch and each engine; the
agreement is over all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNS = ("nnunet", "torch", "torch-cl3d", "onnxruntime", "onnxruntime-arena", "openvino", "openvino-default")
TRAINED_RUNS = ("torch", "onnxruntime", "openvino", "openvino-default")
SPACING = [4.0, 0.875, 0.875]
PATCH = [16, 320, 320]


# -- nnU-Net's 3d_fullres network for Dataset A, from its published shape ------------------------------------------
NNUNET_FEATURES = [32, 64, 128, 256, 320, 320, 320]
NNUNET_KERNELS = [[1, 3, 3], [1, 3, 3]] + [[3, 3, 3]] * 5
NNUNET_STRIDES = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]


def plain_conv_unet(in_channels: int = 1, num_classes: int = 3):
    """A plain U-Net as nnU-Net v2 builds it: per stage 2 x (conv -> InstanceNorm3d(affine) -> LeakyReLU(0.01)),
    the first conv of a stage strided (no pooling); decoder: transposed conv (kernel = stride) -> concat with the
    skip -> 2 x the same conv block; 1x1x1 head on the finest decoder stage (no deep supervision at inference)."""
    import torch
    from torch import nn

    def block(cin, cout, kernel, stride):
        return [nn.Conv3d(cin, cout, kernel, stride, [k // 2 for k in kernel], bias=True),
                nn.InstanceNorm3d(cout, eps=1e-5, affine=True), nn.LeakyReLU(0.01, inplace=True)]

    def stage(cin, cout, kernel, stride):
        return nn.Sequential(*block(cin, cout, kernel, stride), *block(cout, cout, kernel, [1, 1, 1]))

    class PlainConvUNet(nn.Module):
        def __init__(self):
            super().__init__()
            feats = NNUNET_FEATURES
            self.encoder = nn.ModuleList(
                stage(in_channels if s == 0 else feats[s - 1], feats[s], NNUNET_KERNELS[s], NNUNET_STRIDES[s])
                for s in range(len(feats)))
            self.up = nn.ModuleList(nn.ConvTranspose3d(feats[s], feats[s - 1], NNUNET_STRIDES[s], NNUNET_STRIDES[s],
                                                       bias=True) for s in range(len(feats) - 1, 0, -1))
            self.decoder = nn.ModuleList(stage(2 * feats[s - 1], feats[s - 1], NNUNET_KERNELS[s - 1], [1, 1, 1])
                                         for s in range(len(feats) - 1, 0, -1))
            self.head = nn.Conv3d(feats[0], num_classes, 1, bias=True)

        def forward(self, x):
            skips = []
            for s in self.encoder:
                x = s(x)
                skips.append(x)
            x = skips.pop()
            for up, dec in zip(self.up, self.decoder):
                x = dec(torch.cat([up(x), skips.pop()], dim=1))
            return self.head(x)

    return PlainConvUNet()


# -- one run in a fresh process ------------------------------------------------------------------------------------
def make_runner(name: str, model_dir: Path, threads: int):
    """A function tiles [N, C, z, y, x] -> logits, one tile at a time, for run `name`."""
    from RCSegNeXtCore.inference.backends import make_backend
    from RCSegNeXtCore.inference.onnx_export import onnx_path
    if name in ("nnunet", "torch", "torch-cl3d"):
        import torch
        torch.set_num_threads(threads)
        if name == "nnunet":
            torch.manual_seed(0)
            network = plain_conv_unet().eval()
        else:
            from RCSegNeXtCore.inference.model_folder import ModelFolder
            network = ModelFolder(model_dir).load_networks([0])[0]
        layout = torch.channels_last_3d if name == "torch-cl3d" else torch.contiguous_format
        network = network.to(memory_format=layout)

        def run_torch(tile):
            with torch.inference_mode():
                x = torch.from_numpy(tile).contiguous(memory_format=layout)
                return network(x).float().contiguous().numpy()
        return run_torch
    onnx = onnx_path(model_dir, 0)
    if name.startswith("onnxruntime"):
        backend = make_backend("onnxruntime", onnx_file=onnx, threads=threads,
                               onnxruntime_memory_arena=name.endswith("arena"))
    else:
        backend = make_backend("openvino", onnx_file=onnx, threads=threads,
                               openvino_precision="default" if name.endswith("default") else "f32")
    print(json.dumps({"settings": backend.settings}), flush=True)
    return backend.logits


def worker(args) -> None:
    tiles = np.load(args.input)
    started = time.perf_counter()
    run = make_runner(args.worker, Path(args.model_dir), args.threads)
    load_seconds = time.perf_counter() - started
    times, cpu, outputs = [], [], []
    for i in range(args.warmup + args.repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        outputs = [run(tiles[t:t + 1]) for t in range(len(tiles))]
        if i >= args.warmup:
            times.append((time.perf_counter() - began) / len(tiles))
            cpu.append((time.process_time() - began_cpu) / len(tiles))
    if args.output:
        np.save(args.output, np.concatenate(outputs))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": times, "cpu_seconds": cpu, "load_seconds": load_seconds, "peak_mb": peak_mb(),
                      "user_s": usage.ru_utime, "system_s": usage.ru_stime}), flush=True)


def peak_mb() -> float:
    """This process's peak resident memory: VmHWM of /proc/self/status where there is one. (Linux keeps ru_maxrss
    across exec, so a child started by a big parent would report at least the parent's size.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(name: str, model_dir: Path, tiles_file: Path, out_file: Path, args) -> Dict:
    command = [sys.executable, __file__, "--worker", name, "--model-dir", str(model_dir), "--input", str(tiles_file),
               "--output", str(out_file), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    result = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


# -- agreement -----------------------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def agreement(logits: np.ndarray, reference: np.ndarray) -> Dict:
    """max |logit difference|, fraction of voxels with the same argmax label, Dice of each class's voxels."""
    labels, ref = logits.argmax(1), reference.argmax(1)
    return {"max_abs_logit_diff": float(np.abs(logits - reference).max()),
            "labels_equal": float((labels == ref).mean()),
            "dice_per_class": [dice(labels == k, ref == k) for k in range(reference.shape[1])]}


# -- inputs --------------------------------------------------------------------------------------------------------
def smooth_patch(shape, seed: int = 0) -> np.ndarray:
    """A z-scored volume with structure at several scales (so the network's output varies), [1, 1, *shape]."""
    from scipy.ndimage import zoom
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.float64)
    for cells in (2, 8, 32):
        coarse = rng.standard_normal([max(2, s * cells // 320 + 2) for s in shape])
        volume += zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1)[tuple(slice(0, s) for s in shape)]
    volume += 0.1 * rng.standard_normal(shape)
    volume = (volume - volume.mean()) / volume.std()
    return volume[None, None].astype(np.float32)


def trained_tiles(model_dir: Path, images: List[str]) -> np.ndarray:
    """Every tile the predictor places on each image, preprocessed as the model's plan says: [N, C, *patch]."""
    from RCSegNeXtCore.data.io import Image, read_image
    from RCSegNeXtCore.data.preprocess import preprocess_case
    from RCSegNeXtCore.inference.sliding_window import tile_grid
    from RCSegNeXtCore.plans import Plans
    from RCSegNeXtCore.strides import total_stride
    plans = Plans.load(model_dir / "plans.json")
    tiles = []
    for path in images:
        image = read_image(path)
        array = np.asarray(image.array, np.float32)
        data = preprocess_case(Image(array[None] if array.ndim == 3 else array, image.geometry), plans).data
        extra = [max(p - s, 0) for s, p in zip(data.shape[1:], plans.patch_size)]  # zero padding, centred
        data = np.pad(data, [(0, 0)] + [(e // 2, e - e // 2) for e in extra])
        for t in tile_grid(data.shape[1:], plans.patch_size, None, total_stride(plans.strides)):
            tiles.append(data[(slice(None), *t)])
    return np.stack(tiles).astype(np.float32)


# -- the run -------------------------------------------------------------------------------------------------------
def measure(runs, model_dir: Path, tiles: np.ndarray, work: Path, args, tag: str) -> Dict[str, Dict]:
    tiles_file = work / f"{tag}_tiles.npy"
    np.save(tiles_file, tiles)
    results: Dict[str, Dict] = {name: {"seconds": [], "peaks_mb": []} for name in runs}
    for round_ in range(args.rounds):
        for name in runs:
            print(f"  [{tag}] round {round_ + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            out = run_worker(name, model_dir, tiles_file, work / f"{tag}_{name}.npy", args)
            seconds, peaks = results[name]["seconds"] + out["seconds"], results[name]["peaks_mb"] + [out["peak_mb"]]
            cpu = results[name].get("cpu_seconds", []) + out["cpu_seconds"]
            results[name].update(out, seconds=seconds, cpu_seconds=cpu, peaks_mb=peaks, peak_mb=max(peaks))
    reference = np.load(work / f"{tag}_torch.npy")
    for name in runs:
        results[name]["median_s"] = float(np.median(results[name]["seconds"]))
        results[name]["median_cpu_s"] = float(np.median(results[name]["cpu_seconds"]))
        if name != "nnunet":
            results[name]["agreement"] = agreement(np.load(work / f"{tag}_{name}.npy"), reference)
    return results


def format_table(results: Dict[str, Dict], baseline: str | None) -> str:
    base = results[baseline]["median_s"] if baseline else None
    lines = ["| run | s / patch | x nnU-Net's network | CPU s / patch | load s | peak MB | max abs. logit diff | "
             "labels equal | Dice per class (0, 1, 2) | settings |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, r in results.items():
        a = r.get("agreement")
        agree = ("-", "-", "-") if a is None or name == "torch" else (
            f"{a['max_abs_logit_diff']:.2e}", f"{a['labels_equal']:.5f}",
            " / ".join(f"{d:.4f}" for d in a["dice_per_class"]))
        ratio = f"{r['median_s'] / base:.2f}" if base else "-"
        settings = r.get("settings", {})
        setting = ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("engine", "device")) or "-"
        lines.append(f"| {name} | {r['median_s']:.2f} | {ratio} | {r['median_cpu_s']:.1f} | {r['load_seconds']:.1f} | "
                     f"{r['peak_mb']:.0f} | "
                     f"{agree[0]} | {agree[1]} | {agree[2]} | {setting} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in ("torch", "onnxruntime", "openvino", "onnx", "numpy"):
        try:
            from importlib.metadata import version
            versions.append(f"{package} {version(package)}")
        except Exception:
            versions.append(f"{package} -")
    from RCSegNeXtCore.inference.backends import available_cores
    return (f"{cpu}, {available_cores()} cores for this process, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; " + ", ".join(versions))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=32, help="RCSegNeXt base width (default 32, the paper's)")
    parser.add_argument("--patch", type=int, nargs=3, default=PATCH, metavar=("Z", "Y", "X"),
                        help="patch size (default the paper's [16, 320, 320])")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="run every engine this many times, interleaved")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--threads", type=int, default=None, help="default: every core this process may use")
    parser.add_argument("--trained", default=None, help="a trained model folder (agreement on held-out images)")
    parser.add_argument("--images", nargs="*", default=[], help="held-out images for --trained")
    parser.add_argument("--trained-repeats", type=int, default=1)
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from RCSegNeXtCore.inference.backends import available_cores
    args.threads = args.threads or available_cores()
    if args.worker:
        worker(args)
        return 0

    from RCSegNeXtCore.inference.model_folder import init_model_folder
    from RCSegNeXtCore.planning import make_plans_from_values
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "threads": args.threads,
              "load_average_start": os.getloadavg()}
    print(f"machine: {report['machine']}\nthreads per run: {args.threads}; load average at the start "
          f"{' '.join(f'{v:.1f}' for v in report['load_average_start'])}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plans = make_plans_from_values(SPACING, args.patch, base_channels=args.width)
        model = init_model_folder(plans, work / "random", seed=0, export_onnx=False)
        began = time.perf_counter()
        export = subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "export-onnx", str(model)],
                                capture_output=True, text=True, cwd=REPO)
        report["export_seconds_process"] = time.perf_counter() - began
        print(f"export (fresh process, imports included): {report['export_seconds_process']:.1f} s; "
              f"{export.stdout.strip() or export.stderr.strip()}")
        patch = smooth_patch(args.patch)
        results = measure(args.runs, model, patch, work, args, "random")
        report["random"] = results
        print(f"\nOne [1, 1, {', '.join(map(str, args.patch))}] patch, width {args.width}, random weights "
              f"(repeats {args.repeats} after {args.warmup} warm-up, {args.rounds} round(s)):\n")
        print(format_table(results, "nnunet" if "nnunet" in results else None))
        if args.trained:
            tiles = trained_tiles(Path(args.trained), args.images)
            trained_args = argparse.Namespace(**{**vars(args), "repeats": args.trained_repeats, "warmup": 0,
                                                 "rounds": 1})
            runs = [r for r in TRAINED_RUNS if r in args.runs or r == "torch"]
            trained = measure(runs, Path(args.trained), tiles, work, trained_args, "trained")
            report["trained"] = {"model": str(args.trained), "images": args.images, "tiles": int(len(tiles)),
                                 "tile_shape": list(tiles.shape[1:]), "runs": trained}
            print(f"\nTrained model {args.trained}: {len(tiles)} tiles {list(tiles.shape[1:])} of "
                  f"{len(args.images)} held-out image(s), agreement with torch over all of them:\n")
            print(format_table(trained, None))
    report["load_average_end"] = os.getloadavg()
    print(f"\nload average at the end {' '.join(f'{v:.1f}' for v in report['load_average_end'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
