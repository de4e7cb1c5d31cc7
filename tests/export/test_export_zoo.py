"""``hrnet-export --shared-models --zoo ARCH``: the README's main command also exports registry
models from their published URLs when it can, and skips them with a message when it cannot.

The download is real code (training.checkpoint.download_checkpoint) run on files made here: a
file:// URL whose name carries the right sha256 prefix, one with a wrong prefix, and an
unreachable loopback URL. Nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses

import pytest

from export.cli import main
from tests.export_fixtures import clear_export_env, register_small_pose_entry

torch = pytest.importorskip("torch")

SMALL = "test-zoo_hrnet-w18s_coco-96x64"


@pytest.fixture
def zoo_entry(monkeypatch):
    """The small pose entry with an unreachable published URL (loopback port 1); clean env."""
    clear_export_env(monkeypatch)
    return register_small_pose_entry(
        monkeypatch, SMALL, "http://127.0.0.1:1/unreachable-0123abcd_20200101.pth"
    )


def _published_file(tmp_path, prefix: str | None = None):
    """A checkpoint in MMPose 1.x layout named like a published one: ``name-<sha256[:8]>_date.pth``."""
    from training.checkpoint import save_checkpoint, sha256_file
    from training.models import create_model

    raw = save_checkpoint(create_model(SMALL, seed=1), tmp_path / "raw.pth", layout="mmpose1")
    digest = sha256_file(raw)
    path = tmp_path / "published" / f"small-{prefix or digest[:8]}_20200101.pth"
    path.parent.mkdir()
    raw.rename(path)
    return path, digest


def _run(shared, tmp_path, capsys):
    repo = tmp_path / "repo"
    rc = main(
        [
            "--shared-models",
            "--shared-dir",
            str(shared),
            "--zoo",
            SMALL,
            "--model-repository",
            str(repo),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--exporter",
            "legacy",
        ]
    )
    return rc, repo, capsys.readouterr().out


def test_zoo_model_exported_from_its_url(shared, zoo_entry, tmp_path, capsys, monkeypatch):
    from training import registry

    path, digest = _published_file(tmp_path)
    monkeypatch.setitem(
        registry._REGISTRY, SMALL, dataclasses.replace(zoo_entry, url=path.as_uri())
    )
    rc, repo, out = _run(shared, tmp_path, capsys)
    assert rc == 0, out
    assert (repo / SMALL / "1" / "model.onnx").is_file()
    assert (repo / "pp_tinypose_256x192" / "card.json").is_file()
    cached = tmp_path / "cache" / path.name
    assert cached.is_file()
    from training.checkpoint import sha256_file

    assert sha256_file(cached) == digest


def test_zoo_model_with_wrong_hash_is_skipped(shared, zoo_entry, tmp_path, capsys, monkeypatch):
    from training import registry

    path, _ = _published_file(tmp_path, prefix="deadbeef")
    monkeypatch.setitem(
        registry._REGISTRY, SMALL, dataclasses.replace(zoo_entry, url=path.as_uri())
    )
    rc, repo, out = _run(shared, tmp_path, capsys)
    assert rc == 0
    assert f"skipped {SMALL}" in out and "deadbeef" in out
    assert not (repo / SMALL).exists()
    assert not list((tmp_path / "cache").glob("*.pth"))  # the bad download is not kept


def test_unreachable_zoo_url_is_skipped(shared, zoo_entry, tmp_path, capsys):
    rc, repo, out = _run(shared, tmp_path, capsys)
    assert rc == 0
    assert f"skipped {SMALL}: cannot download http://127.0.0.1:1/" in out
    assert (repo / "rtmdet_nano_person_320" / "card.json").is_file()
    assert not (repo / SMALL).exists()
