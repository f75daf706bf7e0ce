"""Shared pytest fixtures: the real-data folder (tests skip when it is absent) and small torch settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("RCSEGNEXT_REAL_DATA", REPO.parent / "shared" / "data" / "real"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real (or $RCSEGNEXT_REAL_DATA); the test is skipped when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real MRI folder {REAL_DATA} is absent")
    return REAL_DATA
