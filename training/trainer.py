"""``hrnet-train``'s loop for top-down heatmap, bottom-up (HigherHRNet) and segmentation models:
data, DDP, AMP, schedule, checkpoints, validation, logs.

The task (:class:`~training.task_base.TrainTask`, chosen by :func:`training.tasks.build_task`:
:class:`~training.pose_tasks.TopdownTask`, :class:`~training.pose_tasks.BottomUpTask`,
:class:`~training.seg_task.SegmentationTask`) decides the data, the loss, the optimiser and LR
schedule, the validation, the recipe's length and intervals and the checkpoint layout and names;
everything else here is shared and task-agnostic.

One process, or one per rank under ``torchrun`` (``WORLD_SIZE`` set): DistributedDataParallel
over gloo (CPU) or NCCL (CUDA), optional SyncBatchNorm (CUDA only: PyTorch's SyncBatchNorm
refuses CPU tensors). The loss is each rank's mean, DDP averages gradients over ranks, so a
step equals one over the concatenated global batch (with BN statistics per rank, unless
SyncBN).

Reproducibility: the shuffled order of epoch ``e`` is ``randperm`` with seed ``seed + e``,
split over ranks like ``DistributedSampler``; each sample's augmentation draws come from
``(seed, e, index)`` (:func:`training.data.sample_rng`). So a run stopped after any iteration
and resumed (model, optimiser, scheduler, scaler and torch RNG restored; the epoch's first
batches skipped) continues exactly as the uninterrupted run (bit-exact on CPU).

Checkpoints (atomic: temp file + rename) hold ``{"meta", "state_dict"}`` in the task's upstream
layout (top-down: MMPose 1.x ``{"backbone.*", "head.*"}``; bottom-up: MMPose 0.x
``{"backbone.*", "keypoint_head.*"}``; segmentation: MMSeg's) so ``hrnet-export --checkpoint``
and the upstream read them as they are, plus ``optimizer``, ``scheduler``, ``scaler``, ``rng``,
``epoch`` and ``iter`` for ``--resume``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from . import checkpoint as ckpt
from .losses import BatchLoss
from .models import build_model
from .recipes import TrainRecipe
from .seg_recipes import SegTrainRecipe
from .task_base import TrainTask
from .tasks import build_task

__all__ = ["TrainOptions", "ShardedShuffle", "Trainer", "train_step"]

LAST_CHECKPOINT = "last_checkpoint"


@dataclass
class TrainOptions:
    """Command-line level options of a run (see ``hrnet-train --help``)."""

    data_root: Path
    work_dir: Path
    max_epochs: int | None = None
    max_iters: int | None = None
    batch_size: int | None = None
    resume: bool = False
    load_from: Path | None = None
    amp: str = "off"
    device: str = "cpu"
    seed: int = 0
    sync_bn: bool = False
    num_workers: int | None = None
    val_interval: int | None = None
    checkpoint_interval: int | None = None
    progress: bool = True
    shuffle: bool = True
    augment: bool = True


class ShardedShuffle(Sampler[int]):
    """Indices of one rank for one epoch: ``randperm(n)`` seeded with ``seed + epoch`` (or
    ``range(n)`` without shuffle), padded by wrapping to a multiple of ``world``, then every
    ``world``-th from ``rank`` (``DistributedSampler``'s split); the first ``skip`` indices are
    left out (resuming inside an epoch)."""

    def __init__(
        self, n: int, world: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True
    ) -> None:
        self.n, self.world, self.rank, self.seed, self.shuffle = n, world, rank, seed, shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and how many of its first indices to skip."""
        self.epoch, self.skip = int(epoch), int(skip)

    def indices(self) -> list[int]:
        """This rank's whole index list for the epoch (before ``skip``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.world) * self.world
        order += order[: total - self.n]
        return order[self.rank : total : self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world) - self.skip)


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    loss: BatchLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "off",
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """One optimisation step: forward (under autocast for ``amp`` ``"bf16"``/``"fp16"``), the
    batch loss (:func:`targets_loss` for top-down and segmentation, bottom-up's
    :meth:`~training.ae_loss.BottomUpLoss.batch_loss`), backward (through ``scaler`` when given),
    optimiser step, gradients zeroed first. Returns the detached loss (float32 scalar)."""
    device = torch.device(device)
    x = batch["inputs"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp in ("bf16", "fp16")
        else nullcontext()
    )
    with ctx:
        pred = model(x)
    value = loss(pred, batch, device)
    if scaler is not None:
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        value.backward()
        optimizer.step()
    return value.detach()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Train ``recipe`` with ``opts``; :meth:`fit` runs it and returns the history.

    Raises ``FileNotFoundError`` when the training annotations are missing, ``ValueError`` for
    inconsistent options (e.g. ``--amp fp16`` on CPU), ``CheckpointError`` for a bad
    ``--load-from``/``--resume`` file.
    """

    def __init__(self, recipe: TrainRecipe | SegTrainRecipe, opts: TrainOptions) -> None:
        self.recipe, self.opts = recipe, opts
        self.entry = recipe.entry
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if opts.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"--amp must be off, bf16 or fp16, got {opts.amp!r}")
        if opts.amp == "fp16" and opts.device == "cpu":
            raise ValueError("--amp fp16 needs --device cuda (use bf16 on CPU)")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if opts.device == "cuda" else "gloo")
        if opts.device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.is_main = self.rank == 0
        self.work_dir = Path(opts.work_dir)
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)

        self.task: TrainTask = build_task(recipe, Path(opts.data_root), opts.augment, opts.seed)
        self.card, self.dataset = self.task.card, self.task.dataset
        self.validate = self.task.has_validation
        if not self.validate and self.is_main:
            warnings.warn(
                f"no validation split ({self.task.validation_source} missing): validation skipped",
                stacklevel=2,
            )

        self.batch_size = opts.batch_size or recipe.batch_size
        self.sampler = ShardedShuffle(
            len(self.dataset), self.world, self.rank, opts.seed, shuffle=opts.shuffle
        )
        self.iters_per_epoch = math.ceil(
            math.ceil(len(self.dataset) / self.world) / self.batch_size
        )
        self.max_epochs, self.max_iters = self._length()
        val_interval, ckpt_interval = self.task.intervals(self.iters_per_epoch)
        self.val_interval = opts.val_interval or val_interval
        self.ckpt_interval = opts.checkpoint_interval or ckpt_interval

        torch.manual_seed(opts.seed)
        model = build_model(
            self.entry.arch, self.entry.task, self.entry.num_outputs, seed=opts.seed
        )
        if opts.load_from is not None:
            ckpt.load_checkpoint(model, opts.load_from, strict=True)
        model.train().to(self.device)
        if opts.sync_bn and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.world > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.model = model
        self.loss = self.task.batch_loss()
        optim = self.task.optimisation(
            model.parameters(), self.batch_size * self.world, self.max_iters, self.iters_per_epoch
        )
        self.lr, self.optimizer, self.lr_factor = optim.lr, optim.optimizer, optim.lr_factor
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" else None
        self.iter = 0
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        if opts.resume:
            self._resume()

    def _length(self) -> tuple[int, int]:
        """``(max_epochs, max_iters)``: ``--max-iters``, else ``--max-epochs``, else the recipe's
        length (iterations for segmentation, as MMSeg; epochs for pose)."""
        iters = self.opts.max_iters
        if iters is None and self.opts.max_epochs is None:
            iters = self.task.recipe_iters or None
        if iters is not None:
            return math.ceil(iters / self.iters_per_epoch), int(iters)
        epochs = self.opts.max_epochs or self.task.recipe_epochs
        if epochs is None:
            raise ValueError(f"{self.entry.name}: give --max-iters or --max-epochs")
        return int(epochs), int(epochs) * self.iters_per_epoch

    # ------------------------------------------------------------------ checkpoints
    def _meta(self, epoch: int) -> dict[str, Any]:
        return {
            "arch": self.entry.name,
            "dataset": self.entry.dataset,
            "epoch": epoch,
            "iter": self.iter,
            "seed": self.opts.seed,
            "world_size": self.world,
            "recipe": dataclasses.asdict(self.recipe),
            "trainer": "hrnet-train",
        }

    def save(self, name: str, epoch: int) -> Path:
        """Write ``work_dir/name`` (rank 0 only): MMPose 1.x layout (bottom-up: 0.x; segmentation:
        MMSeg's) + resume state."""
        path = self.work_dir / name
        model = _unwrap(self.model)
        state = {
            k: v.detach().cpu().clone()
            for k, v in ckpt.to_layout(model.state_dict(), self.task.layout).items()
        }
        obj = {
            "meta": self._meta(epoch),
            "state_dict": state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state()},
            "epoch": epoch,
            "iter": self.iter,
            "best": self.best,
        }
        ckpt._atomic_write(path, lambda f: torch.save(obj, f))
        (self.work_dir / LAST_CHECKPOINT).write_text(name + "\n", encoding="utf-8")
        return path

    def _resume(self) -> None:
        marker = self.work_dir / LAST_CHECKPOINT
        if not marker.is_file():
            raise FileNotFoundError(f"--resume: no {LAST_CHECKPOINT} in {self.work_dir}")
        raw = ckpt.read_checkpoint(self.work_dir / marker.read_text(encoding="utf-8").strip())
        ckpt.load_checkpoint(_unwrap(self.model), raw, strict=True)
        self.optimizer.load_state_dict(raw["optimizer"])
        self.scheduler.load_state_dict(raw["scheduler"])
        if self.scaler is not None and raw.get("scaler"):
            self.scaler.load_state_dict(raw["scaler"])
        torch.set_rng_state(raw["rng"]["torch"])
        self.iter = int(raw["iter"])
        self.best = raw.get("best")

    # ------------------------------------------------------------------ validation
    def _validate(self, epoch: int) -> dict[str, Any] | None:
        metrics = self.task.evaluate(_unwrap(self.model), self.device)
        key = self.recipe.best_metric
        value = metrics.get(key)
        if value is not None:
            better = self.best is None or (
                value > self.best["value"]
                if self.recipe.best_rule == "greater"
                else value < self.best["value"]
            )
            if better:
                name = self.task.best_name(key, epoch, self.iter)
                if self.best is not None:
                    (self.work_dir / self.best["file"]).unlink(missing_ok=True)
                self.best = {"metric": key, "value": float(value), "epoch": epoch, "file": name}
                self.save(name, epoch)
        return metrics

    # ------------------------------------------------------------------ loop
    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, skip_batches * self.batch_size)
        workers = (
            self.opts.num_workers if self.opts.num_workers is not None else self.recipe.num_workers
        )
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            drop_last=False,
            pin_memory=self.device.type == "cuda",
        )

    def fit(self) -> list[dict[str, Any]]:
        """Run from ``self.iter`` to ``max_iters``. Rank 0 writes ``log.csv`` (one row per
        iteration: epoch, iter, loss averaged over ranks, lr, samples/s) and ``val.csv``,
        checkpoints every ``checkpoint_interval`` epochs and at the end, validates every
        ``val_interval`` epochs and at the end. Returns the per-iteration rows."""
        from tqdm import tqdm

        start_epoch, skip = divmod(self.iter, self.iters_per_epoch)
        bar = tqdm(
            total=self.max_iters,
            initial=self.iter,
            disable=not (self.is_main and self.opts.progress),
            unit="it",
            dynamic_ncols=True,
            desc=self.entry.name,
        )
        log_f = None
        writer = None
        if self.is_main:
            new = not (self.work_dir / "log.csv").exists() or not self.opts.resume
            log_f = open(self.work_dir / "log.csv", "w" if new else "a", newline="")
            writer = csv.writer(log_f)
            if new:
                writer.writerow(["epoch", "iter", "loss", "lr", "samples_per_s", "time"])
        t_start = time.perf_counter()
        try:
            for epoch in range(start_epoch, self.max_epochs):
                t_last = time.perf_counter()
                for batch in self._loader(epoch, skip if epoch == start_epoch else 0):
                    if self.iter >= self.max_iters:
                        break
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss = train_step(
                        self.model,
                        batch,
                        self.loss,
                        self.optimizer,
                        self.scaler,
                        self.opts.amp,
                        self.device,
                    )
                    self.scheduler.step()
                    self.iter += 1
                    if self.world > 1:
                        dist.all_reduce(loss)
                        loss = loss / self.world
                    now = time.perf_counter()
                    sps = len(batch["inputs"]) * self.world / max(now - t_last, 1e-9)
                    t_last = now
                    row = {
                        "epoch": epoch,
                        "iter": self.iter,
                        "loss": float(loss),
                        "lr": lr,
                        "samples_per_s": sps,
                        "time": now - t_start,
                    }
                    self.history.append(row)
                    if writer is not None and log_f is not None:
                        writer.writerow(
                            [
                                epoch,
                                self.iter,
                                f"{row['loss']:.9g}",
                                f"{lr:.9g}",
                                f"{sps:.3f}",
                                f"{row['time']:.3f}",
                            ]
                        )
                        log_f.flush()
                    bar.set_postfix(
                        loss=f"{row['loss']:.3e}", lr=f"{lr:.2e}", sps=f"{sps:.1f}", refresh=False
                    )
                    bar.update(1)
                done_epoch = epoch + 1
                last = self.iter >= self.max_iters
                epoch_complete = self.iter % self.iters_per_epoch == 0 or last
                if self.is_main and epoch_complete:
                    if self.validate and (done_epoch % self.val_interval == 0 or last):
                        metrics = self._validate(done_epoch)
                        self._log_val(done_epoch, metrics)
                    if done_epoch % self.ckpt_interval == 0 or last:
                        whole = self.iter % self.iters_per_epoch == 0
                        name = self.task.checkpoint_name(done_epoch, self.iter, whole)
                        self.save(name, done_epoch)
                if self.world > 1:
                    dist.barrier()
                if last:
                    break
        finally:
            bar.close()
            if log_f is not None:
                log_f.close()
        return self.history

    def _log_val(self, epoch: int, metrics: dict[str, Any] | None) -> None:
        if not metrics:
            return
        path = self.work_dir / "val.csv"
        new = not path.exists()
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", "iter"] + keys)
            w.writerow([epoch, self.iter] + [f"{metrics[k]:.6g}" for k in keys])
        print(
            f"[hrnet-train] epoch {epoch} iter {self.iter}: "
            + ", ".join(f"{k}={metrics[k]:.4f}" for k in keys),
            flush=True,
        )


def close() -> None:
    """Tear down the process group if this process started one."""
    if dist.is_initialized():
        dist.destroy_process_group()
