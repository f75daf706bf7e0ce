"""Qt-free library of the "Segment rectal cancer" Slicer module.

logic: RCSegNeXtLogic (MRML <-> core); convert: volume/segmentation conversions; compare: the Dice panel;
runner: the PythonSlicer subprocess and its progress; models: install/list/remove models;
dependencies: torch through the PyTorch extension on first Apply. Nothing here imports qt, and nothing imports torch
at load time.
"""
