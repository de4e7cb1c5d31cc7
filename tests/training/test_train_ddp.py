"""Multi-process training: ``torchrun --nproc-per-node 2`` (gloo, CPU) averages gradients to
those of one process on the doubled batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_grad_worker import fixed_batch, grads, small_model

pytestmark = pytest.mark.slow  # end-to-end: a two-process DDP training run

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    out = tmp_path / "grads.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(REPO / "tests" / "ddp_grad_worker.py"),
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    single = grads(small_model(), fixed_batch())
    assert ddp.keys() == single.keys() and len(single) > 100
    worst = max(
        float((ddp[k] - single[k]).abs().max() / (single[k].abs().max() + 1e-12)) for k in single
    )
    assert worst < 1e-4, worst
    # not trivially equal: the halves alone give other gradients
    half = grads(small_model(), {k: v[:2] for k, v in fixed_batch().items()})
    k = "head.final_layer.weight"
    assert float((half[k] - single[k]).abs().max()) > 1e-3 * float(single[k].abs().max())
