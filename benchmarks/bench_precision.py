"""``hrnet-bench --models A,B [--eager-arch ARCH]``: fp32 vs reduced-precision ``/pose`` on the
4 shared COCO photos, with MMPose's way as the baseline, all in one run.

Rows (one client, the photo's det-json boxes scoring >= 0.3: 33 crops over 4 photos, flip on and
off):

* each model of ``--models`` served by one gateway (``/pose``, the whole request: decode, crops,
  inference, heatmap decoding, JSON), or each ``BACKEND:MODEL`` of ``--variants`` served by a
  gateway process of that backend and precision (:func:`parse_variant`: ``ort``, ``openvino``,
  ``openvino-bf16``, ...), all gateways started before the first measurement;
* ``eager``: the same network in PyTorch eager mode (``training.models.create_model(ARCH)`` with the
  fixed-seed random weights and BatchNorm calibration that ``hrnet-export --random-init`` uses),
  one forward per photo (all its crops, plus their flips, in one batch: MMPose's
  ``inference_topdown``), with the gateway's own crop and decoding code around it, in this process.

The variants take turns photo by photo for ``--rounds`` rounds, so load changes on a shared machine
hit them alike; every figure is crops/s and its ratio to the first model (``x first``) and to the
eager baseline (``x eager``), measured side by side in one invocation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import httpx
import numpy as np

from service.cards import TopDownCard
from service.geometry import bbox_xywh2xyxy
from service.pipelines.topdown import decode_outputs, prepare_inputs

#: heatmaps = runner(network input (N, 3, h, w) float32)
Runner = Callable[[np.ndarray], np.ndarray]

#: backend spec of ``--variants`` -> the gateway's environment (HRNET_* settings)
BACKENDS: dict[str, dict[str, str]] = {
    "ort": {"HRNET_BACKEND": "onnxruntime"},
    "onnxruntime": {"HRNET_BACKEND": "onnxruntime"},
    "openvino": {"HRNET_BACKEND": "openvino", "HRNET_OPENVINO_PRECISION": "f32"},
    **{
        f"openvino-{p}": {"HRNET_BACKEND": "openvino", "HRNET_OPENVINO_PRECISION": p}
        for p in ("f32", "bf16", "f16")
    },
}


@dataclass(frozen=True)
class Variant:
    """One measured row: ``label`` in the table, served as ``model`` by the gateway at ``url``."""

    label: str
    url: str
    model: str


def parse_variant(spec: str) -> tuple[str, dict[str, str], str]:
    """``"openvino-bf16:NAME"`` -> ``(backend spec, gateway environment, model NAME)``; a spec
    without ``:`` is a model of the default gateway (``("", {}, spec)``). Raises ValueError for a
    backend not in :data:`BACKENDS`."""
    if ":" not in spec:
        return "", {}, spec
    backend, model = spec.split(":", 1)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in {spec!r}: one of {', '.join(BACKENDS)}")
    return backend, BACKENDS[backend], model


@dataclass
class Tally:
    """Seconds and crops accumulated by one variant (``name``) at one flip setting."""

    name: str
    flip: bool
    seconds: float = 0.0
    crops: int = 0
    requests: int = 0
    per_request_s: list[float] = field(default_factory=list)

    def add(self, seconds: float, crops: int) -> None:
        """Count one request (or one eager photo) of ``crops`` crops that took ``seconds``."""
        self.seconds += seconds
        self.crops += crops
        self.requests += 1
        self.per_request_s.append(seconds)

    @property
    def crops_per_s(self) -> float:
        """Crops per second over the measured requests (NaN before any)."""
        return self.crops / self.seconds if self.seconds > 0 else float("nan")


def eager_runner(arch: str, seed: int = 0, device: str = "cpu") -> Runner:
    """PyTorch eager forward of registry model ``arch`` with the weights of ``hrnet-export --arch
    ARCH --random-init --seed SEED`` (``create_model(seed)`` then the same BatchNorm calibration on
    random input), so it is the network the exported fp32 ONNX holds. Needs torch ([train])."""
    import torch

    from export.onnx_export import calibrate_batchnorm
    from training.models import create_model
    from training.registry import get_entry

    entry = get_entry(arch)
    if entry.input_size is None:
        raise ValueError(f"{arch}: no fixed input size (not a top-down model)")
    w, h = entry.input_size
    model = create_model(entry.name, seed=seed)
    calibrate_batchnorm(model, (2, 3, int(h), int(w)), seed=seed)
    model.eval().to(device)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


def eager_pose(
    image_bytes: bytes,
    boxes_xywh: Sequence[Sequence[float]],
    card: TopDownCard,
    runner: Runner,
    flip: bool,
) -> np.ndarray:
    """One photo the MMPose way: decode, crop every box, one forward of the photo's crops (and
    their flips), decode the heatmaps; returns keypoints ``(N, K, 2)`` image pixels."""
    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    b = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
    xyxy = bbox_xywh2xyxy(b)
    centers, scales, x = prepare_inputs(image, xyxy, card, flip)
    kpts, _, _ = decode_outputs(
        runner(x), len(b), centers, scales, np.ones(len(b), np.float32), card, flip
    )
    return kpts


def compare(
    url: str | None,
    models: Sequence[str | Variant],
    jobs: Sequence[tuple[str, bytes, list]],
    flips: Sequence[bool],
    rounds: int,
    *,
    eager: tuple[TopDownCard, Runner] | None = None,
    warmup: int = 1,
    headers: dict | None = None,
) -> list[Tally]:
    """Time every variant photo by photo, in turns, for ``rounds`` rounds after ``warmup``.

    ``jobs``: ``(file name, JPEG bytes, boxes xywh)`` per photo; ``models``: names served at
    ``url``, or :class:`Variant` rows (their own gateway and model, named by their label);
    ``eager``: ``(card, runner)`` of the in-process baseline. Returns one :class:`Tally` per
    (variant, flip), models first in the given order, then ``eager``. Raises
    ``httpx.HTTPStatusError`` when the gateway answers an error.
    """
    import json

    variants = {
        v.label: v
        for v in (m if isinstance(m, Variant) else Variant(m, url or "", m) for m in models)
    }
    names = list(variants) + (["eager"] if eager else [])
    tallies = {(n, f): Tally(n, f) for f in flips for n in names}
    with httpx.Client(timeout=300, headers=headers or {}) as client:
        for r in range(warmup + rounds):
            for flip in flips:
                for file_name, data, boxes in jobs:
                    for name in names:
                        t0 = time.perf_counter()
                        if name == "eager" and eager is not None:
                            eager_pose(data, boxes, eager[0], eager[1], flip)
                        else:
                            v = variants[name]
                            resp = client.post(
                                f"{v.url}/pose",
                                files={"image": (file_name, data)},
                                data={
                                    "model": v.model,
                                    "flip_test": str(flip).lower(),
                                    "boxes": json.dumps(boxes),
                                },
                            )
                            resp.raise_for_status()
                        if r >= warmup:
                            tallies[(name, flip)].add(time.perf_counter() - t0, len(boxes))
    return list(tallies.values())


def format_table(tallies: Sequence[Tally]) -> list[str]:
    """Table lines: variant, flip, requests, crops, crops/s, ratio to the first variant of the
    same flip setting (``x first``) and to ``eager`` (``x eager``; NaN without it)."""
    lines = [
        f"{'variant':>28} {'flip':>5} {'reqs':>5} {'crops':>6} {'crops/s':>8} "
        f"{'x first':>7} {'x eager':>7} {'median req s':>12}"
    ]
    for t in tallies:
        same = [u for u in tallies if u.flip == t.flip]
        first = same[0].crops_per_s
        eager = next((u.crops_per_s for u in same if u.name == "eager"), float("nan"))
        med = float(np.median(t.per_request_s)) if t.per_request_s else float("nan")
        lines.append(
            f"{t.name:>28} {str(t.flip):>5} {t.requests:>5} {t.crops:>6} "
            f"{t.crops_per_s:8.2f} {t.crops_per_s / first:7.2f} "
            f"{t.crops_per_s / eager:7.2f} {med:12.3f}"
        )
    return lines


__all__ = [
    "BACKENDS",
    "Runner",
    "Tally",
    "Variant",
    "compare",
    "eager_pose",
    "eager_runner",
    "format_table",
    "parse_variant",
]
