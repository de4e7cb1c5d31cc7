"""Shared fixtures: where the real data and models live (``../shared`` unless HRNET_SHARED_DIR says)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.paths import default_shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    """Root of the shared real data/models; tests needing it skip only if it is truly absent."""
    root = default_shared_dir().resolve()
    if not (root / "README.md").exists():
        pytest.skip(f"shared data not found at {root} (set HRNET_SHARED_DIR)")
    return root


@pytest.fixture(scope="session")
def shared_repo(shared, tmp_path_factory) -> Path:
    """A model repository holding the two real shared models, registered by ``hrnet-export``."""
    from export.cli import main as export_main

    repo = tmp_path_factory.mktemp("shared_repo")
    rc = export_main(
        ["--shared-models", "--shared-dir", str(shared), "--model-repository", str(repo)]
    )
    assert rc == 0
    return repo


def _serve(repo):
    from benchmarks.bench_pose import start_local_gateway

    url, server = start_local_gateway(repo)
    yield url
    server.should_exit = True


@pytest.fixture(scope="session")
def live_gateway(shared_repo):
    """The real gateway (embedded ONNX Runtime) on a free loopback port, serving ``shared_repo``."""
    yield from _serve(shared_repo)


@pytest.fixture(scope="session")
def random_gateway(random_repo):
    """The real gateway on a free loopback port, serving ``random_repo`` (random-weight models)."""
    yield from _serve(random_repo)


# registry config -> served name of the fixed-seed random-weight models exported for end-to-end tests
RANDOM_MODELS = {
    "td-hm_hrnet-w32_8xb64-210e_coco-256x192": "hrnet_w32_coco_random",
    "td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-combine": "hrnet_w32_coco_aic_combine_random",
    "hrnet_w32_horse10_256x256-split1": "hrnet_w32_horse10_random",
    "hrnet_w32_macaque_256x192": "hrnet_w32_macaque_random",
    "hrnet_w32_atrw_256x256": "hrnet_w32_atrw_random",
    "fcn_hr18s_4xb2-40k_cityscapes-512x1024": "fcn_hr18s_cityscapes_random",
}


@pytest.fixture(scope="session")
def random_repo(shared, tmp_path_factory) -> Path:
    """A model repository with the shared real models plus fixed-seed random HRNet models
    (:data:`RANDOM_MODELS`: COCO W32, COCO-AIC combine W32 (19 heatmaps), Horse-10 / MacaquePose /
    ATRW W32, Cityscapes fcn_hr18s),
    exported once per session by ``hrnet-export --random-init`` (parity checks are covered by
    tests/export/test_export*.py, so skipped here)."""
    from export.cli import main as export_main

    repo = tmp_path_factory.mktemp("random_repo")
    assert (
        export_main(
            ["--shared-models", "--shared-dir", str(shared), "--model-repository", str(repo)]
        )
        == 0
    )
    for arch, name in RANDOM_MODELS.items():
        # legacy exporter: ~1 s per model; both exporters' parity is covered in
        # tests/export/test_export.py
        rc = export_main(
            [
                "--arch",
                arch,
                "--random-init",
                "--seed",
                "0",
                "--name",
                name,
                "--model-repository",
                str(repo),
                "--no-check",
                "--exporter",
                "legacy",
                "--instance-kind",
                "KIND_CPU",
                "--max-batch-size",
                "16",
            ]
        )
        assert rc == 0, arch
    return repo
