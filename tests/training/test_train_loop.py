"""hrnet-train end to end on real data at test size: resume is bit-exact, checkpoints are the
MMPose 1.x layout the exporter takes, the DeepLabCut flow trains -> exports -> serves ->
evaluates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import DLC_SMALL, quick_options, small_entry, small_rows, tiny_dlc_recipe
from training import checkpoint as ckpt
from training.dlc import convert, read_dlc_csv
from training.recipes import DataLayout, TrainRecipe
from training.trainer import Trainer
from training.transforms import AugmentConfig

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("small_rows")


@pytest.fixture(scope="module")
def dlc_small(shared, tmp_path_factory) -> Path:
    """The first 24 DeepLabCut frames as COCO json (20 train / 4 test)."""
    out = tmp_path_factory.mktemp("dlc")
    n = convert(shared / "data" / "dlc_openfield", out, train_fraction=0.8, seed=0, limit=24)
    assert n == {"train": 19, "test": 5}
    return out


def test_dlc_csv_reader_and_boxes(shared, dlc_small):
    parts, images, xy = read_dlc_csv(
        shared / "data/dlc_openfield/labeled-data/m4s1/CollectedData_Pranav.csv"
    )
    assert parts == ["snout", "leftear", "rightear", "tailbase"] and len(images) == 116
    assert xy[0, 0].tolist() == pytest.approx([21.521, 265.428])
    test = json.loads((dlc_small / "annotations/test.json").read_text())
    a = test["annotations"][0]
    fid = a["image_id"] - 1
    kp = xy[fid]
    x1, y1 = max(kp[:, 0].min() - 20, 0), max(kp[:, 1].min() - 20, 0)
    assert a["bbox"][:2] == pytest.approx([x1, y1], abs=1e-3)
    assert a["bbox"][0] + a["bbox"][2] == pytest.approx(min(kp[:, 0].max() + 20, 639), abs=2e-3)


def test_resume_is_bit_exact(dlc_small, tmp_path):
    torch.set_num_threads(1)
    # 19 frames / batch 2 = 10 iterations per epoch: 6 + 6 crosses the epoch boundary
    full = Trainer(
        tiny_dlc_recipe(), quick_options(dlc_small, tmp_path / "full", max_iters=12, batch_size=2)
    ).fit()
    first = Trainer(
        tiny_dlc_recipe(), quick_options(dlc_small, tmp_path / "cut", max_iters=6, batch_size=2)
    )
    part1 = first.fit()
    assert (tmp_path / "cut" / "iter_6.pth").is_file()
    opts = quick_options(dlc_small, tmp_path / "cut", max_iters=12, batch_size=2)
    opts.resume = True
    second = Trainer(tiny_dlc_recipe(), opts)
    assert second.iter == 6
    part2 = second.fit()
    losses = [r["loss"] for r in part1 + part2]
    assert len(losses) == 12
    assert losses == [r["loss"] for r in full]  # exactly equal floats
    assert [r["lr"] for r in part1 + part2] == [r["lr"] for r in full]
    a = ckpt.read_checkpoint(tmp_path / "full" / "iter_12.pth")["state_dict"]
    b = ckpt.read_checkpoint(tmp_path / "cut" / "iter_12.pth")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log continues across the resume
    rows = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,iter,loss") and len(rows) == 13


def test_checkpoint_layout_and_strict_reload(dlc_small, tmp_path):
    tr = Trainer(tiny_dlc_recipe(), quick_options(dlc_small, tmp_path, max_iters=1, batch_size=2))
    tr.fit()
    raw = ckpt.read_checkpoint(tmp_path / "iter_1.pth")  # weights_only=True
    keys = set(raw["state_dict"])
    assert {k.split(".", 1)[0] for k in keys} == {"backbone", "head"}
    assert "head.final_layer.weight" in keys
    assert {"optimizer", "scheduler", "rng", "epoch", "iter", "meta"} <= set(raw)
    assert raw["meta"]["arch"] == DLC_SMALL and raw["iter"] == 1
    from training.models import create_model

    m = create_model(DLC_SMALL, checkpoint=tmp_path / "iter_1.pth")  # strict
    sd = m.state_dict()
    assert all(torch.equal(sd[k], raw["state_dict"][k]) for k in keys)
    # validation ran at the end on the test split and chose the best checkpoint
    val = (tmp_path / "val.csv").read_text().splitlines()
    assert val[0].split(",")[:2] == ["epoch", "iter"] and "EPE" in val[0]
    assert (tmp_path / tr.best["file"]).is_file() and tr.best["metric"] == "EPE"


@pytest.mark.slow
def test_dlc_flow_train_export_serve_eval(dlc_small, tmp_path):
    """The README's worked example, shortened: 6 iterations of the small model, then the
    checkpoint goes through hrnet-export, the gateway and hrnet-eval unchanged."""
    from export.cli import main as export_main
    from tests.conftest import _serve

    small_entry(DLC_SMALL)  # the exporter below looks the row up in this process

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    work = tmp_path / "work"
    # the CLI's own main in a fresh interpreter (the small test row registered first)
    args = [
        DLC_SMALL,
        "--data-root",
        str(dlc_small),
        "--work-dir",
        str(work),
        "--max-iters",
        "6",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--seed",
        "1",
    ]
    pre = (
        f"import sys, tests.train_fixtures as f; f.small_entry({repr(DLC_SMALL)}); "
        "from training.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", pre] + args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "EPE=" in r.stdout
    ck = work / (work / "last_checkpoint").read_text().strip()
    repo = tmp_path / "repo"
    assert (
        export_main(
            [
                "--arch",
                DLC_SMALL,
                "--checkpoint",
                str(ck),
                "--name",
                "dlc_small",
                "--model-repository",
                str(repo),
            ]
        )
        == 0
    )
    from benchmarks.eval import main as eval_main

    for url in _serve(repo):
        out = tmp_path / "eval"
        rc = eval_main(
            [
                "--url",
                url,
                "--model",
                "dlc_small",
                "--dataset",
                "dlc_openfield",
                "--ann",
                str(dlc_small / "annotations/test.json"),
                "--images",
                str(dlc_small / "images"),
                "--gt-boxes",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        assert rc == 0
        metrics = json.loads((out / "metrics.json").read_text())["metrics"]
        # the served path scores what in-process validation scored on the same checkpoint
        val = dict(
            zip(*[line.split(",") for line in (work / "val.csv").read_text().splitlines()[:2]])
        )
        assert metrics["EPE"] == pytest.approx(float(val["EPE"]), rel=1e-4)
        assert metrics["count"] == 20 and 0 <= metrics["PCK@0.2"] <= 1
