"""The total pooling stride: the product of a plan's strides per axis, which every network input, patch and tile
grid must be a multiple of.

A module without imports of its own: the plans.json schema (plans.py), the network and the planner (planning.py)
all need it, and planning builds on the other two.
"""
from __future__ import annotations

from typing import List, Sequence


def total_stride(strides: Sequence[Sequence[int]]) -> List[int]:
    """Product of all pooling strides per (z, y, x) axis; [1, 1, 1] without pooling."""
    total = [1, 1, 1]
    for stride in strides:
        total = [t * int(s) for t, s in zip(total, stride)]
    return total
