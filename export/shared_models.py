"""Cards for the two real ONNX models in ``../shared/models`` and their registration.

* ``pp_tinypose_256x192`` — PP-TinyPose 256x192 (PaddleDetection, Lite-HRNet backbone), a top-down
  COCO-17 heatmap model. Graph: input ``image`` float32 ``[N, 3, 256, 192]`` (RGB, ImageNet
  mean/std on 0..255), output ``heatmaps`` float32 ``[N, 17, 64, 48]``, COCO keypoint order.
  Served with the standard MMPose top-down path: padding 1.25, ``TopdownAffine`` (no UDP),
  ``MSRAHeatmap`` input (192, 256) / heatmap (48, 64), sigma 2, flip test with shifted heatmaps.
  ``unbiased=True`` (DARK): PaddleDetection's own ``HRNetPostProcess`` defaults to
  ``use_dark=True`` for this model, and the shared README's reference table shows flip + DARK
  best on the larger ``coco_mini`` set (AP 0.5880 vs 0.5743 flip only; mean OKS better on both
  sets).
* ``rtmdet_nano_person_320`` — RTMDet-nano person detector exported by MMDeploy with NMS in the
  graph. Graph: input ``input`` float32 ``[N, 3, H, W]`` (used at 320x320; BGR, keep-ratio resize,
  pad 114, mean ``(103.53, 116.28, 123.675)`` std ``(57.375, 57.12, 58.395)``), outputs ``dets``
  float32 ``[N, 100, 5]`` (x1, y1, x2, y2, score in padded-input pixels) and ``labels`` int64
  ``[N, 100]``. The graph only runs with batch 1 (its NMS ``Where`` node fails to broadcast for
  N > 1, checked with ONNX Runtime), so its card has ``max_batch_size = 1``.

The file names/paths are never hard-coded to a machine: the shared folder is an argument (the CLI
takes ``--shared-dir`` / ``HRNET_SHARED_DIR``, default ``../shared`` beside the project root).
Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.cards import (
    CodecSpec,
    DetectorCard,
    DetectorSpec,
    ModelCard,
    Normalization,
    SourceSpec,
    TensorSpec,
    TopDownCard,
)
from service.datasets import get_pose_dataset

from .cards import BBOX_PADDING, IMAGENET_RGB

PP_TINYPOSE = "pp_tinypose_256x192"
RTMDET_NANO = "rtmdet_nano_person_320"

#: model name -> file name under ``<shared>/models/``
SHARED_MODEL_FILES = {
    PP_TINYPOSE: "pp_tinypose_256x192.onnx",
    RTMDET_NANO: "rtmdet_nano_person_320.onnx",
}

#: MMDeploy RTMDet preprocessing (mmpose ``projects/rtmpose`` RTMDet-nano config): BGR order.
RTMDET_BGR = Normalization(
    mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="bgr"
)


def pp_tinypose_card(name: str = PP_TINYPOSE) -> ModelCard:
    """Card of ``pp_tinypose_256x192.onnx`` (see the module docstring for every choice).

    Input ``image`` FP32 ``[3, 256, 192]``; output ``heatmaps`` FP32 ``[17, 64, 48]``; COCO
    metainfo from :func:`service.datasets.get_pose_dataset`.
    """
    coco = get_pose_dataset("coco")
    return TopDownCard(
        name=name,
        task="topdown_pose",
        input_size=(192, 256),
        inputs=[TensorSpec(name="image", dtype="FP32", dims=[3, 256, 192])],
        outputs=[TensorSpec(name="heatmaps", dtype="FP32", dims=[17, 64, 48])],
        max_batch_size=32,
        normalization=IMAGENET_RGB,
        codec=CodecSpec(
            type="MSRAHeatmap",
            input_size=(192, 256),
            heatmap_size=(48, 64),
            sigma=2.0,
            unbiased=True,
            blur_kernel_size=11,
        ),
        bbox_padding=BBOX_PADDING,
        use_udp=False,
        flip_test=True,
        shift_heatmap=True,
        keypoint_names=list(coco.keypoint_names),
        skeleton=[(int(a), int(b)) for a, b in coco.skeleton],
        flip_indices=[int(i) for i in coco.flip_indices],
        sigmas=[float(s) for s in coco.sigmas],
        dataset="coco",
        source=SourceSpec(
            arch="PP-TinyPose (Lite-HRNet) 256x192",
            config="PaddleDetection configs/keypoint/tiny_pose/tinypose_256x192.yml",
            checkpoint=SHARED_MODEL_FILES[PP_TINYPOSE],
            notes=(
                "PaddleDetection (Apache-2.0), converted to ONNX fp32 opset 13. Decoding: "
                "DARK (PaddleDetection HRNetPostProcess use_dark=True); flip test with "
                "shifted heatmaps."
            ),
        ),
    )


def rtmdet_nano_card(name: str = RTMDET_NANO) -> ModelCard:
    """Card of ``rtmdet_nano_person_320.onnx``: task ``detection``.

    Input ``input`` FP32 ``[3, 320, 320]``; outputs ``dets`` FP32 ``[-1, 5]`` and ``labels``
    INT64 ``[-1]`` (``-1``: the number of kept boxes, 100 in this graph); BGR normalisation;
    :class:`DetectorSpec` pad value 114, person label 0, at most 100 detections;
    ``max_batch_size = 1`` (the graph's NMS rejects larger batches).
    """
    return DetectorCard(
        name=name,
        task="detection",
        input_size=(320, 320),
        inputs=[TensorSpec(name="input", dtype="FP32", dims=[3, 320, 320])],
        outputs=[
            TensorSpec(name="dets", dtype="FP32", dims=[-1, 5]),
            TensorSpec(name="labels", dtype="INT64", dims=[-1]),
        ],
        max_batch_size=1,
        normalization=RTMDET_BGR,
        detector=DetectorSpec(
            score_threshold=0.3,
            pad_value=114.0,
            person_label=0,
            max_detections=100,
            nms_threshold=0.3,
        ),
        source=SourceSpec(
            arch="RTMDet-nano (person)",
            config="mmpose projects/rtmpose rtmdet_nano_320-8xb32_coco-person.py (MMDeploy)",
            checkpoint=SHARED_MODEL_FILES[RTMDET_NANO],
            notes=(
                "Exported by MMDeploy with NMS in the graph (Apache-2.0). Keep-ratio resize "
                "to 320x320, pad with 114; boxes in padded-input pixels. Batch 1 only."
            ),
        ),
    )


SHARED_CARDS = {PP_TINYPOSE: pp_tinypose_card, RTMDET_NANO: rtmdet_nano_card}


def shared_model_path(shared_dir: Path | str, name: str) -> Path:
    """``<shared_dir>/models/<file>`` for shared model ``name``; raises ``KeyError`` for an
    unknown name and ``FileNotFoundError`` if the file is absent."""
    path = Path(shared_dir) / "models" / SHARED_MODEL_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"shared model {name!r} not found at {path}")
    return path


def register_shared_models(
    shared_dir: Path | str, repo_dir: Path | str, **config_kw: Any
) -> dict[str, Path]:
    """Write repository entries for both shared models (copying the ONNX files, ~9 MB).

    ``config_kw`` go to :func:`export.repository.write_entry` / the Triton config (e.g.
    ``instance_kind="KIND_CPU"``; a ``max_batch_size`` given here is NOT applied to the
    detector, which only runs at batch 1). Returns ``{name: entry folder}``. Raises
    ``FileNotFoundError`` for a missing file, :class:`export.onnx_export.ExportError` if a card
    does not match its graph.
    """
    from .repository import write_entry

    written = {}
    for name, make in SHARED_CARDS.items():
        kw = dict(config_kw)
        if name == RTMDET_NANO:
            kw.pop("max_batch_size", None)
            kw.pop("preferred_batch_sizes", None)
        written[name] = write_entry(
            repo_dir, name, shared_model_path(shared_dir, name), make(), **kw
        )
    return written


__all__ = [
    "PP_TINYPOSE",
    "RTMDET_NANO",
    "SHARED_CARDS",
    "SHARED_MODEL_FILES",
    "pp_tinypose_card",
    "register_shared_models",
    "rtmdet_nano_card",
    "shared_model_path",
]
