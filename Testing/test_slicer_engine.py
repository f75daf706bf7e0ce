"""The Slicer module on the CPU needs no PyTorch: the Logic segments through an inference engine with `import torch`
blocked (real MRML, slicer-core), the panel's run passes `--backend` and shows the engine, and the dependency step
installs an engine, not torch, unless the run needs torch (a GPU, or a model folder without its ONNX file)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import require_module
from slicer_headless import MODULE_DIR, REPO, module_on_path

slicer = require_module("slicer", "slicer-core")
require_module("openvino", "openvino")

from test_slicer_logic import phantom_file, tiny_model  # noqa: E402,F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")

BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@pytest.mark.slow
def test_logic_segments_a_volume_on_the_engine_with_torch_blocked(tiny_model, phantom_file, tmp_path):
    from RCSegNeXtCore.data.io import read_image
    from RCSegNeXtCore.inference.predictor import Predictor
    reference = Predictor(tiny_model, device="cpu", backend="torch").predict(
        read_image(phantom_file[0], np.float32)).labels
    out = tmp_path / "labels.npy"
    result = run_blocked(f"""
        sys.path[:0] = [{str(REPO / 'Testing')!r}, {str(MODULE_DIR)!r}]
        import json
        import numpy as np
        import slicer.util as su
        from slicer_headless import headless_scene, load_volume
        from RCSegNeXtLib.logic import RCSegNeXtLogic
        headless_scene()
        volume = load_volume({str(phantom_file[0])!r}, "phantom")
        logic = RCSegNeXtLogic()
        seg = logic.segment(volume, {str(tiny_model)!r}, device="cpu")
        labels = np.zeros(su.arrayFromVolume(volume).shape, np.uint8)
        for value, name in ((1, "Rectum"), (2, "Tumor")):
            segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(name)
            labels[su.arrayFromSegmentBinaryLabelmap(seg, segment_id, volume) > 0] = value
        np.save({str(out)!r}, labels)
        print(json.dumps({{"engine": logic.lastEngine, "torch": "torch" in sys.modules and sys.modules["torch"] is not None}}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["engine"].startswith("openvino") and "f32" in info["engine"] and info["torch"] is False
    labels = np.load(out)
    assert labels.shape == reference.shape
    for value in (1, 2):
        a, b = labels == value, reference == value
        assert a.any(), value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, value


def test_the_panels_run_asks_predict_for_the_backend_and_shows_the_engine():
    module_on_path()
    from RCSegNeXtCore.cli import build_parser
    from RCSegNeXtLib.controller import ProgressText
    from RCSegNeXtLib.runner import ProgressEvent, build_predict_command
    args = build_parser().parse_args(build_predict_command("py", "i", "o", "m", "cpu", backend="openvino")[3:])
    assert args.backend == "openvino"
    assert build_parser().parse_args(build_predict_command("py", "i", "o", "m")[3:]).backend == "auto"
    text = ProgressText(clock=lambda: 0.0, engine="openvino")
    assert text(ProgressEvent("predict", 0, 1, tiles_done=1, tiles_total=8)).startswith("Segmenting on openvino:")
    engine = "openvino 2026.4.1 (CPU, f32, 2 threads)"  # the child's own description (its preprocess line) wins
    text(ProgressEvent("preprocess", 0, 1, raw={"stage": "preprocess", "engine": engine}))
    assert text(ProgressEvent("predict", 0, 1, tiles_done=2, tiles_total=8)).startswith(f"Segmenting on {engine}:")


def test_a_cpu_run_needs_an_engine_not_torch(tiny_model, tmp_path):
    module_on_path()
    from RCSegNeXtLib import dependencies as d
    assert not d.needs_torch("cpu") and not d.needs_torch("auto") and not d.needs_torch("auto", gpu_found=False)
    assert d.needs_torch("cuda") and d.needs_torch("cuda:1") and d.needs_torch("auto", gpu_found=True)
    assert d.needs_torch("cpu", onnx_missing=True)
    assert d.installed_engine() == "openvino"        # the core's ENGINE_ORDER, first installed
    assert d.onnx_missing(str(tiny_model)) == []     # init-model exported fold 0
    assert d.ensure_requirements(device="cpu", model_dir=str(tiny_model)) == "openvino"   # nothing to install
    assert "openvino" in d.describe_device(None) and "cuda" in d.describe_device(None)
    assert "PyTorch" in d.describe_device(None, "cuda")
    assert "no PyTorch" in d.describe_backend("openvino") and "PyTorch" in d.describe_backend("torch", "cuda")


def test_a_model_without_onnx_is_named_and_needs_torch_once(tiny_model, tmp_path):
    import shutil
    module_on_path()
    from RCSegNeXtLib import dependencies as d
    model = tmp_path / "no_onnx"
    shutil.copytree(tiny_model, model)
    (model / "fold_0" / "model.onnx").unlink()
    problems = d.onnx_missing(str(model))
    assert len(problems) == 1 and problems[0].startswith("fold 0:")


def test_declining_the_engine_download_stops_with_a_reason_and_installs_nothing():
    result = run_blocked(f"""
        sys.modules['openvino'] = sys.modules['onnxruntime'] = None   # no engine installed
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from RCSegNeXtLib import dependencies as d
        asked = []
        try:
            d.ensure_engine(ask=lambda message: asked.append(message) or False)
        except d.DependencyError as exc:
            print("refused:", exc)
        print("asked:", asked[0])
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: openvino installation was declined" in result.stdout
    assert "asked: RCSegNeXt runs on the CPU with openvino" in result.stdout and "no PyTorch" in result.stdout
