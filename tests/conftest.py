"""Shared fixtures: where the real data and models live (``../shared`` unless HRNET_SHARED_DIR says)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("HRNET_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    """Root of the shared real data/models; tests needing it skip only if it is truly absent."""
    root = shared_dir()
    if not (root / "README.md").exists():
        pytest.skip(f"shared data not found at {root} (set HRNET_SHARED_DIR)")
    return root
