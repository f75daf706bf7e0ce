"""restore_to_original picks the thick axis as nnU-Net 2.1.2's export does: from the network grid's (target)
spacing first, then the original's. It matters when an input's thick axis is not the plan's, or when two axes of
the input tie: checked against nnunetv2's resample_data_or_seg_to_shape in benchmarks/parity (max |d| 0 after,
1.8 before)."""
import numpy as np

from RCSegNeXtCore.data.io import Geometry
from RCSegNeXtCore.data.preprocess import restore_to_original
from RCSegNeXtCore.plans import RESAMPLING_DEFAULTS, V1_RESAMPLING


def _properties(original, target, crop, resampled, resampling):
    return {"original_geometry": Geometry.identity(crop, original).to_dict(), "transpose_forward": [0, 1, 2],
            "crop_bbox": [[0, n] for n in crop], "shape_after_crop": list(crop), "spacing": list(original),
            "target_spacing": list(target), "shape_after_resampling": list(resampled), "resampling": resampling}


def _logits_along_axis0(shape, num_classes=2):
    """Logits that vary along axis 0 only (class 1 rising, class 0 falling)."""
    ramp = np.linspace(-3.0, 3.0, shape[0])[:, None, None] * np.ones(shape)
    return np.stack([-ramp, ramp])[:num_classes].astype(np.float32)


def _input_planes(logits):
    """Class 1's softmax of each input plane along axis 0 (rounded): what nearest-neighbour restoring can give."""
    e = np.exp(logits[:, :, 0, 0].astype(np.float64))
    return set(np.round(e[1] / e.sum(0), 5))


def test_thick_axis_of_the_network_grid_first():
    # the plan's thick axis is 0 ([4, 1, 1]); this input is thick along axis 2: nnU-Net resamples nearest along 0
    props = _properties([1.0, 1.0, 4.0], [4.0, 1.0, 1.0], [16, 8, 2], [4, 8, 8], dict(RESAMPLING_DEFAULTS))
    logits = _logits_along_axis0([4, 8, 8])
    restored = restore_to_original(logits, props, logits=True)
    assert restored.shape == (2, 16, 8, 2)
    # nearest along axis 0: every restored plane is one of the input planes
    assert set(np.round(restored[1, :, 0, 0].astype(np.float64), 5)) <= _input_planes(logits)


def test_tied_input_axes_follow_the_plan():
    # input [4, 4, 1] (two thickest axes tie: no thick axis of its own), plan [3.5, 1, 1]: axis 0 is thick
    props = _properties([4.0, 4.0, 1.0], [3.5, 1.0, 1.0], [7, 4, 12], [8, 16, 12], dict(RESAMPLING_DEFAULTS))
    logits = _logits_along_axis0([8, 16, 12])
    restored = restore_to_original(logits, props, logits=True)
    assert set(np.round(restored[1, :, 0, 0].astype(np.float64), 5)) <= _input_planes(logits)


def test_format_1_restore_unchanged():
    # 0.1 plans (probabilities, linear along the thick axis) keep their former choice: the input's spacing first
    props = _properties([1.0, 1.0, 4.0], [4.0, 1.0, 1.0], [16, 8, 2], [4, 8, 8], dict(V1_RESAMPLING))
    values = _logits_along_axis0([4, 8, 8])
    probabilities = np.exp(values) / np.exp(values).sum(0, keepdims=True)
    restored = restore_to_original(probabilities, props)
    assert not set(np.round(restored[1, :, 0, 0].astype(np.float64), 5)) <= _input_planes(values)  # linear
