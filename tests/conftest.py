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


@pytest.fixture(scope="session")
def shared_repo(shared, tmp_path_factory) -> Path:
    """A model repository holding the two real shared models, registered by ``hrnet-export``."""
    from export.cli import main as export_main

    repo = tmp_path_factory.mktemp("shared_repo")
    rc = export_main(["--shared-models", "--shared-dir", str(shared), "--model-repository", str(repo)])
    assert rc == 0
    return repo


@pytest.fixture(scope="session")
def live_gateway(shared_repo):
    """The real gateway (embedded ONNX Runtime) on a free loopback port, serving ``shared_repo``."""
    from benchmarks.bench_pose import start_local_gateway

    url, server = start_local_gateway(shared_repo)
    yield url
    server.should_exit = True
