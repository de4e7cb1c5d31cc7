"""``hrnet-eval``: check that a running gateway reproduces the model zoo's published numbers.

Reads a dataset in its standard format, sends every image to the gateway (``POST /pose`` with
the detection file's boxes, the ground-truth boxes or none — the service's detector; ``POST
/segment`` with the image alone; a bottom-up model gets the image alone too), gathers the
predictions, computes the metric with the shared
:mod:`service.metrics` code (MMPose ``CocoMetric`` for COCO / MacaquePose / ATRW, PCK@0.3 + NME
for Horse-10, pixel error (EPE/RMSE) + box-normalised PCK@0.2 for the DeepLabCut example
(``dlc_openfield``), MMSeg ``IoUMetric`` for Cityscapes) and prints ours / published / diff.

    hrnet-eval --url http://127.0.0.1:8000 --model pp_tinypose_256x192 --dataset coco \\
        --ann person_keypoints_val2017.json --images val2017/ \\
        --boxes COCO_val2017_detections_AP_H_56_person.json --out runs/eval/tinypose

Requests run concurrently (``--concurrency``) with retries and exponential backoff on 503 and
connection errors. Each finished image is appended to ``OUT/predictions.jsonl``; a re-run with the
same ``--out`` skips the images already there (``--restart`` discards them). ``OUT/results.json``
(COCO keypoint results after rescoring and OKS-NMS; per-class IoU for segmentation) and
``OUT/metrics.json`` are written atomically.

``--tolerance`` is in fraction units for every metric (percent metrics such as mIoU are
compared after dividing by 100): the default 0.01 is 1 AP point or 1 mIoU percentage point.

Exit status: 0 all compared metrics within ``--tolerance``; 1 some metric beyond it; 2 the job
could not run (bad arguments or files, gateway or model unavailable, nothing evaluated); 3 some
images failed (metrics computed on the rest, printed, but the run is incomplete — re-run to
retry them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.eval_client import RequestFailed, RetryPolicy, api_key_headers, get_json, post_form
from benchmarks.eval_data import (
    PIXEL_ERROR_DATASETS,
    POSE_DATASETS,
    SEG_DATASETS,
    DataError,
    PoseItem,
    SegItem,
    build_pose_items,
    build_seg_items,
    evaluate_coco_bottomup,
    evaluate_coco_style,
    evaluate_horse10,
    evaluate_pixel_error,
    evaluate_segmentation,
    keypoint_selection,
    load_json,
)
from benchmarks.eval_io import PredictionLog, atomic_write_json
from benchmarks.eval_report import compare, format_table, gather_references, parse_reference_args
from service.datasets import get_pose_dataset

EXIT_OK, EXIT_TOLERANCE, EXIT_ERROR, EXIT_INCOMPLETE = 0, 1, 2, 3


class SetupError(Exception):
    """The job cannot run; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    """The ``hrnet-eval`` command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="hrnet-eval",
        description="Evaluate a running HRNet gateway on a dataset and compare with the "
        "published metrics.",
    )
    p.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--api-key",
        help="the gateway's API key, if it needs one (default: the first key of $HRNET_API_KEY)",
    )
    p.add_argument("--model", required=True, help="model name as served (GET /models)")
    p.add_argument("--dataset", required=True, choices=POSE_DATASETS + SEG_DATASETS)
    p.add_argument(
        "--ann",
        help="COCO keypoint annotation json (pose); label folder (cityscapes, default: --images)",
    )
    p.add_argument("--images", required=True, help="image folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--boxes",
        metavar="DET.json",
        help="person detections (COCO results format) to use as boxes",
    )
    src.add_argument("--gt-boxes", action="store_true", help="use the ground-truth boxes")
    src.add_argument(
        "--detector", action="store_true", help="let the service's person detector find the boxes"
    )
    p.add_argument(
        "--no-clip-boxes",
        dest="clip_boxes",
        action="store_false",
        help="send ground-truth boxes exactly as annotated instead of clipped to the "
        "image (MMPose's CocoDataset clips them)",
    )
    p.add_argument("--detector-model", help="detector model name (with --detector)")
    p.add_argument(
        "--det-score-thr", type=float, help="detector score threshold sent with --detector"
    )
    p.add_argument(
        "--bbox-score-thr",
        type=float,
        help="drop detections from --boxes scoring below this (default: keep all, "
        "as the MMPose HRNet configs)",
    )
    p.add_argument(
        "--flip-test",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test (pose) / flip TTA (segmentation); default: the card's setting",
    )
    p.add_argument("--ms", action="store_true", help="segmentation: multi-scale TTA (scales=ms)")
    p.add_argument("--seg-mode", choices=("whole", "slide"), help="segmentation inference mode")
    p.add_argument(
        "--no-use-area",
        dest="use_area",
        action="store_false",
        help="COCOeval use_area=False (datasets without 'area')",
    )
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    p.add_argument("--retries", type=int, default=5, help="retries per request (5)")
    p.add_argument(
        "--backoff",
        type=float,
        default=0.5,
        help="first retry delay in seconds, doubled each retry (0.5)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, s (120)")
    p.add_argument(
        "--max-boxes",
        type=int,
        default=100,
        help="boxes per request; more are split over several requests (100)",
    )
    p.add_argument("--out", help="output folder (default runs/eval/<model>_<dataset>)")
    p.add_argument(
        "--restart", action="store_true", help="discard the predictions of a previous run in --out"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="largest accepted |ours - published|, in fraction units (0.01): 0.01 is "
        "1 AP/AR/PCK point; percent metrics (mIoU, mAcc, aAcc) are compared "
        "after dividing by 100, so 0.01 is 1 percentage point there",
    )
    p.add_argument(
        "--reference",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="published values, e.g. AP=0.744 AR=0.798 (override card/registry)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _box_source(args: argparse.Namespace, task: str = "topdown_pose") -> str:
    """``"bottomup"`` (a bottom-up model: no boxes are sent), ``"det"``, ``"detector"`` or
    ``"gt"``. Raises SetupError when boxes are asked for with a bottom-up model."""
    if task == "bottomup_pose":
        if args.boxes or args.detector:
            raise SetupError("bottom-up models take no boxes: drop --boxes / --detector")
        return "bottomup"
    if args.boxes:
        return "det"
    if args.detector:
        return "detector"
    return "gt"


def _run_config(args: argparse.Namespace, box_source: str = "") -> dict:
    cfg = {
        "model": args.model,
        "dataset": args.dataset,
        "images": str(Path(args.images).resolve()),
        "ann": str(Path(args.ann).resolve()) if args.ann else None,
        "flip_test": args.flip_test,
    }
    if args.dataset in POSE_DATASETS:
        cfg.update(
            box_source=box_source or _box_source(args),
            boxes=str(Path(args.boxes).resolve()) if args.boxes else None,
            bbox_score_thr=args.bbox_score_thr,
            clip_boxes=args.clip_boxes,
            detector_model=args.detector_model,
            det_score_thr=args.det_score_thr,
        )
    else:
        cfg.update(ms=args.ms, seg_mode=args.seg_mode)
    return cfg


def _pose_metainfo(dataset: str, card: dict, coco: dict) -> tuple[list[float], list[str]]:
    """OKS sigmas and keypoint names of ``dataset``: from ``service.datasets`` when it knows
    them, else the card's sigmas and the annotation file's (or card's) keypoint names. Sigmas
    may come back empty (Horse-10 defines none)."""
    sigmas: list[float] = []
    names: list[str] = []
    try:
        info = get_pose_dataset(dataset)
        sigmas, names = list(info.sigmas), list(info.keypoint_names)
    except KeyError:
        pass
    if not sigmas and card.get("sigmas"):
        sigmas = [float(s) for s in card["sigmas"]]
    if not names:
        cats = coco.get("categories") or [{}]
        names = list(cats[0].get("keypoints") or card.get("keypoint_names") or [])
    return sigmas, names


class Runner:
    """Sends the work items with bounded concurrency and logs finished images."""

    def __init__(
        self, args: argparse.Namespace, client, log: PredictionLog, card: dict, policy: RetryPolicy
    ) -> None:
        self.args = args
        self.client = client
        self.log = log
        self.card = card
        self.policy = policy
        self.failures: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.new_records: list[dict] = []
        self.sem = asyncio.Semaphore(max(1, args.concurrency))

    def _fail(self, cause: str, key: str, msg: str = "") -> None:
        self.failures[cause] += 1
        self.examples.setdefault(cause, f"{key}: {msg}"[:300])

    async def run(self, items: Sequence[Any], worker) -> None:
        """Run ``worker(item) -> record`` over ``items``, at most ``--concurrency`` at a time,
        with a progress bar; records are appended to the log as they finish, failures counted
        by cause in ``self.failures``."""
        from tqdm import tqdm

        bar = tqdm(
            total=len(items),
            unit="img",
            desc=self.args.model,
            file=sys.stderr,
            disable=self.args.quiet or not items,
            dynamic_ncols=True,
        )

        async def one(item):
            async with self.sem:
                try:
                    rec = await worker(item)
                except RequestFailed as exc:
                    self._fail(exc.cause, item.key, exc.message)
                except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
                    self._fail(type(exc).__name__, item.key, str(exc))
                else:
                    self.log.append(rec)
                    self.new_records.append(rec)
            bar.update(1)
            if self.failures:
                bar.set_postfix(failed=sum(self.failures.values()), refresh=False)

        try:
            await asyncio.gather(*(one(it) for it in items))
        finally:
            bar.close()

    # ---------------------------------------------------------------- pose
    async def pose(self, item: PoseItem) -> dict:
        """``POST /pose`` one image (boxes split into ``--max-boxes`` chunks) and return its
        record ``{"key", "image_id", "persons": [{"id", "bbox_xyxy", "bbox_score",
        "keypoints"}]}``; raises :class:`RequestFailed`."""
        a = self.args
        data = await asyncio.to_thread(item.path.read_bytes)
        step = max(1, a.max_boxes)
        chunks: list[list | None] = (
            [None]
            if item.boxes is None
            else [item.boxes[i : i + step] for i in range(0, len(item.boxes), step)]
        )
        persons: list[dict] = []
        for ci, chunk in enumerate(chunks):
            fields = {"model": a.model}
            if chunk is not None:
                fields["boxes"] = json.dumps(chunk)
                fields["box_format"] = "xyxy"
            else:
                if a.detector_model:
                    fields["detector"] = a.detector_model
                if a.det_score_thr is not None:
                    fields["score_threshold"] = str(a.det_score_thr)
            if a.flip_test is not None:
                fields["flip_test"] = "true" if a.flip_test else "false"
            resp = await post_form(
                self.client,
                "/pose",
                self.policy,
                image_name=item.path.name,
                image_bytes=data,
                fields=fields,
            )
            try:
                got = resp.json()["persons"]
            except (ValueError, KeyError, TypeError) as exc:
                raise RequestFailed("bad_response", str(exc)) from None
            if chunk is not None and len(got) != len(chunk):
                raise RequestFailed(
                    "bad_response", f"{len(got)} persons returned for {len(chunk)} boxes"
                )
            for j, p in enumerate(got):
                if chunk is not None:
                    box = chunk[j][:4]
                    pid = item.box_ids[ci * step + j]
                else:
                    x, y, w, h = (float(v) for v in p["bbox"])
                    box = [x, y, x + w, y + h]
                    pid = j
                persons.append(
                    {
                        "id": pid,
                        "bbox_xyxy": box,
                        "bbox_score": float(p["bbox_score"]),
                        "score": float(p["score"]),
                        "keypoints": p["keypoints"],
                    }
                )
        return {"key": item.key, "image_id": item.image_id, "persons": persons}

    # ---------------------------------------------------------------- segmentation
    async def segment(self, item: SegItem) -> dict:
        """``POST /segment`` one image (``Accept: image/png``), compare the label map with the
        ground truth and return ``{"key", "shape", "counts" (4, C)}``; raises
        :class:`RequestFailed`."""
        import cv2

        from service.metrics import intersect_and_union

        a = self.args
        data = await asyncio.to_thread(item.path.read_bytes)
        fields = {"model": a.model}
        if a.flip_test is not None:
            fields["flip"] = "true" if a.flip_test else "false"
        if a.ms:
            fields["scales"] = "ms"
        if a.seg_mode:
            fields["mode"] = a.seg_mode
        resp = await post_form(
            self.client,
            "/segment",
            self.policy,
            image_name=item.path.name,
            image_bytes=data,
            fields=fields,
            accept="image/png",
        )
        png = resp.content
        if resp.headers.get("content-type", "").startswith("application/json"):
            try:
                png = base64.b64decode(resp.json()["label_png"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RequestFailed("bad_response", str(exc)) from None

        def work():
            pred = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            if pred is None or pred.ndim != 2:
                raise RequestFailed("bad_response", "label map is not a single-channel PNG")
            gt = cv2.imread(str(item.label_path), cv2.IMREAD_UNCHANGED)
            if gt is None or gt.ndim != 2:
                raise RequestFailed("bad_label", f"cannot read {item.label_path}")
            if pred.shape != gt.shape:
                raise RequestFailed(
                    "shape_mismatch", f"prediction {pred.shape} vs label {gt.shape}"
                )
            return intersect_and_union(pred, gt, len(self.card["classes"]), 255), gt.shape

        counts, shape = await asyncio.to_thread(work)
        return {"key": item.key, "shape": list(shape), "counts": counts.tolist()}


async def _fetch_card(client, policy: RetryPolicy, model: str) -> dict:
    try:
        body = await get_json(client, "/models", policy)
    except RequestFailed as exc:
        raise SetupError(f"GET /models failed: {exc}") from None
    cards = body.get("models", []) if isinstance(body, dict) else []
    for c in cards:
        if isinstance(c, dict) and c.get("name") == model:
            return c
    names = [c.get("name") for c in cards if isinstance(c, dict)]
    raise SetupError(f"model {model!r} is not served; the gateway has {names}")


def _prepare_out(args: argparse.Namespace, box_source: str = "") -> Path:
    out = Path(args.out or f"runs/eval/{args.model}_{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = _run_config(args, box_source)
    cfg_path = out / "run.json"
    preds = out / "predictions.jsonl"
    if args.restart and preds.exists():
        preds.unlink()
    if cfg_path.exists() and preds.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except ValueError:
            old = None
        if old is not None and old != cfg:
            diff = {k: (old.get(k), v) for k, v in cfg.items() if old.get(k) != v}
            raise SetupError(
                f"{out} holds predictions of a run with other settings {diff}; "
                "use another --out or --restart"
            )
    atomic_write_json(cfg_path, cfg)
    return out


async def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    refs_cli = parse_reference_args(args.reference)
    pose = args.dataset in POSE_DATASETS
    if pose and not args.ann:
        raise SetupError("--ann (COCO keypoint json) is required for pose datasets")
    if args.dataset in ("horse10",) + PIXEL_ERROR_DATASETS and _box_source(args) != "gt":
        raise SetupError(f"{args.dataset} is evaluated with ground-truth boxes only (--gt-boxes)")

    # dataset files first: fail fast on bad files
    skipped: Counter = Counter()
    if pose:
        coco = load_json(args.ann)
    else:
        items, skipped = build_seg_items(args.images, args.ann, limit=args.limit)
        if not items:
            raise SetupError("nothing to evaluate: no images found")

    policy = RetryPolicy(retries=max(0, args.retries), backoff=max(0.0, args.backoff))
    limits = httpx.Limits(
        max_connections=max(1, args.concurrency), max_keepalive_connections=max(1, args.concurrency)
    )
    async with httpx.AsyncClient(
        base_url=args.url.rstrip("/"),
        timeout=args.timeout,
        limits=limits,
        headers=api_key_headers(args.api_key),
    ) as client:
        card = await _fetch_card(client, policy, args.model)
        want = ("topdown_pose", "bottomup_pose") if pose else ("segmentation",)
        if card.get("task") not in want:
            raise SetupError(
                f"model {args.model!r} is a {card.get('task')} model; "
                f"{args.dataset} needs {' or '.join(want)}"
            )
        if not pose and not card.get("classes"):
            raise SetupError(f"card of {args.model!r} lists no classes")
        source = _box_source(args, card["task"]) if pose else ""
        if pose:
            pose_items, skipped, image_ids = build_pose_items(
                coco,
                args.images,
                args.dataset,
                box_source=source,
                det_file=args.boxes,
                bbox_score_thr=args.bbox_score_thr,
                limit=args.limit,
                clip_gt_boxes=args.clip_boxes,
            )
            items = pose_items
            if not items:
                raise SetupError("nothing to evaluate: no images (or no boxes) found")
        out = _prepare_out(args, source)

        with PredictionLog(out / "predictions.jsonl") as log:
            done = log.load()
            todo = [it for it in items if it.key not in done]
            print(
                f"hrnet-eval: {args.model} on {args.dataset}: {len(items)} images, "
                f"{len(items) - len(todo)} already done in {out}, {len(todo)} to send",
                file=sys.stderr,
            )
            runner = Runner(args, client, log, card, policy)
            t_send = time.perf_counter()
            await runner.run(todo, runner.pose if pose else runner.segment)
            send_s = time.perf_counter() - t_send
            done.update({r["key"]: r for r in runner.new_records})

    keys = [it.key for it in items]
    records = [done[k] for k in keys if k in done]
    n_failed = sum(runner.failures.values())
    summary = {
        "images": len(items),
        "evaluated": len(records),
        "sent": len(todo),
        "failed": n_failed,
        "failures": dict(runner.failures),
        "failure_examples": runner.examples,
        "skipped_boxes": dict(skipped),
        "retries": dict(runner.policy.stats),
        "log": {
            "torn_bytes": log.torn_bytes,
            "bad_lines": log.bad_lines,
            "duplicates": log.duplicates,
        },
        "send_seconds": round(send_s, 3),
        "images_per_second": round(len(todo) / send_s, 3) if send_s > 0 and todo else None,
    }
    if n_failed:
        print(f"hrnet-eval: {n_failed} image(s) failed:", file=sys.stderr)
        for cause, n in runner.failures.most_common():
            print(f"  {n:6d}  {cause}   e.g. {runner.examples.get(cause, '')}", file=sys.stderr)
    if skipped:
        print(
            "hrnet-eval: boxes not sent: " + ", ".join(f"{k}={v}" for k, v in skipped.items()),
            file=sys.stderr,
        )
    if not records:
        raise SetupError("no image was evaluated successfully")

    # metrics
    if pose:
        k_model = next((len(r["persons"][0]["keypoints"]) for r in records if r["persons"]), None)
        if k_model is None:
            raise SetupError("the gateway returned no person at all")
        sigmas, ds_names = _pose_metainfo(args.dataset, card, coco)
        k_ds = len(sigmas) if sigmas else (len(ds_names) or k_model)
        served = card.get("keypoint_names") or []
        if card.get("output_keypoint_indices") is not None:  # e.g. COCO-AIC combine: COCO's 17
            served = [served[i] for i in card["output_keypoint_indices"]]
        sel = None if k_model == k_ds else keypoint_selection(served, ds_names)
        if args.dataset == "horse10":
            metrics, results = evaluate_horse10(records, coco, keypoint_index=sel)
            kind = "horse10"
        elif args.dataset in PIXEL_ERROR_DATASETS:
            metrics, results = evaluate_pixel_error(records, coco, keypoint_index=sel)
            kind = "pixel"
        else:
            if not sigmas:
                raise SetupError(
                    f"no OKS sigmas for dataset {args.dataset!r} (service.datasets or the card)"
                )
            # COCOeval scores every image of its image set: a failed image left in it would
            # count its people as misses. Score the evaluated images only (those of --limit,
            # less the failed ones); images with no box to send stay in (nothing was asked).
            failed_ids = {it.image_id for it in pose_items if it.key not in done}
            eval_ids: list | None = None
            if failed_ids:
                eval_ids = [i for i in image_ids if i not in failed_ids]
            elif args.limit is not None:
                eval_ids = list(image_ids)
            summary["scored_images"] = len(eval_ids if eval_ids is not None else coco["images"])
            if source == "bottomup":
                metrics, results = evaluate_coco_bottomup(
                    records,
                    coco,
                    sigmas,
                    keypoint_index=sel,
                    image_ids=eval_ids,
                    use_area=args.use_area,
                )
            else:
                metrics, results = evaluate_coco_style(
                    records,
                    coco,
                    sigmas,
                    input_size=card.get("input_size") or (192, 256),
                    padding=float(card.get("bbox_padding", 1.25)),
                    keypoint_index=sel,
                    image_ids=eval_ids,
                    use_area=args.use_area,
                    gt_boxes=source == "gt",
                )
            kind = "coco"
        results_obj: Any = results
    else:
        seg = evaluate_segmentation(records, len(card["classes"]), card["classes"])
        metrics = {k: seg[k] for k in ("aAcc", "mIoU", "mAcc")}
        results_obj = {"IoU": seg["IoU"], "Acc": seg["Acc"]}
        kind = "seg"

    refs, origin = gather_references(
        args.model, card, refs_cli, ms_flip=(not pose) and args.ms and bool(args.flip_test)
    )
    rows, all_ok = compare(metrics, refs, kind, args.tolerance)
    atomic_write_json(out / "results.json", results_obj, indent=None)
    atomic_write_json(
        out / "metrics.json",
        {
            "model": args.model,
            "dataset": args.dataset,
            "config": _run_config(args, source),
            "metrics": metrics,
            "references": refs,
            "reference_origin": origin,
            "comparison": rows,
            "tolerance": args.tolerance,
            "tolerance_unit": "fraction",
            "within_tolerance": all_ok,
            "complete": n_failed == 0,
            "summary": summary,
            "wall_seconds": round(time.perf_counter() - t0, 3),
        },
    )

    src = (
        {
            "gt": "ground-truth boxes",
            "det": f"boxes from {args.boxes}",
            "detector": "the service's detector",
            "bottomup": "bottom-up, no boxes",
        }.get(source, "")
        if pose
        else (
            "ms+flip"
            if args.ms and args.flip_test
            else "ms"
            if args.ms
            else "flip"
            if args.flip_test
            else "single scale"
        )
    )
    print(
        f"\n{args.model} on {args.dataset} ({len(records)}/{len(items)} images, {src}; "
        f"published from {', '.join(sorted(set(origin.values()))) or 'nowhere'})"
    )
    print(format_table(rows, args.tolerance))
    if summary["images_per_second"]:
        print(
            f"sent {len(todo)} images in {send_s:.1f} s ({summary['images_per_second']:.2f} "
            "images/s)"
        )
    print(f"results: {out / 'metrics.json'}")
    if n_failed:
        return EXIT_INCOMPLETE
    return EXIT_OK if all_ok else EXIT_TOLERANCE


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return asyncio.run(_run(args))
    except (SetupError, DataError, ValueError) as exc:
        print(f"hrnet-eval: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hrnet-eval: interrupted; re-run with the same --out to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
