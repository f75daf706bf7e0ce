"""CPU inference engines for RCSegNeXt, against nnU-Net's 3d_fullres network in PyTorch measured in the same run.

    python benchmarks/engines.py [--repeats 3] [--warmup 1] [--rounds 1] [--width 32]
                                 [--trained MODEL_DIR --images IMG [IMG ...]] [--json OUT.json]
                                 [--volume] [--dicom SERIES_DIR] [--skip-patch]

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
agreement is over all of them. The same images are also predicted end to end by fresh `rcsegnext predict` processes
(`--save-probabilities`), once per backend of `--trained-backends`: label Dice per class and max |probability
difference| of each engine against `--backend torch`.

With `--volume`: a whole [24, 512, 512] volume (NIfTI, the plan's spacing) through fresh `rcsegnext predict` processes
on a model folder made by `rcsegnext init-model` with the paper's plan at `--width` (ONNX exported there, not
timed), default tiles, no TTA, once per backend of `--volume-backends` (default: auto, then torch). With `--dicom DIR`:
the DICOM series folder to `.seg.nrrd` the same way. Each process is timed from its start to its exit (the output
file written) under `/usr/bin/time -v` (peak resident memory = its ru_maxrss, user / system time, minor page faults);
the wall time is also given in nnU-Net patch-forwards of the patch table of the same run.
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


# -- whole cases through fresh `rcsegnext predict` processes ---------------------------------------------------------
def rcsegnext_command() -> List[str]:
    script = Path(sys.executable).with_name("rcsegnext")
    return [str(script)] if script.exists() else [sys.executable, "-m", "RCSegNeXtCore"]


def timed_process(command: List[str], output: Path) -> Dict:
    """Runs `command` as a fresh process under /usr/bin/time -v (when there is one): wall seconds from the start to
    its exit, whether `output` was written, user / system seconds, peak resident memory, minor page faults."""
    stats = output.parent / (output.name + ".time")
    wrap = ["/usr/bin/time", "-v", "-o", str(stats)] if Path("/usr/bin/time").exists() else []
    load = os.getloadavg()[0]
    began = time.perf_counter()
    done = subprocess.run(wrap + command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - began
    if done.returncode != 0 or not output.exists():
        raise RuntimeError(f"{' '.join(command)} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    result = {"command": " ".join(command), "wall_s": wall, "load_1min_before": load}
    if wrap:
        keys = {"User time (seconds)": "user_s", "System time (seconds)": "system_s",
                "Maximum resident set size (kbytes)": "peak_mb", "Minor (reclaiming a frame) page faults": "minor_faults"}
        for line in stats.read_text().splitlines():
            name, _, value = line.strip().rpartition(": ")
            if name in keys:
                result[keys[name]] = float(value) / (1024 if keys[name] == "peak_mb" else 1)
    engine = [line for line in done.stderr.splitlines() if line.startswith("engine:")]
    result["engine_line"] = engine[0].strip() if engine else ""
    return result


def paper_model(work: Path, width: int, patch) -> Path:
    """A model folder with random weights, the paper's Dataset A plan at `width`, made by `rcsegnext init-model`
    (which exports fold_0/model.onnx; not timed)."""
    from RCSegNeXtCore.planning import make_plans_from_values
    plans_file = work / "paper_plans.json"
    make_plans_from_values(SPACING, patch, base_channels=width).save(plans_file)
    model = work / f"paper_w{width}"
    if not (model / "fold_0" / "model.onnx").exists():
        subprocess.run(rcsegnext_command() + ["init-model", "--plans", str(plans_file), "-o", str(model),
                                              "--overwrite"], check=True, capture_output=True, text=True, cwd=REPO)
    return model


def write_volume(path: Path, shape, spacing) -> Path:
    """The smooth random volume of `smooth_patch` at `shape`, written as NIfTI with `spacing` ([z, y, x])."""
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(smooth_patch(shape)[0, 0] * 100.0 + 500.0)
    image.SetSpacing([float(s) for s in reversed(spacing)])
    sitk.WriteImage(image, str(path))
    return path


def case_runs(name: str, model: Path, source: Path, work: Path, backends, suffix: str, patch_s,
              patch_cpu_s=None) -> Dict[str, Dict]:
    results = {}
    for backend in backends:
        output = work / f"{name}_{backend}{suffix}"
        output.unlink(missing_ok=True)
        print(f"  [{name}] rcsegnext predict --backend {backend} ...", file=sys.stderr, flush=True)
        command = rcsegnext_command() + ["predict", "-i", str(source), "-o", str(output), "-m", str(model),
                                         "--backend", backend]
        results[backend] = timed_process(command, output)
        results[backend]["output"] = str(output)
        if patch_s:
            results[backend]["nnunet_patch_forwards"] = results[backend]["wall_s"] / patch_s
        if patch_cpu_s and "user_s" in results[backend]:
            results[backend]["nnunet_patch_forwards_cpu"] = (results[backend]["user_s"] + results[backend]["system_s"]) \
                / patch_cpu_s
        print(f"    {format_case(backend, results[backend])}", file=sys.stderr, flush=True)
    if "torch" in results and "auto" in results and suffix != ".seg.nrrd":
        results["auto"]["agreement_with_torch"] = label_agreement(Path(results["auto"]["output"]),
                                                                  Path(results["torch"]["output"]))
    return results


def format_case(backend: str, r: Dict) -> str:
    forwards = f"{r['nnunet_patch_forwards']:.2f}" if "nnunet_patch_forwards" in r else "-"
    forwards_cpu = f"{r['nnunet_patch_forwards_cpu']:.2f}" if "nnunet_patch_forwards_cpu" in r else "-"
    return (f"| {backend} | {r['wall_s']:.1f} | {forwards} | {forwards_cpu} | {r.get('user_s', float('nan')):.1f} | "
            f"{r.get('system_s', float('nan')):.1f} | {r.get('peak_mb', float('nan')):.0f} | "
            f"{r.get('minor_faults', float('nan')) / 1e6:.2f} | {r['load_1min_before']:.1f} | {r['engine_line']} |")


def case_table(results: Dict[str, Dict]) -> str:
    lines = ["| backend | wall s (process start to file written) | nnU-Net patch-forwards (wall) | "
             "nnU-Net patch-forwards (CPU: user + sys over nnunet's CPU s / patch) | user s | sys s | "
             "peak MB (ru_maxrss) | minor faults (M) | load (1 min) before | engine (predict's stderr) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [format_case(backend, r) for backend, r in results.items()]
    agree = results.get("auto", {}).get("agreement_with_torch")
    if agree:
        lines.append(f"\nauto vs torch labels: equal on {agree['labels_equal']:.5f} of the voxels, Dice per class "
                     + " / ".join(f"{d:.4f}" for d in agree["dice_per_class"]))
    return "\n".join(lines)


def read_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def label_agreement(a: Path, b: Path, classes: int = 3) -> Dict:
    la, lb = read_array(a), read_array(b)
    return {"labels_equal": float((la == lb).mean()), "dice_per_class": [dice(la == k, lb == k) for k in range(classes)]}


def trained_predictions(model: Path, images: List[str], backends, work: Path) -> Dict:
    """Every held-out image through fresh `rcsegnext predict --save-probabilities` processes, one per backend (a
    folder of cases); per engine: label Dice per class pooled over the images (and the worst image), max |p - p_torch|."""
    import shutil
    folder = work / "held_out"
    folder.mkdir(exist_ok=True)
    for image in images:
        target = folder / Path(image).name
        if not target.exists():
            shutil.copy(image, target)
    out = {}
    for backend in backends:
        output = work / f"held_out_{backend}"
        print(f"  [trained, end to end] rcsegnext predict --backend {backend} ...", file=sys.stderr, flush=True)
        command = rcsegnext_command() + ["predict", "-i", str(folder), "-o", str(output), "-m", str(model),
                                         "--backend", backend, "--save-probabilities", "--overwrite"]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        out[backend] = {"wall_s": time.perf_counter() - began, "output": str(output)}
    reference = Path(out["torch"]["output"])
    for backend in backends:
        if backend == "torch":
            continue
        pooled, worst, max_dp, classes = None, None, 0.0, None
        for label in sorted(reference.glob("*.nii.gz")):
            ref, lab = read_array(label), read_array(Path(out[backend]["output"]) / label.name)
            classes = classes or max(3, int(ref.max()) + 1)
            counts = np.array([[np.logical_and(lab == k, ref == k).sum(), (lab == k).sum(), (ref == k).sum()]
                               for k in range(classes)], np.float64)
            pooled = counts if pooled is None else pooled + counts
            dices = [2 * i / (a + b) if a + b else float("nan") for i, a, b in counts]
            worst = dices if worst is None else [min(w, d) for w, d in zip(worst, dices)]
            stem = label.name[:-len(".nii.gz")]
            p_ref = read_array(reference / "probabilities" / f"{stem}.nrrd")
            p = read_array(Path(out[backend]["output"]) / "probabilities" / f"{stem}.nrrd")
            max_dp = max(max_dp, float(np.abs(p.astype(np.float64) - p_ref).max()))
        out[backend]["dice_per_class_pooled"] = [2 * i / (a + b) if a + b else float("nan") for i, a, b in pooled]
        out[backend]["dice_per_class_worst_image"] = worst
        out[backend]["max_abs_probability_diff"] = max_dp
    return out


def trained_prediction_table(out: Dict) -> str:
    lines = ["| backend | wall s (all images, one process) | label Dice per class vs torch, pooled (0, 1, 2) | "
             "worst image | max abs. probability diff |", "|---|---:|---|---|---:|"]
    for backend, r in out.items():
        if backend == "torch":
            lines.append(f"| torch | {r['wall_s']:.1f} | - | - | - |")
            continue
        lines.append(f"| {backend} | {r['wall_s']:.1f} | "
                     + " / ".join(f"{d:.5f}" for d in r["dice_per_class_pooled"]) + " | "
                     + " / ".join(f"{d:.5f}" for d in r["dice_per_class_worst_image"])
                     + f" | {r['max_abs_probability_diff']:.2e} |")
    return "\n".join(lines)


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
    parser.add_argument("--trained-backends", nargs="+", default=["torch", "openvino", "onnxruntime"],
                        help="backends for the end-to-end predictions of the held-out images (torch first)")
    parser.add_argument("--volume", action="store_true", help="also a whole [24, 512, 512] volume end to end")
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[24, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--volume-backends", nargs="+", default=["auto", "torch"])
    parser.add_argument("--dicom", default=None, help="a DICOM series folder to .seg.nrrd end to end")
    parser.add_argument("--dicom-backends", nargs="+", default=["auto", "torch"])
    parser.add_argument("--order", nargs="+", default=["patch", "volume-auto", "dicom", "trained", "volume-rest"],
                        help="order of the parts (volume-auto: --volume's first backend; volume-rest: the others)")
    parser.add_argument("--skip-patch", action="store_true", help="no patch table (ratios then missing)")
    parser.add_argument("--work", default=None, help="keep the work folder here (default: a temporary one)")
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
          f"{' '.join(f'{v:.1f}' for v in report['load_average_start'])}", flush=True)

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        patch_s = patch_cpu_s = None
        for part in args.order:
            if part == "patch" and not args.skip_patch:
                plans = make_plans_from_values(SPACING, args.patch, base_channels=args.width)
                model = init_model_folder(plans, work / "random", seed=0, export_onnx=False, overwrite=True)
                began = time.perf_counter()
                export = subprocess.run([sys.executable, "-m", "RCSegNeXtCore", "export-onnx", str(model)],
                                        capture_output=True, text=True, cwd=REPO)
                report["export_seconds_process"] = time.perf_counter() - began
                print(f"export (fresh process, imports included): {report['export_seconds_process']:.1f} s; "
                      f"{export.stdout.strip() or export.stderr.strip()}")
                patch = smooth_patch(args.patch)
                results = measure(args.runs, model, patch, work, args, "random")
                report["random"] = results
                report["load_average_after_patch"] = os.getloadavg()
                patch_s = results["nnunet"]["median_s"] if "nnunet" in results else None
                patch_cpu_s = results["nnunet"]["median_cpu_s"] if "nnunet" in results else None
                print(f"\n(a) One [1, 1, {', '.join(map(str, args.patch))}] patch, width {args.width}, random weights "
                      f"(repeats {args.repeats} after {args.warmup} warm-up, {args.rounds} round(s)):\n")
                print(format_table(results, "nnunet" if "nnunet" in results else None), flush=True)
            elif part.startswith("volume") and args.volume:
                backends = args.volume_backends[:1] if part == "volume-auto" else args.volume_backends[1:]
                if not backends:
                    continue
                model = paper_model(work, args.width, args.patch)
                volume = work / "volume.nii.gz"
                if not volume.exists():
                    write_volume(volume, args.volume_shape, SPACING)
                runs = case_runs("volume", model, volume, work, backends, ".nii.gz", patch_s, patch_cpu_s)
                report.setdefault("volume", {}).update(runs)
                if part == "volume-rest" and args.volume_backends[0] == "auto" and "torch" in report["volume"]:
                    report["volume"]["auto"]["agreement_with_torch"] = label_agreement(
                        Path(report["volume"]["auto"]["output"]), Path(report["volume"]["torch"]["output"]))
                print(f"\n(b) Whole {args.volume_shape} volume at spacing {SPACING}, width {args.width}, random "
                      f"weights, default tiles, no TTA, fresh `rcsegnext predict` processes (patch-forwards: wall / "
                      f"(a)'s nnunet s/patch {patch_s if patch_s is None else round(patch_s, 2)}):\n")
                print(case_table(report["volume"]), flush=True)
            elif part == "dicom" and args.dicom:
                model = paper_model(work, args.width, args.patch)
                runs = case_runs("dicom", model, Path(args.dicom), work, args.dicom_backends, ".seg.nrrd", patch_s,
                                 patch_cpu_s)
                report["dicom"] = {"series": args.dicom, "runs": runs}
                print(f"\n(d) DICOM series {args.dicom} to .seg.nrrd, width {args.width}, random weights, fresh "
                      f"`rcsegnext predict` processes:\n")
                print(case_table(runs), flush=True)
            elif part == "trained" and args.trained:
                tiles = trained_tiles(Path(args.trained), args.images)
                trained_args = argparse.Namespace(**{**vars(args), "repeats": args.trained_repeats, "warmup": 0,
                                                     "rounds": 1})
                runs = [r for r in TRAINED_RUNS if r in args.runs or r == "torch"]
                trained = measure(runs, Path(args.trained), tiles, work, trained_args, "trained")
                report["trained"] = {"model": str(args.trained), "images": args.images, "tiles": int(len(tiles)),
                                     "tile_shape": list(tiles.shape[1:]), "runs": trained}
                print(f"\n(c) Trained model {args.trained}: {len(tiles)} tiles {list(tiles.shape[1:])} of "
                      f"{len(args.images)} held-out image(s), agreement with torch over all of them:\n")
                print(format_table(trained, None))
                end_to_end = trained_predictions(Path(args.trained), args.images, args.trained_backends, work)
                report["trained"]["end_to_end"] = end_to_end
                print(f"\n(c') The same {len(args.images)} held-out image(s) end to end, fresh `rcsegnext predict "
                      f"--save-probabilities` per backend (a folder of cases), against --backend torch:\n")
                print(trained_prediction_table(end_to_end), flush=True)
            save()
    report["load_average_end"] = os.getloadavg()
    print(f"\nload average at the end {' '.join(f'{v:.1f}' for v in report['load_average_end'])}")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
