"""How the segments look everywhere (the .seg.nrrd export and the Slicer module): names, colours, terminology.

The ONE place for segment style. Colours follow the paper's figures (red rectum, green tumour). Terminology entries
are Slicer's `TerminologyEntry` tag strings with SNOMED-CT codes from the "DICOM master list" context:
Rectum SCT 34402009 (category SCT 123037004 Anatomical Structure); Tumor SCT 86049000 "Neoplasm, Primary"
(category SCT 49755003 Morphologically Altered Structure) with anatomic region Rectum SCT 34402009.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class SegmentStyle:
    """Display name, RGB colour in [0, 1] and Slicer terminology string of one segment."""

    name: str
    color: Tuple[float, float, float]
    terminology: str
    label_value: int = 0


def terminology_string(category: Tuple[str, str, str], type_: Tuple[str, str, str],
                       region: Optional[Tuple[str, str, str]] = None) -> str:
    """Slicer's `context~category~type~typeModifier~anatomicContext~region~regionModifier` string."""
    codes = lambda c: "^".join(c) if c else "^^"  # noqa: E731
    return "~".join([CONTEXT, codes(category), codes(type_), "^^", ANATOMIC_CONTEXT, codes(region), "^^"])


RECTUM = SegmentStyle("Rectum", (0.85, 0.25, 0.25), terminology_string(
    ("SCT", "123037004", "Anatomical Structure"), ("SCT", "34402009", "Rectum")), 1)
TUMOR = SegmentStyle("Tumor", (0.25, 0.80, 0.25), terminology_string(
    ("SCT", "49755003", "Morphologically Altered Structure"), ("SCT", "86049000", "Neoplasm, Primary"),
    ("SCT", "34402009", "Rectum")), 2)

# label name (lower case, as in dataset.json) -> style
SEGMENT_STYLE: Dict[str, SegmentStyle] = {"rectum": RECTUM, "tumour": TUMOR, "tumor": TUMOR}

# colours for labels without a known style (cycled)
_FALLBACK_COLORS = [(0.90, 0.85, 0.30), (0.30, 0.55, 0.90), (0.80, 0.45, 0.85), (0.35, 0.85, 0.85)]


def style_for(label_name: str, label_value: int) -> SegmentStyle:
    """Style of one foreground label: the known style for rectum / tumour / tumor, otherwise the label's own name
    (first letter upper-cased), a fallback colour and an empty terminology."""
    known = SEGMENT_STYLE.get(label_name.strip().lower())
    if known is not None:
        return SegmentStyle(known.name, known.color, known.terminology, int(label_value))
    color = _FALLBACK_COLORS[(int(label_value) - 1) % len(_FALLBACK_COLORS)]
    name = label_name[:1].upper() + label_name[1:]
    return SegmentStyle(name, color, "", int(label_value))


def segment_styles(labels: Mapping[str, int]) -> List[SegmentStyle]:
    """Styles of every foreground label of a dataset.json `labels` mapping (name -> value), by value;
    background (value 0) gets no segment."""
    return [style_for(name, value) for name, value in sorted(labels.items(), key=lambda kv: int(kv[1]))
            if int(value) != 0]
