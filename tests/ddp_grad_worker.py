"""torchrun worker of ``test_train_ddp``: one DDP step of the small model on this rank's half of
a fixed batch (BatchNorm in eval mode, so the statistics do not depend on how the batch is
split; PyTorch's SyncBatchNorm refuses CPU tensors), then rank 0 saves the averaged gradients.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_grad_worker.py OUT.pt [bottomup]

``bottomup``: the same with a small HigherHRNet and :class:`training.ae_loss.BottomUpLoss`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

from training.ae_loss import BottomUpLoss
from training.losses import KeypointMSELoss, targets_loss
from training.models import build_model
from training.trainer import train_step


def fixed_batch(n: int = 4, k: int = 4, size: int = 64) -> dict[str, torch.Tensor]:
    """A fixed batch: seeded normal inputs, random heatmaps and 0/1 weights."""
    g = torch.Generator().manual_seed(123)
    return {
        "inputs": torch.randn(n, 3, size, size, generator=g),
        "heatmaps": torch.rand(n, k, size // 4, size // 4, generator=g),
        "weights": (torch.rand(n, k, generator=g) > 0.3).float(),
    }


def fixed_bottomup_batch(n: int = 4, k: int = 4, size: int = 64) -> dict:
    """A fixed bottom-up batch: inputs, per-stage (1/4, 1/2) random heatmaps and 0/1 masks, and
    tag joints of 3 people per image (random pixels of the 1/4 tag maps, some unlabelled)."""
    g = torch.Generator().manual_seed(321)
    sizes = (size // 4, size // 2)
    joints = torch.zeros(n, 5, k, 2, dtype=torch.int64)
    joints[:, :3, :, 0] = torch.randint(0, k * sizes[0] ** 2, (n, 3, k), generator=g)
    joints[:, :3, :, 1] = (torch.rand(n, 3, k, generator=g) > 0.2).long()
    return {
        "inputs": torch.randn(n, 3, size, size, generator=g),
        "heatmaps": [torch.rand(n, k, s, s, generator=g) for s in sizes],
        "masks": [(torch.rand(n, s, s, generator=g) > 0.1).float() for s in sizes],
        "joints": [joints, torch.zeros(n, 5, k, 2, dtype=torch.int64)],
    }


def split(batch: dict, start: int, stop: int) -> dict:
    """Images ``start:stop`` of a batch (per-stage lists split item by item)."""
    return {
        key: [t[start:stop] for t in v] if isinstance(v, list) else v[start:stop]
        for key, v in batch.items()
    }


def grads(model: torch.nn.Module, batch: dict, loss_fn=None) -> dict[str, torch.Tensor]:
    """Gradients of one :func:`training.trainer.train_step` (SGD with lr 0: weights unchanged);
    ``loss_fn`` defaults to :class:`KeypointMSELoss`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    if isinstance(loss_fn, BottomUpLoss):
        train_step(model, batch, loss_fn.batch_loss, opt)
    else:
        train_step(model, batch, targets_loss(loss_fn or KeypointMSELoss()), opt)
    inner = model.module if hasattr(model, "module") else model
    return {n: p.grad.detach().clone() for n, p in inner.named_parameters()}


def small_model(task: str = "topdown_pose") -> torch.nn.Module:
    """hrnet_w18_small, 4 keypoints, fixed seed, BatchNorm frozen (eval)."""
    m = build_model("hrnet_w18_small", task, 4, seed=0)
    m.train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    return m


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    bottomup = sys.argv[2:] == ["bottomup"]
    batch = fixed_bottomup_batch() if bottomup else fixed_batch()
    per = batch["inputs"].shape[0] // world
    mine = split(batch, rank * per, (rank + 1) * per)
    model = torch.nn.parallel.DistributedDataParallel(
        small_model("bottomup_pose" if bottomup else "topdown_pose")
    )
    g = grads(model, mine, BottomUpLoss(4) if bottomup else None)
    if rank == 0:
        torch.save(g, sys.argv[1])
    dist.destroy_process_group()


if __name__ == "__main__" and "RANK" in os.environ:
    main()
