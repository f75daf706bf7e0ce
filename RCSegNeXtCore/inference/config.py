"""The prediction configuration: every option of `rcsegnext predict` as one typed object, `PredictionConfig`.

`commands/predict.py` builds it from the command line (`config_from_args`), the Slicer Logic and Python callers
build it directly. Its model part (`PREDICTOR_OPTIONS`: the keyword arguments of `Predictor`, same names, same
defaults) makes a Predictor (`Predictor.from_config`); `inference.runner.run_prediction(config)` runs the whole.
Defaults are the command line's. A new Predictor option is a keyword of `Predictor.__init__` plus a field here with
the same name and default (Testing/test_predictor_config.py checks they agree).

Standard library only (the CLI and the Slicer module import it before torch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Union

# the fields that are keyword arguments of Predictor (everything else concerns the run over files)
PREDICTOR_OPTIONS = ("folds", "checkpoint", "device", "tta", "tile_overlap", "batch_tiles",
                     "whole_volume_max_voxels", "resize_to", "amp", "backend", "threads")


@dataclass
class PredictionConfig:
    model: Optional[str] = None                 # model folder (plans.json, dataset.json, fold_K/)
    input: Optional[str] = None                 # file, DICOM series folder, folder of cases or study folder
    output: Optional[str] = None                # file (one case) or folder
    # -- the model (Predictor's keyword arguments) ------------------------------------------------------------
    folds: Optional[List[Union[int, str]]] = None   # fold numbers and/or "all"; None: every numbered fold present
    checkpoint: str = "final"                   # final | best
    device: str = "auto"                        # auto | cpu | cuda | cuda:N
    tta: bool = False                           # mirroring test-time augmentation over the plan's axes
    tile_overlap: Optional[float] = None        # None: the tile rule (sliding_window.default_min_overlaps)
    batch_tiles: Optional[int] = None           # tiles per forward pass (None: 1 CPU, 4 CUDA)
    whole_volume_max_voxels: Optional[int] = 0  # 0: tiles at the plan's patch size; None: one pass when it fits
    resize_to: Optional[List[int]] = None       # resample each input to this (z, y, x) grid first
    amp: bool = True                            # mixed precision on CUDA
    backend: str = "auto"                       # auto | torch | openvino | onnxruntime (backends.select_backend)
    threads: Optional[int] = None               # CPU threads for the network (None: every core it may use)
    # -- the run (run_prediction) ------------------------------------------------------------------------------
    format: Optional[str] = None                # an OUTPUT_FORMATS key; None: from the output name
    save_probabilities: bool = False
    uncertainty: bool = False                   # also write CASE_uncertainty (the review map) and score each case
    progress_json: bool = False                 # one JSON progress object per line on stdout (runner docstring)
    overwrite: bool = False                     # redo cases whose output already exists
    series: Optional[str] = None                # in a study folder, segment this series

    def predictor_options(self) -> Dict[str, Any]:
        """The keyword arguments of `Predictor(self.model, ...)`."""
        return {name: getattr(self, name) for name in PREDICTOR_OPTIONS}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PredictionConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
