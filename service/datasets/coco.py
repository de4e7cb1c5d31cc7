"""COCO person keypoints (17) and the COCO + AI Challenger union (19).

Facts from MMPose 1.x ``configs/_base_/datasets/coco.py`` and ``coco_aic.py``: keypoint order,
each keypoint's mirror (``swap``), OKS sigmas, skeleton links and drawing colours (RGB).

``coco_aic`` is the keypoint set of the *combine* model
``td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-combine``: its head outputs 19 heatmaps (the 17 COCO
keypoints, then AIC's ``head_top`` and ``neck``), and its ``test_cfg.output_keypoint_indices``
keeps channels 0..16 at inference, so its published COCO AP is on the 17 COCO keypoints.
The *merge* model (``...-merge``) is trained with AIC keypoints mapped into COCO's 17 and outputs
plain COCO-17 (dataset ``coco``).
"""

from __future__ import annotations

from .info import KeypointRow, LinkRow, PoseDatasetInfo

# (name, mirror or None, OKS sigma, RGB colour), in heatmap-channel order.
COCO_KEYPOINTS: tuple[KeypointRow, ...] = (
    ("nose", None, 0.026, (51, 153, 255)),
    ("left_eye", "right_eye", 0.025, (51, 153, 255)),
    ("right_eye", "left_eye", 0.025, (51, 153, 255)),
    ("left_ear", "right_ear", 0.035, (51, 153, 255)),
    ("right_ear", "left_ear", 0.035, (51, 153, 255)),
    ("left_shoulder", "right_shoulder", 0.079, (0, 255, 0)),
    ("right_shoulder", "left_shoulder", 0.079, (255, 128, 0)),
    ("left_elbow", "right_elbow", 0.072, (0, 255, 0)),
    ("right_elbow", "left_elbow", 0.072, (255, 128, 0)),
    ("left_wrist", "right_wrist", 0.062, (0, 255, 0)),
    ("right_wrist", "left_wrist", 0.062, (255, 128, 0)),
    ("left_hip", "right_hip", 0.107, (0, 255, 0)),
    ("right_hip", "left_hip", 0.107, (255, 128, 0)),
    ("left_knee", "right_knee", 0.087, (0, 255, 0)),
    ("right_knee", "left_knee", 0.087, (255, 128, 0)),
    ("left_ankle", "right_ankle", 0.089, (0, 255, 0)),
    ("right_ankle", "left_ankle", 0.089, (255, 128, 0)),
)
COCO_LINKS: tuple[LinkRow, ...] = (
    ("left_ankle", "left_knee", (0, 255, 0)),
    ("left_knee", "left_hip", (0, 255, 0)),
    ("right_ankle", "right_knee", (255, 128, 0)),
    ("right_knee", "right_hip", (255, 128, 0)),
    ("left_hip", "right_hip", (51, 153, 255)),
    ("left_shoulder", "left_hip", (51, 153, 255)),
    ("right_shoulder", "right_hip", (51, 153, 255)),
    ("left_shoulder", "right_shoulder", (51, 153, 255)),
    ("left_shoulder", "left_elbow", (0, 255, 0)),
    ("right_shoulder", "right_elbow", (255, 128, 0)),
    ("left_elbow", "left_wrist", (0, 255, 0)),
    ("right_elbow", "right_wrist", (255, 128, 0)),
    ("left_eye", "right_eye", (51, 153, 255)),
    ("nose", "left_eye", (51, 153, 255)),
    ("nose", "right_eye", (51, 153, 255)),
    ("left_eye", "left_ear", (51, 153, 255)),
    ("right_eye", "right_ear", (51, 153, 255)),
    ("left_ear", "left_shoulder", (51, 153, 255)),
    ("right_ear", "right_shoulder", (51, 153, 255)),
)

# AIC adds two midline keypoints after the COCO 17; upstream gives both sigma 0.026.
COCO_AIC_KEYPOINTS: tuple[KeypointRow, ...] = COCO_KEYPOINTS + (
    ("head_top", None, 0.026, (51, 153, 255)),
    ("neck", None, 0.026, (51, 153, 255)),
)
COCO_AIC_LINKS: tuple[LinkRow, ...] = COCO_LINKS + (("head_top", "neck", (51, 153, 255)),)

COCO = PoseDatasetInfo.from_rows(
    "coco", COCO_KEYPOINTS, COCO_LINKS, source="mmpose configs/_base_/datasets/coco.py"
)
COCO_AIC = PoseDatasetInfo.from_rows(
    "coco_aic",
    COCO_AIC_KEYPOINTS,
    COCO_AIC_LINKS,
    source="mmpose configs/_base_/datasets/coco_aic.py",
)

POSE_DATASETS = (COCO, COCO_AIC)
