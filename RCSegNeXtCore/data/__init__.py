"""Data layer: image I/O with exact geometry (io), nnU-Net v2 raw datasets (dataset), what can be wrong with a case
(problems) and the whole-dataset check (validation)."""
from RCSegNeXtCore.data.dataset import (DEFAULT_LABELS, Case, Dataset, load_dataset, read_case,
                                        write_dataset_json)
from RCSegNeXtCore.data.io import Geometry, Image, read_geometry, read_image, write_image
from RCSegNeXtCore.data.problems import Problem
from RCSegNeXtCore.data.validation import check_dataset

__all__ = ["DEFAULT_LABELS", "Case", "Dataset", "Geometry", "Image", "Problem", "check_dataset", "load_dataset",
           "read_case", "read_geometry", "read_image", "write_dataset_json", "write_image"]
