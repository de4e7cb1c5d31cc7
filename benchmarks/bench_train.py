"""Training-speed benchmark (not a test): samples/s of one ``hrnet-train`` step and of the data
pipeline.

::

    python -m benchmarks.bench_train [--recipe td-hm_hrnet-w32_8xb64-210e_coco-256x192]
        [--batch-size 8] [--steps 5] [--amp off bf16] [--data-root ../shared/data/coco_mini]
        [--workers 0 2] [--samples 64] [--json OUT.json]

* step: the recipe's model (W32 256x192 by default) in train mode on a random batch of the
  recipe's input size, :func:`training.trainer.train_step` (forward, :class:`KeypointMSELoss`,
  backward, Adam), after ``--warmup`` untimed steps; once per ``--amp`` mode (bf16 = CPU/CUDA
  autocast);
* data: the recipe's full training pipeline (:class:`training.data.TopdownDataset` with
  augmentation, target encoding and normalisation) over ``--data-root`` (COCO layout, train
  split), through a ``DataLoader`` with each ``--workers`` count.

Prints one line per measurement and optionally writes them as JSON. Numbers depend on the host
and on what else runs there; report them with the thread count and load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from export.paths import default_shared_dir

__all__ = ["bench_step", "bench_data", "main"]


def bench_step(
    recipe_name: str, batch_size: int, steps: int, warmup: int, amp: str, device: str = "cpu"
) -> float:
    """Samples per second of :func:`training.trainer.train_step` for the recipe's model on a
    random ``(batch_size, 3, h, w)`` batch (``amp``: ``off``/``bf16``/``fp16``)."""
    from training.losses import KeypointMSELoss, targets_loss
    from training.models import build_model
    from training.optim import build_optimizer
    from training.recipes import get_recipe
    from training.trainer import train_step

    entry = get_recipe(recipe_name).entry
    (w, h), (hw, hh) = entry.input_size, entry.heatmap_size
    model = build_model(entry.arch, entry.task, entry.num_outputs, seed=0).train().to(device)
    opt = build_optimizer(model.parameters(), 5e-4)
    g = torch.Generator().manual_seed(0)
    batch = {
        "inputs": torch.randn(batch_size, 3, h, w, generator=g),
        "heatmaps": torch.rand(batch_size, entry.num_outputs, hh, hw, generator=g),
        "weights": torch.ones(batch_size, entry.num_outputs),
    }
    loss_fn = targets_loss(KeypointMSELoss())
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    for _ in range(warmup):
        train_step(model, batch, loss_fn, opt, scaler, amp, device)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, batch, loss_fn, opt, scaler, amp, device)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - t)


def bench_data(
    recipe_name: str, data_root: Path, workers: int, samples: int, batch_size: int
) -> float:
    """Samples per second of the recipe's augmented training pipeline through a DataLoader
    with ``workers`` processes (first batch excluded: worker start-up)."""
    from export.cards import pose_card
    from service.codecs import build_codec
    from training.data import TopdownDataset, load_records
    from training.recipes import TrainRecipe, get_recipe

    recipe = get_recipe(recipe_name)
    if not isinstance(recipe, TrainRecipe):
        raise ValueError(f"{recipe_name}: the data-pipeline benchmark is for top-down pose recipes")
    entry = recipe.entry
    card = pose_card(entry, entry.name)
    records = load_records(
        data_root / recipe.data.train_ann, data_root / recipe.data.train_images, entry.dataset
    )
    ds = TopdownDataset(
        records,
        build_codec(card.codec),
        card.normalization,
        card.flip_indices,
        augment=recipe.augment,
        padding=recipe.bbox_padding,
        use_udp=entry.use_udp,
        seed=0,
    )
    idx = [i % len(ds) for i in range(samples + batch_size)]
    loader = DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=batch_size, num_workers=workers
    )
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = sum(len(b["inputs"]) for b in it)
    return n / (time.perf_counter() - t)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``python -m benchmarks.bench_train``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train")
    p.add_argument("--recipe", default="td-hm_hrnet-w32_8xb64-210e_coco-256x192")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", nargs="+", default=["off", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--data-root",
        type=Path,
        default=default_shared_dir() / "data/coco_mini",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    out = {
        "recipe": a.recipe,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "batch_size": a.batch_size,
        "loadavg_before": os.getloadavg()[0],
        "step": {},
        "data": {},
    }
    for amp in a.amp:
        sps = bench_step(a.recipe, a.batch_size, a.steps, a.warmup, amp, a.device)
        out["step"][amp] = sps
        print(
            f"train step {a.recipe} amp={amp} batch={a.batch_size}: {sps:.2f} samples/s "
            f"({torch.get_num_threads()} threads)",
            flush=True,
        )
    if a.data_root.is_dir():
        for w in a.workers:
            sps = bench_data(a.recipe, a.data_root, w, a.samples, a.batch_size)
            out["data"][str(w)] = sps
            print(f"data pipeline workers={w}: {sps:.1f} samples/s", flush=True)
    else:
        print(f"data pipeline: {a.data_root} not found, skipped", file=sys.stderr)
    out["loadavg_after"] = os.getloadavg()[0]
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
