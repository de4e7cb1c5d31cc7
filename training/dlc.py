"""DeepLabCut labelled data -> COCO keypoint files for ``hrnet-train`` / ``hrnet-eval``.

::

    python -m training.dlc ../shared/data/dlc_openfield --out runs/dlc_data \\
        --train-fraction 0.95 --seed 0 --margin 20

reads ``labeled-data/*/CollectedData_*.csv`` (DeepLabCut's single-animal CSV: three header
rows ``scorer`` / ``bodyparts`` / ``coords``, then one row per frame: the image path relative
to the project and ``x, y`` per body part, empty when unlabelled) and writes
``OUT/annotations/train.json`` and ``OUT/annotations/test.json`` (COCO keypoints, category 1
with the body-part names) plus ``OUT/images`` (a symlink to the project folder, so
``file_name`` stays DeepLabCut's relative path).

Split: a seeded random permutation of the frames, the first ``round(n * train_fraction)`` for
training (DeepLabCut's ``TrainingFraction``, 0.95 in the example's ``config.yaml``).

Boxes: the extent of the labelled keypoints plus ``margin`` pixels on every side, clipped to
the frame. A top-down model needs a box per animal; the four open-field keypoints (snout, ears,
tail base) lie on the body's outline, so the margin gives the crop some body around them.
At test time these ground-truth boxes are what ``hrnet-eval --gt-boxes`` sends, i.e. the
evaluation assumes a perfect detector (DeepLabCut's own error is measured on whole frames).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["read_dlc_csv", "dlc_to_coco", "split_frames", "convert", "main"]


def read_dlc_csv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse a DeepLabCut single-animal ``CollectedData_*.csv``.

    Returns ``(bodyparts, image_paths, xy)``: ``xy`` float64 ``(N, K, 2)`` pixels, NaN where
    unlabelled. Raises ``ValueError`` for a file without the three header rows or with
    inconsistent columns.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if (
        len(rows) < 3
        or rows[0][:1] != ["scorer"]
        or rows[1][:1] != ["bodyparts"]
        or rows[2][:1] != ["coords"]
    ):
        raise ValueError(f"{path}: not a DeepLabCut CSV (scorer/bodyparts/coords header rows)")
    parts_row, coords_row = rows[1][1:], rows[2][1:]
    if (
        len(parts_row) % 2
        or coords_row[0::2] != ["x"] * (len(parts_row) // 2)
        or coords_row[1::2] != ["y"] * (len(parts_row) // 2)
    ):
        raise ValueError(f"{path}: expected x, y column pairs per body part")
    parts = parts_row[0::2]
    images, xy = [], []
    for r in rows[3:]:
        if not r or not r[0]:
            continue
        vals = [float(v) if v.strip() else np.nan for v in r[1 : 1 + len(parts_row)]]
        vals += [np.nan] * (len(parts_row) - len(vals))
        images.append(r[0])
        xy.append(np.asarray(vals, dtype=np.float64).reshape(-1, 2))
    return parts, images, np.stack(xy) if xy else np.zeros((0, len(parts), 2))


def dlc_to_coco(
    parts: Sequence[str],
    images: Sequence[str],
    xy: np.ndarray,
    image_size: tuple[int, int],
    indices: Sequence[int],
    margin: float = 20.0,
    name: str = "animal",
) -> dict:
    """COCO keypoint dict of the frames ``indices``: one annotation per frame with a labelled
    keypoint (``v=2``; unlabelled ``0, 0, 0``), ``bbox`` = keypoint extent + ``margin`` px,
    clipped to ``image_size`` ``(w, h)``, ``area`` = box area. Image and annotation ids are the
    frame index + 1."""
    w, h = image_size
    out = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": name, "keypoints": list(parts), "skeleton": []}],
    }
    for i in indices:
        fid = int(i) + 1
        out["images"].append({"id": fid, "file_name": images[i], "width": w, "height": h})
        pts = xy[i]
        ok = np.isfinite(pts).all(axis=1)
        if not ok.any():
            continue
        kp = np.zeros((len(parts), 3))
        kp[ok, :2] = pts[ok]
        kp[ok, 2] = 2
        x1, y1 = np.maximum(pts[ok].min(axis=0) - margin, 0)
        x2, y2 = np.minimum(pts[ok].max(axis=0) + margin, (w - 1, h - 1))
        out["annotations"].append(
            {
                "id": fid,
                "image_id": fid,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": round(float((x2 - x1) * (y2 - y1)), 3),
                "num_keypoints": int(ok.sum()),
                "keypoints": [
                    round(float(v), 3) if j % 3 < 2 else int(v)
                    for j, v in enumerate(kp.reshape(-1))
                ],
            }
        )
    return out


def split_frames(n: int, train_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded permutation of ``range(n)`` cut at ``round(n * train_fraction)``: ``(train,
    test)``, each sorted. Raises ``ValueError`` unless ``0 < train_fraction < 1``."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * train_fraction))
    return sorted(perm[:cut].tolist()), sorted(perm[cut:].tolist())


def convert(
    project: str | Path,
    out: str | Path,
    train_fraction: float = 0.95,
    seed: int = 0,
    margin: float = 20.0,
    limit: int | None = None,
) -> dict:
    """Convert every ``labeled-data/*/CollectedData_*.csv`` of a DeepLabCut project into
    ``out/annotations/{train,test}.json`` + ``out/images`` (see the module docstring).
    ``limit`` keeps the first frames only (tests). Returns ``{"train": n, "test": n}``.
    Raises ``FileNotFoundError`` when no CSV is found."""
    import cv2

    project, out = Path(project).resolve(), Path(out)
    csvs = sorted(project.glob("labeled-data/*/CollectedData_*.csv"))
    if not csvs:
        raise FileNotFoundError(f"no labeled-data/*/CollectedData_*.csv under {project}")
    tables = [read_dlc_csv(c) for c in csvs]
    parts, images, xys = tables[0][0], [], []
    for c, (p, im, xy) in zip(csvs, tables):
        if p != parts:
            raise ValueError(f"{c}: body parts {p} differ from {parts}")
        images += im
        xys.append(xy)
    xy = np.concatenate(xys)
    if limit is not None:
        images, xy = images[:limit], xy[:limit]
    first = cv2.imread(str(project / images[0]), cv2.IMREAD_UNCHANGED)
    if first is None:
        raise FileNotFoundError(f"cannot read {project / images[0]}")
    size = (int(first.shape[1]), int(first.shape[0]))
    train, test = split_frames(len(images), train_fraction, seed)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", train), ("test", test)):
        coco = dlc_to_coco(parts, images, xy, size, idx, margin)
        (out / "annotations" / f"{name}.json").write_text(json.dumps(coco), encoding="utf-8")
    link = out / "images"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(project, link, target_is_directory=True)
    return {"train": len(train), "test": len(test)}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``python -m training.dlc``)."""
    p = argparse.ArgumentParser(
        prog="python -m training.dlc", description="DeepLabCut CSV labels -> COCO keypoint json"
    )
    p.add_argument("project", type=Path, help="DeepLabCut project folder (has labeled-data/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-fraction", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=20.0, help="box margin in pixels (20)")
    p.add_argument("--limit", type=int, help="first N frames only")
    a = p.parse_args(argv)
    try:
        n = convert(a.project, a.out, a.train_fraction, a.seed, a.margin, a.limit)
    except (OSError, ValueError) as exc:
        print(f"training.dlc: error: {exc}", file=sys.stderr)
        return 2
    print(f"training.dlc: {n['train']} train / {n['test']} test frames -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
