"""Test-wide settings: no hub access, ever; shared fixtures for paths outside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ../shared folder (CI has it; a user's fresh clone does not)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (only the project's CI machines have ../shared)")
    return SHARED
