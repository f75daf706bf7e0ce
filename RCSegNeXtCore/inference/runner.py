"""Running the predictor over a file, a DICOM series folder or a folder of cases, losing nothing.

A folder run shows a progress bar, skips cases whose output already exists (resumable), writes each output
atomically, keeps going after a bad case and reports every failure at the end (the CLI then exits 1).

`--progress-json` progress lines (one JSON object per line on stdout, flushed; the Slicer module parses them):
  {"stage": "preprocess", "case": ID, "done": I, "total": N, "engine": TEXT}
  {"stage": "predict", "case": ID, "done": I, "total": N, "tiles_done": T, "tiles_total": TT}
  {"stage": "export", "case": ID, "done": I, "total": N, "output": PATH, "warnings": [TEXT, ...]}
  {"stage": "error", "case": ID, "done": I, "total": N, "message": TEXT}
  {"stage": "done", "case": null, "done": N, "total": N, "written": [ID...], "skipped": [ID...],
   "failed": [{"case": ID, "message": TEXT}, ...], "skipped_series": [{"series": NAME, "reason": TEXT}, ...]}
`done` counts the cases finished (written, skipped or failed) before this line; `total` is the number of cases;
`tiles_*` count forward passes (tiles x mirrors x folds) of the current case. Skipped cases emit only an "export"
line with "skipped": true. "engine" is the backend that runs the network and its settings (Predictor.engine, e.g.
"openvino 2026.4.1 (CPU, f32, 2 threads)"); it is also printed once on stderr ("engine: ...") and recorded in every
output's provenance (RCSegNeXt_Engine). With `uncertainty` (--uncertainty) each "export" line also has
"uncertainty_output" (the review map beside the label map, export.uncertainty_path) and "uncertainty_score"
(inference/uncertainty.py), and "done" has "uncertainty_scores": {ID: score} for the cases written.

A study folder (sub-folders = DICOM series of one study, `inference/study.py`) is listed first (on stdout; on
stderr with --progress-json, so stdout stays JSON) and only the series in the model's slice plane (or the ones named
by `series`) are cases; the others are in "skipped_series" (empty for other inputs) and are no failure. When no
series is chosen, the study folder's name is a failed case (exit 1) with the reason.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, TextIO

import numpy as np

from RCSegNeXtCore.data.dataset import CHANNEL_STEM
from RCSegNeXtCore.data.dicom import DicomNote
from RCSegNeXtCore.data.io import IMAGE_EXTENSIONS, Image, read_image, split_extension
from RCSegNeXtCore.errors import ImageReadError, RCSegNeXtError, first_line
from RCSegNeXtCore.inference.config import PredictionConfig
from RCSegNeXtCore.inference.export import (OUTPUT_FORMATS, output_format, uncertainty_path, write_prediction,
                                            write_probabilities, write_uncertainty)
from RCSegNeXtCore.progress import ProgressBar


@dataclass
class CaseInput:
    case_id: str
    paths: List[Path]                   # one per channel (a file or a DICOM series folder)


@dataclass
class RunResult:
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Dict[str, str]] = field(default_factory=list)
    skipped_series: List[Dict[str, str]] = field(default_factory=list)  # study folders: not segmented, and why
    uncertainty_scores: Dict[str, float] = field(default_factory=dict)  # --uncertainty: per case written


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and \
        any(path.name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)


def _is_dicom_folder(path: Path) -> bool:
    import SimpleITK as sitk
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def find_cases(input_path: str | os.PathLike, num_channels: int = 1) -> tuple[List[CaseInput], bool]:
    """(cases, is_folder_of_cases). In a folder, each image file is a case (a trailing nnU-Net channel suffix
    `_0000` is dropped from its name) and each sub-folder a DICOM series; with several channels, files
    CASE_0000.ext ... CASE_{C-1}.ext are the channels of case CASE."""
    path = Path(input_path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_file():
        return [CaseInput(split_extension(path)[0], [path])], False
    if _is_dicom_folder(path) and not any(_is_image_file(p) for p in path.iterdir()):
        return [CaseInput(path.name, [path])], False
    groups: Dict[str, List[Path]] = {}
    for entry in sorted(path.iterdir()):
        if _is_image_file(entry):
            stem = split_extension(entry)[0]
            match = CHANNEL_STEM.match(stem)
            grouped = match and (num_channels > 1 or match.group("channel") == "0000")
            groups.setdefault(match.group("case") if grouped else stem, []).append(entry)
        elif entry.is_dir() and not entry.name.startswith("."):
            groups.setdefault(entry.name, []).append(entry)   # a DICOM series per sub-folder (checked on read)
    if not groups:
        raise ImageReadError(f"{path}: holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no DICOM series")
    return [CaseInput(case, sorted(paths)) for case, paths in groups.items()], True


def study_cases(path: Path, plane: Optional[str], series: Optional[str], log: TextIO
                ) -> Optional[tuple[List[CaseInput], List[Dict[str, str]], Optional[str]]]:
    """For a study folder: (cases, skipped series, problem) after printing its listing to `log`; None for any other
    input. `plane`: the model's slice plane; `series`: the --series name."""
    from RCSegNeXtCore.inference.study import find_study, format_listing, list_study, select_series
    folders = find_study(path)
    if folders is None:
        return None
    listed = list_study(folders)
    selected, skipped, notes, problem = select_series(listed, plane, series)
    print(format_listing(path, listed, selected, skipped), file=log)
    for note in notes:
        print(f"note: {note}", file=log)
    log.flush()
    return [CaseInput(s.name, [s.folder]) for s in selected], skipped, problem


def read_case_image(case: CaseInput) -> Image:
    """One case as an Image: (z, y, x) for one channel, (C, z, y, x) for several on the same grid."""
    images = [read_image(p, np.float32) for p in case.paths]
    if len(images) == 1:
        return images[0]
    for p, im in zip(case.paths[1:], images[1:]):
        diffs = images[0].geometry.differences(im.geometry)
        if diffs:
            raise ImageReadError(f"case {case.case_id}: channel {p.name} is on another grid than "
                                 f"{case.paths[0].name}: {'; '.join(diffs)}")
    return Image(np.stack([im.array for im in images]), images[0].geometry)


class JsonProgress:
    """Writes the progress lines documented in this module's docstring."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: bool = True):
        self.stream = stream or sys.stdout
        self.enabled = enabled

    def emit(self, stage: str, case: Optional[str], done: int, total: int, **extra) -> None:
        if self.enabled:
            self.stream.write(json.dumps({"stage": stage, "case": case, "done": done, "total": total, **extra}) + "\n")
            self.stream.flush()


def _probability_path(output: Path, folder_mode: bool) -> Path:
    stem, _ = split_extension(output)
    if folder_mode:
        return output.parent / "probabilities" / f"{stem}.nrrd"
    return output.with_name(f"{stem}_probabilities.nrrd")


def run_prediction(config: PredictionConfig, predictor=None, stream: Optional[TextIO] = None) -> RunResult:
    """Predict every case under `config.input`; writes files under `config.output` (a file for one case, else a
    folder). A study folder's series are chosen by the model's slice plane or by `config.series` (see the module
    docstring). `predictor`: one already made (default: `Predictor.from_config(config)`, with the config's backend
    and threads); `stream`: where the progress lines go (default stdout)."""
    from RCSegNeXtCore.inference.predictor import Predictor
    _check_dicom_output(config)
    predictor = predictor if predictor is not None else Predictor.from_config(config)
    engine = getattr(predictor, "engine", None)
    for note in getattr(predictor, "notes", []):
        print(note, file=sys.stderr)
    if engine:
        print(f"engine: {engine}", file=sys.stderr)
    cases, folder_mode, result, problem = _cases_to_predict(config, predictor)
    targets = _output_paths(config, cases, folder_mode)
    events = JsonProgress(stream, config.progress_json)
    total = len(cases)
    if problem:
        name = Path(config.input).name
        events.emit("error", name, 0, total, message=problem)
        result.failed.append({"case": name, "message": problem})
    with ProgressBar(total, "predict", enabled=folder_mode and not config.progress_json, unit="case") as bar:
        for case, target in zip(cases, targets):
            done = len(result.written) + len(result.skipped) + len(result.failed)
            done_before = target.exists() and (not config.uncertainty or uncertainty_path(target).exists())
            if folder_mode and done_before and not config.overwrite:
                result.skipped.append(case.case_id)
                events.emit("export", case.case_id, done, total, output=str(target), warnings=[], skipped=True)
            else:
                _predict_one(predictor, config, case, target, folder_mode, events, done, total, result)
            bar.update(1)
    review = {"uncertainty_scores": result.uncertainty_scores} if config.uncertainty else {}
    events.emit("done", None, total, total, written=result.written, skipped=result.skipped, failed=result.failed,
                skipped_series=result.skipped_series, **review)
    return result


def _check_dicom_output(config: PredictionConfig) -> None:
    """A DICOM SEG output (--format dcm, a name ending .dcm) is refused before any work for an input that is not
    DICOM (an image file, a folder holding image files) and when highdicom is missing."""
    fmt = OUTPUT_FORMATS.get(config.format) if config.format else output_format(config.output)
    if fmt is None or not fmt.dicom_source:
        return
    path = Path(config.input)
    if path.is_file() or (path.is_dir() and any(_is_image_file(p) for p in path.iterdir())):
        what = "an image file" if path.is_file() else "a folder holding image files"
        raise RCSegNeXtError(f"output format {fmt.suffix} (DICOM SEG) needs a DICOM series input (a folder of DICOM "
                             f"files, a study folder or a folder of series folders), and {path} is {what}; "
                             "write .seg.nrrd or a label map instead")
    from RCSegNeXtCore.inference.dicom_seg import require_highdicom
    require_highdicom()


def _cases_to_predict(config: PredictionConfig, predictor) -> tuple[List[CaseInput], bool, RunResult, Optional[str]]:
    """(cases, folder mode, a RunResult holding the study's skipped series, the study's problem or None)."""
    from RCSegNeXtCore.inference.predictor import model_plane
    model = getattr(predictor, "model", None)
    study = study_cases(Path(config.input), model_plane(model) if model is not None else None, config.series,
                        sys.stderr if config.progress_json else sys.stdout)
    if study is not None:
        cases, skipped_series, problem = study
        return cases, True, RunResult(skipped_series=skipped_series), problem
    if config.series is not None:
        raise RCSegNeXtError(f"--series {config.series}: {config.input} is not a study folder (sub-folders that are "
                             "DICOM series of one study); give the series folder itself as the input")
    cases, folder_mode = find_cases(config.input, predictor.plans.architecture.in_channels)
    return cases, folder_mode, RunResult(), None


def _output_paths(config: PredictionConfig, cases: List[CaseInput], folder_mode: bool) -> List[Path]:
    """One output path per case: in the output folder (folder mode, an existing folder, a name ending in '/'), or
    the output file itself; its format checked against --format and OUTPUT_FORMATS."""
    fmt = config.format
    as_folder = str(config.output).endswith(("/", os.sep))
    output = Path(config.output)
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise RCSegNeXtError(f"--format {fmt}: use one of {', '.join(OUTPUT_FORMATS)}")
    if folder_mode and output.exists() and not output.is_dir():
        raise RCSegNeXtError(f"{output} is a file; for a folder of cases the output must be a folder")
    if folder_mode or output.is_dir() or as_folder:
        return [output / f"{c.case_id}.{fmt or 'nii.gz'}" for c in cases]
    ext = split_extension(output)[1].lstrip(".").lower()
    if fmt is not None and ext != fmt:
        raise RCSegNeXtError(f"output {output} does not end with .{fmt}; name it {{name}}.{fmt} or drop --format")
    if output_format(output) is None:
        raise RCSegNeXtError(f"output {output}: unknown format .{ext}; use a name ending "
                             f".{', .'.join(OUTPUT_FORMATS)}, or an existing folder")
    return [output]


def _predict_one(predictor, config: PredictionConfig, case: CaseInput, target: Path, folder_mode: bool,
                 events: JsonProgress, done: int, total: int, result: RunResult) -> None:
    """Read, predict and write one case; its failure is recorded (a folder goes on) or raised (one case)."""
    try:
        events.emit("preprocess", case.case_id, done, total, engine=getattr(predictor, "engine", None))
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", DicomNote)
            image = read_case_image(case)
        for note in notes:
            print(f"note: {note.message}", file=sys.stderr)
        on_progress = _tile_progress(events, case.case_id, done, total,
                                     bar=not folder_mode and not config.progress_json)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below and in the progress line instead
            prediction = predictor.predict(image, on_progress, source=f"case {case.case_id}",
                                           keep_probabilities=config.save_probabilities,
                                           uncertainty=config.uncertainty)
        for message in prediction.warnings:
            print(f"warning: {message}", file=sys.stderr)
        metadata = {**predictor.metadata(), **prediction.uncertainty_metadata()}   # score keys only with a map
        write_prediction(prediction.labels, prediction.geometry, target, predictor.labels, metadata,
                         source=case.paths[0])   # the DICOM SEG references this series
        if config.save_probabilities:
            write_probabilities(prediction.probabilities, prediction.geometry,
                                _probability_path(target, folder_mode), predictor.labels, metadata)
        review = {}
        if config.uncertainty:
            review_path = write_uncertainty(prediction.uncertainty, prediction.geometry, uncertainty_path(target),
                                            metadata)
            result.uncertainty_scores[case.case_id] = prediction.uncertainty_score
            review = {"uncertainty_output": str(review_path), "uncertainty_score": prediction.uncertainty_score}
        result.written.append(case.case_id)
        events.emit("export", case.case_id, done, total, output=str(target), warnings=prediction.warnings,
                    **review)
    except (RCSegNeXtError, ValueError, RuntimeError, OSError, MemoryError) as exc:
        message = first_line(exc)
        events.emit("error", case.case_id, done, total, message=message)
        if not folder_mode:
            raise
        result.failed.append({"case": case.case_id, "message": message})


def _tile_progress(events: JsonProgress, case_id: str, done: int, total: int, bar: bool):
    """The predictor's progress callback: "predict" lines, and for a single case on a terminal a bar over the
    forward passes. The bar's clock starts when preprocessing ends (the first pass starts then), so its rate and
    ETA are right from the first pass on, although it learns the number of passes only when that pass is done."""
    passes = {}

    def on_progress(stage, step, steps):
        if stage == "preprocess" and step == steps:
            passes["start"] = time.perf_counter()
        if stage != "predict":
            return
        events.emit("predict", case_id, done, total, tiles_done=step, tiles_total=steps)
        if bar:
            if "bar" not in passes:
                passes["bar"] = ProgressBar(steps, f"predict {case_id}", unit="pass", start=passes.get("start"))
            bar_ = passes["bar"]
            bar_.update(step - bar_.count)
            if step == steps:
                bar_.close()
    return on_progress
