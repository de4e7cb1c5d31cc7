"""Test helpers shared by the ``hrnet-export`` tests (test_export_cli.py, test_export_zoo.py).

:func:`register_small_pose_entry` puts a tiny top-down pose model into the registry for one
test: HRNet-W18-small, COCO 17 keypoints, input 64x96 ``(w, h)`` pixels, heatmaps 16x24, so a
checkpoint export runs in seconds. :func:`clear_export_env` removes every environment variable
``hrnet-export`` reads, so the developer's shell cannot leak into a test.
"""

from __future__ import annotations

import os

import pytest


def register_small_pose_entry(monkeypatch: pytest.MonkeyPatch, name: str, url: str):
    """Register (until the test ends, via ``monkeypatch``) and return a small pose
    :class:`training.registry.ModelEntry` called ``name`` whose published checkpoint is ``url``."""
    from training import registry

    entry = registry.ModelEntry(
        name=name,
        task="topdown_pose",
        arch="hrnet_w18_small",
        dataset="coco",
        num_outputs=17,
        config=f"tests/{name}.py",
        url=url,
        metrics={"AP": 0.5},
        input_size=(64, 96),
        heatmap_size=(16, 24),
        sigma=2.0,
        codec="MSRAHeatmap",
    )
    monkeypatch.setitem(registry._REGISTRY, name, entry)
    return entry


def clear_export_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset ``HRNET_MODEL_REPOSITORY``, ``HRNET_SHARED_DIR``, ``HRNET_CACHE_DIR`` and every
    ``HRNET_EXPORT_*`` variable for the duration of the test."""
    for var in ("HRNET_MODEL_REPOSITORY", "HRNET_SHARED_DIR", "HRNET_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("HRNET_EXPORT_")]:
        monkeypatch.delenv(var)
