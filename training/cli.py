"""``hrnet-train``: train a registry model (or a recipe file's) on a dataset folder.

::

    hrnet-train RECIPE --data-root DIR --work-dir DIR [--max-epochs N | --max-iters N]
                [--batch-size N] [--resume] [--load-from CKPT] [--amp {off,bf16,fp16}]
                [--device cpu|cuda] [--seed N] [--sync-bn] [--workers N]
    python -m torch.distributed.run --nproc-per-node 2 -m training.cli RECIPE ...   # DDP

``RECIPE`` is a name of :data:`training.recipes.RECIPES` (``--list`` prints them: top-down
pose, the seed-000 augmentation variants, MMSeg ``fcn_hr*`` segmentation rows) or a
``.toml``/``.yaml`` recipe file. Segmentation recipes are iteration-based (``--max-iters``).
Exit status: 0 done, 2 bad arguments/files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``hrnet-train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="hrnet-train",
        description="Train an HRNet top-down pose, "
        "HigherHRNet bottom-up pose or FCN-HRNetV2 segmentation model "
        "from a registry recipe or a recipe file.",
    )
    p.add_argument("recipe", nargs="?", help="registry name (see --list) or a .toml/.yaml file")
    p.add_argument("--list", action="store_true", help="list the registry names with recipes")
    p.add_argument(
        "--data-root",
        type=Path,
        help="dataset folder (MMPose layout; MMSeg layout for segmentation)",
    )
    p.add_argument("--work-dir", type=Path, help="checkpoints and logs go here")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-epochs", type=int, help="override the recipe's epochs")
    length.add_argument("--max-iters", type=int, help="stop after N iterations in total")
    p.add_argument(
        "--batch-size",
        type=int,
        help="samples per process per step (the LR is scaled to the global batch)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from work-dir's last "
        "checkpoint (model, optimiser, scheduler, scaler, RNG, iteration)",
    )
    p.add_argument(
        "--load-from",
        type=Path,
        help="initial weights (any published layout, loaded strictly); optimiser starts fresh",
    )
    p.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="autocast dtype (fp16 with a grad scaler, CUDA only)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (CUDA)")
    p.add_argument("--workers", type=int, help="DataLoader workers per process")
    p.add_argument("--val-interval", type=int, help="validate every N epochs")
    p.add_argument("--checkpoint-interval", type=int, help="checkpoint every N epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .recipes import RECIPES, get_recipe

    if args.list:
        print("\n".join(sorted(RECIPES)))
        return 0
    if not args.recipe or args.data_root is None or args.work_dir is None:
        print(
            "hrnet-train: error: RECIPE, --data-root and --work-dir are required", file=sys.stderr
        )
        return 2
    from .checkpoint import CheckpointError
    from .trainer import Trainer, TrainOptions, close

    try:
        recipe = get_recipe(args.recipe)
        opts = TrainOptions(
            data_root=args.data_root,
            work_dir=args.work_dir,
            max_epochs=args.max_epochs,
            max_iters=args.max_iters,
            batch_size=args.batch_size,
            resume=args.resume,
            load_from=args.load_from,
            amp=args.amp,
            device=args.device,
            seed=args.seed,
            sync_bn=args.sync_bn,
            num_workers=args.workers,
            val_interval=args.val_interval,
            checkpoint_interval=args.checkpoint_interval,
            progress=not args.no_progress,
        )
        trainer = Trainer(recipe, opts)
        trainer.fit()
    except (KeyError, ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"hrnet-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        close()
    if trainer.is_main and trainer.best is not None:
        print(
            f"hrnet-train: best {trainer.best['metric']}={trainer.best['value']:.4f} at "
            f"epoch {trainer.best['epoch']} ({trainer.best['file']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
