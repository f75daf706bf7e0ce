"""Inference: model folders, the sliding-window predictor, exports Slicer opens, and batch runs.

    from RCSegNeXtCore.inference import Predictor
    prediction = Predictor("MODEL_DIR").predict(read_image("case.nii.gz"))

Importing this package (or `inference.segments`) does not import torch or SimpleITK: the Slicer module reads the
segment style before torch is installed. The other names load on first use.
"""
from importlib import import_module

from RCSegNeXtCore.inference.segments import SEGMENT_STYLE, SegmentStyle, segment_styles, style_for

_LAZY = {"provenance": "export", "write_labelmap": "export", "write_prediction": "export",
         "write_probabilities": "export", "write_segmentation": "export", "ModelFolder": "model_folder",
         "init_model_folder": "model_folder", "InputWarning": "predictor", "Prediction": "predictor",
         "Predictor": "predictor", "predict_sliding_window": "sliding_window"}

__all__ = ["SEGMENT_STYLE", "SegmentStyle", "segment_styles", "style_for", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"RCSegNeXtCore.inference.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'RCSegNeXtCore.inference' has no attribute {name!r}")
