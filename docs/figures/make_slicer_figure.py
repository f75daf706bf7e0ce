"""Make docs/figures/slicer_segments.png: the "Rectum" and "Tumor" segments as the Slicer module creates them.

Runs headless through real MRML (slicer-core): a synthetic sagittal phantom volume is loaded with Slicer's reader
and turned into a segmentation node by RCSegNeXtLogic, then the segments are read back from the node and drawn as
contours on three sagittal slices.

    .venv/bin/python docs/figures/make_slicer_figure.py                       # reference labels -> segments
    .venv/bin/python docs/figures/make_slicer_figure.py --model demo_output/run  # a trained model's prediction

Without --model the phantom's reference label map goes through `segmentationFromLabels` (the code that turns a
prediction into segments): the figure shows the output, not model accuracy. With --model (e.g. the model `make demo`
trains on small phantoms) `RCSegNeXtLogic.segment` predicts them (solid) and the reference is drawn dashed.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing"))
LABELS = {"background": 0, "rectum": 1, "tumour": 2}


def segment_masks(node, volume) -> dict:
    import slicer.util as su
    found = {}
    for i in range(node.GetSegmentation().GetNumberOfSegments()):
        segment = node.GetSegmentation().GetNthSegment(i)
        mask = su.arrayFromSegmentBinaryLabelmap(node, node.GetSegmentation().GetNthSegmentID(i), volume) > 0
        found[segment.GetName()] = (mask, segment.GetColor())
    return found


def main(out: Path, model: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from slicer_headless import headless_scene, load_volume
    headless_scene()  # also puts RCSegNeXt/ on sys.path
    import slicer.util as su
    from RCSegNeXtCore.data.io import write_image
    from RCSegNeXtCore.phantom import make_phantom_case
    from RCSegNeXtLib.logic import RCSegNeXtLogic

    logic = RCSegNeXtLogic()
    image, label = make_phantom_case(np.random.default_rng(7 if not model else 12345),
                                     size="small" if model else "full", tumour=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom_t2.nrrd"
        write_image(image.array.astype(np.int16), image.geometry, path)
        volume = load_volume(path, "Phantom T2 sagittal")
    reference = segment_masks(logic.segmentationFromLabels(volume, label, LABELS), volume)
    shown = segment_masks(logic.segment(volume, model, device="cpu"), volume) if model else reference
    t2 = su.arrayFromVolume(volume).astype(np.float32)
    both = reference["Tumor"][0].any(axis=(1, 2)) & reference["Rectum"][0].any(axis=(1, 2))
    slices = np.flatnonzero(both)
    picks = [int(slices[len(slices) * q // 4]) for q in (1, 2, 3)]
    spacing = volume.GetSpacing()
    lo, hi = np.percentile(t2, [1, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9))
    for ax, k in zip(axes, picks):
        ax.imshow(t2[k], cmap="gray", vmin=lo, vmax=hi, aspect=spacing[1] / spacing[0], interpolation="bilinear")
        for name, (mask, color) in shown.items():
            if mask[k].any():
                ax.contour(mask[k].astype(float), levels=[0.5], colors=[color], linewidths=1.4)
            ref_mask = reference[name][0] if name in reference else None
            if model and ref_mask is not None and ref_mask[k].any():
                ax.contour(ref_mask[k].astype(float), levels=[0.5], colors=[color], linewidths=0.9,
                           linestyles="dashed")
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, lw=2, label=n) for n, (_, c) in shown.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=9)
    what = (f"predicted by {Path(model).name} (solid), reference dashed" if model else "reference labels")
    fig.suptitle(f"Segments 'Rectum' (red) and 'Tumor' (green) as the module writes them "
                 f"(synthetic sagittal phantom, {what})", fontsize=9.5)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder to predict with (default: draw reference labels)")
    parser.add_argument("-o", "--out", default=str(REPO / "docs" / "figures" / "slicer_segments.png"))
    args = parser.parse_args()
    print(main(Path(args.out), args.model))
