"""data/resample.py in numpy equals the torch implementation it replaced (RCSegNeXt before the engine issue), on
outputs of that implementation saved in Testing/data/resample_reference.npz (Testing/data/make_resample_reference.py):
images (cubic convolution and nnU-Net's B-spline, thick axis or isotropic, orders 0/1/3), label maps (both rules),
probabilities and float64 logits, and 1D lines of every size pair 1..13 (nearest's index rounding, the edges)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from RCSegNeXtCore.data.resample import (resample_array, resample_image, resample_label, resample_probabilities,
                                         thick_axis)

REFERENCE = np.load(Path(__file__).parent / "data" / "resample_reference.npz")
CASES = [  # = make_resample_reference.CASES
    ("aniso_down", (3, 11, 13), (4.0, 0.8, 0.8), (4.0, 1.2, 1.1)),
    ("aniso_up", (7, 15, 21), (4.0, 1.0, 1.0), (2.4, 0.6, 0.5)),
    ("iso", (9, 5, 11), (1.0, 1.0, 1.0), (0.7, 1.3, 0.75)),
    ("thick_x", (9, 14, 6), (1.0, 1.0, 5.0), (1.3, 0.8, 3.4)),
]


def top_two_gap(label, new, spacing, target, order, thick, rule):
    """Per voxel: the largest minus the second largest interpolated class mask (0 at a tie)."""
    dtype = np.float64 if rule == "nnunet" else np.float32
    axis = thick_axis(spacing, target, 3.0)
    masks = np.stack([resample_array((label == v).astype(dtype)[None], new, axis, order, thick)[0]
                      for v in np.unique(label)])
    masks.sort(axis=0)
    return masks[-1] - masks[-2]


@pytest.mark.parametrize("name, new, spacing, target", CASES)
def test_images_labels_and_probabilities_equal_the_torch_implementation(name, new, spacing, target):
    image, label = REFERENCE[f"{name}/image"], REFERENCE[f"{name}/label"]
    for interp in ("bicubic", "bspline"):
        for order, thick in ((3, 0), (1, 1), (0, 0), (3, 1)):
            got = resample_image(image, new, spacing, target, order, thick, 3.0, interp)
            expected = REFERENCE[f"{name}/image_{interp}_{order}{thick}"]
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=f"{interp} {order}{thick}")
    for rule in ("nnunet", "keep_classes"):
        for order, thick in ((1, 0), (1, 1), (0, 0)):
            got = resample_label(label, new, spacing, target, order, thick, 3.0, rule)
            differ = got != REFERENCE[f"{name}/label_{rule}_{order}{thick}"]
            # only where two classes tie (their masks interpolate to the same weight: which wins is rounding)
            assert (top_two_gap(label, new, spacing, target, order, thick, rule)[differ] < 1e-6).all(), (rule, order)
            assert differ.mean() < 0.02
    probs = REFERENCE[f"{name}/probs"]
    got = resample_probabilities(probs, new, spacing, target)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, REFERENCE[f"{name}/probs_out"], atol=1e-6, rtol=0)
    got = resample_probabilities(probs.astype(np.float64), new, spacing, target, 1, 0)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, REFERENCE[f"{name}/logits64_out"], atol=1e-12, rtol=0)


def test_lines_of_every_size_pair_equal_the_torch_implementation():
    for m in range(1, 14):
        for n in range(1, 14):
            line = REFERENCE[f"line/{m}_{n}_in"][None, None, None]
            for order in (0, 1, 3):
                got = resample_array(line, (1, 1, n), None, order, order)[0, 0, 0]
                np.testing.assert_allclose(got, REFERENCE[f"line/{m}_{n}_{order}"], atol=1e-5, rtol=0,
                                           err_msg=f"{m} -> {n}, order {order}")
