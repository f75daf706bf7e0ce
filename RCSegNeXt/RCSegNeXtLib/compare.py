"""The Dice panel's logic: match the segments of two segmentation nodes and score them with the core's metrics.

Both segmentations are rasterised on one reference volume's grid (nearest neighbour, Slicer's segment export) -- they
must belong to that volume (`ownership`) unless the caller asks to resample -- then
`RCSegNeXtCore.evaluation.metrics.class_metrics` (the code behind `rcsegnext evaluate`) gives Dice, HD95 and
volumes. Conventions come from there: both empty -> Dice "n/a"; one empty -> Dice 0 and HD95 inf.
Segments are matched by name (case-insensitive), else by their terminology type code (e.g. SCT 86049000).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from RCSegNeXtCore.errors import RCSegNeXtError

from RCSegNeXtLib import convert, ownership


@dataclass
class SegmentRow:
    """One line of the Dice table (test vs reference)."""

    name: str
    dice: float
    hd95: float
    reference_ml: float
    test_ml: float
    difference_ml: float  # test - reference
    message: str = ""  # e.g. "missing in test segmentation", "empty in both"


@dataclass
class SegmentationComparison:
    rows: List[SegmentRow]
    reference_volume: str
    geometry_note: str = ""  # set when the two segmentations are on different grids
    notes: List[str] = field(default_factory=list)

    def as_text_rows(self) -> List[List[str]]:
        """Table cells for display: header + one row per segment ("n/a" for undefined values)."""
        header = ["Segment", "Dice", "HD95 (mm)", "Reference (ml)", "Test (ml)", "Test - reference (ml)", "Note"]
        return [header] + [[r.name, fmt(r.dice, 3), fmt(r.hd95, 1), fmt(r.reference_ml, 2), fmt(r.test_ml, 2),
                            fmt(r.difference_ml, 2, signed=True), r.message] for r in self.rows]


def fmt(value: float, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


GENERIC_CODES = {"", "85756007"}  # no terminology, or Slicer's default "Tissue" that every new segment gets


def match_segments(reference, test) -> List[Tuple[str, Optional[str], Optional[str]]]:
    """[(display name, reference segment ID or None, test segment ID or None)], reference order first.

    By name (case-insensitive) first; else by terminology type code when that code is specific (not Slicer's
    default "Tissue") and names exactly one segment on each side."""
    def listing(node):
        seg = node.GetSegmentation()
        segments = [(seg.GetNthSegmentID(i), seg.GetNthSegment(i)) for i in range(seg.GetNumberOfSegments())]
        return [(sid, s.GetName(), convert.segment_type_code(s)) for sid, s in segments]
    ref_segments, test_segments = listing(reference), listing(test)
    ref_codes = [code for _, _, code in ref_segments]
    test_codes = [code for _, _, code in test_segments]
    used, pairs = set(), []
    for ref_id, name, code in ref_segments:
        match = next((tid for tid, tname, _ in test_segments if tid not in used and tname.lower() == name.lower()),
                     None)
        if match is None and code not in GENERIC_CODES and ref_codes.count(code) == 1 and test_codes.count(code) == 1:
            match = next((tid for tid, _, tcode in test_segments if tid not in used and tcode == code), None)
        if match is not None:
            used.add(match)
        pairs.append((name, ref_id, match))
    pairs += [(tname, None, tid) for tid, tname, _ in test_segments if tid not in used]
    return pairs


def compare_segmentations(reference, test, referenceVolumeNode=None, resample: bool = False) -> SegmentationComparison:
    """Score `test` against `reference` segment by segment on a volume's grid.

    The volume is `referenceVolumeNode`, else the one the reference (then the test) segmentation was made on. Both
    segmentations must belong to it (`ownership`); `resample=True` rasterises one that does not onto its grid."""
    from RCSegNeXtCore.evaluation.metrics import class_metrics
    if reference is None or test is None:
        raise RCSegNeXtError("choose both a reference and a test segmentation")
    volume = referenceVolumeNode or ownership.reference_volume(reference) or ownership.reference_volume(test)
    if volume is None:
        raise RCSegNeXtError(f"neither '{reference.GetName()}' nor '{test.GetName()}' names the volume it was made "
                             "on; choose a reference volume whose grid both are compared on")
    for node in (reference, test):
        ownership.require_belongs(node, volume, "compute Dice", resample)
    geometry = convert.volume_to_geometry(volume)
    shape = tuple(geometry.shape)
    empty = np.zeros(shape, dtype=bool)
    rows = []
    for name, ref_id, test_id in match_segments(reference, test):
        ref_mask = convert.segment_mask(reference, ref_id, volume) if ref_id else empty
        test_mask = convert.segment_mask(test, test_id, volume) if test_id else empty
        m = class_metrics(test_mask, ref_mask, geometry.spacing)
        message = {"both_empty": "empty in both: Dice n/a", "ref_empty": "empty in reference",
                   "pred_empty": "empty in test", "ok": ""}[m["status"]]
        if ref_id is None:
            message = "missing in reference segmentation" + (" (test empty too)" if m["status"] == "both_empty" else "")
        elif test_id is None:
            message = "missing in test segmentation" + (" (reference empty too)" if m["status"] == "both_empty" else "")
        rows.append(SegmentRow(name, m["dice"], m["hd95"], m["volume_ref_ml"], m["volume_pred_ml"],
                               m["volume_diff_ml"], message))
    note = ""
    if not ownership.same_grid(reference, test):
        note = (f"'{reference.GetName()}' and '{test.GetName()}' have different geometry: both were rasterised on "
                f"the grid of volume '{volume.GetName()}' (size {shape[::-1]}, spacing "
                f"{tuple(round(s, 4) for s in geometry.spacing[::-1])} mm, x,y,z) before scoring")
    return SegmentationComparison(rows, volume.GetName(), note)
