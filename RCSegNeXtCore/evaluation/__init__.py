"""Evaluation: per-case metrics (Dice, HD95, volumes), cross-validation tables and the paper's paired t-test.

`metrics` is the one implementation used by `rcsegnext evaluate`, training validation and the Slicer Dice panel;
`report` builds the layout of the paper's Tables 1-3; `stats` holds the two-tailed paired t-test (no scipy).
"""
from RCSegNeXtCore.errors import RCSegNeXtError


class EvaluationError(RCSegNeXtError):
    """Predictions, references, metrics files or result tables cannot be evaluated or compared."""
