"""Multi-process training: ``torchrun --nproc-per-node 2`` (gloo, CPU) averages gradients to
those of one process on the doubled batch."""

from __future__ import annotations

import pytest
import torch

from tests.ddp_grad_worker import fixed_batch, grads, small_model
from tests.support.torchrun import REPO, run_torchrun

pytestmark = pytest.mark.slow  # end-to-end: a two-process DDP training run


def test_torchrun_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    out = tmp_path / "grads.pt"
    run_torchrun(REPO / "tests" / "ddp_grad_worker.py", str(out), cwd=tmp_path)
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
