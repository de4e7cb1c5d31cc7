"""Animal keypoint datasets: Horse-10 (22), MacaquePose (17), ATRW tigers (15), DeepLabCut's
open-field mouse (4).

Facts from MMPose ``configs/_base_/datasets/horse10.py``, ``macaque.py`` and ``atrw.py`` (identical
in the 0.x and 1.x branches): keypoint order, mirrors (``swap``), OKS sigmas, skeleton links and
drawing colours (RGB).

Horse-10 names are side-of-camera ("Near"/"Off"), not anatomical left/right, and upstream gives no
``swap`` for any of them: its flip permutation is the identity. It also defines no OKS sigmas (its
benchmark metrics are PCK@0.3 and NME), so ``HORSE10.sigmas`` is empty.
MacaquePose uses the COCO keypoint order and COCO sigmas; ATRW has its own 15 sigmas.
"""

from __future__ import annotations

from .coco import COCO_KEYPOINTS, COCO_LINKS
from .info import KeypointRow, LinkRow, PoseDatasetInfo

# (name, mirror or None, OKS sigma or None, RGB colour), in heatmap-channel order.
HORSE10_KEYPOINTS: tuple[KeypointRow, ...] = (
    ("Nose", None, None, (255, 153, 255)),
    ("Eye", None, None, (255, 153, 255)),
    ("Nearknee", None, None, (255, 102, 255)),
    ("Nearfrontfetlock", None, None, (255, 102, 255)),
    ("Nearfrontfoot", None, None, (255, 102, 255)),
    ("Offknee", None, None, (255, 102, 255)),
    ("Offfrontfetlock", None, None, (255, 102, 255)),
    ("Offfrontfoot", None, None, (255, 102, 255)),
    ("Shoulder", None, None, (255, 153, 255)),
    ("Midshoulder", None, None, (255, 153, 255)),
    ("Elbow", None, None, (255, 153, 255)),
    ("Girth", None, None, (255, 153, 255)),
    ("Wither", None, None, (255, 153, 255)),
    ("Nearhindhock", None, None, (255, 51, 255)),
    ("Nearhindfetlock", None, None, (255, 51, 255)),
    ("Nearhindfoot", None, None, (255, 51, 255)),
    ("Hip", None, None, (255, 153, 255)),
    ("Stifle", None, None, (255, 153, 255)),
    ("Offhindhock", None, None, (255, 51, 255)),
    ("Offhindfetlock", None, None, (255, 51, 255)),
    ("Offhindfoot", None, None, (255, 51, 255)),
    ("Ischium", None, None, (255, 153, 255)),
)
HORSE10_LINKS: tuple[LinkRow, ...] = (
    ("Nose", "Eye", (255, 153, 255)),
    ("Eye", "Wither", (255, 153, 255)),
    ("Wither", "Hip", (255, 153, 255)),
    ("Hip", "Ischium", (255, 153, 255)),
    ("Ischium", "Stifle", (255, 153, 255)),
    ("Stifle", "Girth", (255, 153, 255)),
    ("Girth", "Elbow", (255, 153, 255)),
    ("Elbow", "Shoulder", (255, 153, 255)),
    ("Shoulder", "Midshoulder", (255, 153, 255)),
    ("Midshoulder", "Wither", (255, 153, 255)),
    ("Nearknee", "Nearfrontfetlock", (255, 102, 255)),
    ("Nearfrontfetlock", "Nearfrontfoot", (255, 102, 255)),
    ("Offknee", "Offfrontfetlock", (255, 102, 255)),
    ("Offfrontfetlock", "Offfrontfoot", (255, 102, 255)),
    ("Nearhindhock", "Nearhindfetlock", (255, 51, 255)),
    ("Nearhindfetlock", "Nearhindfoot", (255, 51, 255)),
    ("Offhindhock", "Offhindfetlock", (255, 51, 255)),
    ("Offhindfetlock", "Offhindfoot", (255, 51, 255)),
)

# MacaquePose uses COCO's 17 keypoints, sigmas and links unchanged (MMPose macaque.py).
MACAQUE_KEYPOINTS: tuple[KeypointRow, ...] = COCO_KEYPOINTS
MACAQUE_LINKS: tuple[LinkRow, ...] = COCO_LINKS

ATRW_KEYPOINTS: tuple[KeypointRow, ...] = (
    ("left_ear", "right_ear", 0.0277, (51, 153, 255)),
    ("right_ear", "left_ear", 0.0823, (51, 153, 255)),
    ("nose", None, 0.0831, (51, 153, 255)),
    ("right_shoulder", "left_shoulder", 0.0202, (255, 128, 0)),
    ("right_front_paw", "left_front_paw", 0.0716, (255, 128, 0)),
    ("left_shoulder", "right_shoulder", 0.0263, (0, 255, 0)),
    ("left_front_paw", "right_front_paw", 0.0646, (0, 255, 0)),
    ("right_hip", "left_hip", 0.0302, (255, 128, 0)),
    ("right_knee", "left_knee", 0.044, (255, 128, 0)),
    ("right_back_paw", "left_back_paw", 0.0316, (255, 128, 0)),
    ("left_hip", "right_hip", 0.0333, (0, 255, 0)),
    ("left_knee", "right_knee", 0.0547, (0, 255, 0)),
    ("left_back_paw", "right_back_paw", 0.0263, (0, 255, 0)),
    ("tail", None, 0.0683, (51, 153, 255)),
    ("center", None, 0.0539, (51, 153, 255)),
)
ATRW_LINKS: tuple[LinkRow, ...] = (
    ("left_ear", "nose", (51, 153, 255)),
    ("right_ear", "nose", (51, 153, 255)),
    ("nose", "center", (51, 153, 255)),
    ("left_shoulder", "left_front_paw", (0, 255, 0)),
    ("left_shoulder", "center", (0, 255, 0)),
    ("right_shoulder", "right_front_paw", (255, 128, 0)),
    ("right_shoulder", "center", (255, 128, 0)),
    ("tail", "center", (51, 153, 255)),
    ("right_back_paw", "right_knee", (255, 128, 0)),
    ("right_knee", "right_hip", (255, 128, 0)),
    ("right_hip", "tail", (255, 128, 0)),
    ("left_back_paw", "left_knee", (0, 255, 0)),
    ("left_knee", "left_hip", (0, 255, 0)),
    ("left_hip", "tail", (0, 255, 0)),
)

# DeepLabCut's open-field example (``examples/openfield-Pranav-2018-10-30``, ``config.yaml``
# ``bodyparts``): a top-view mouse; the ears mirror each other. DeepLabCut defines no OKS sigmas
# (its metric is the pixel error), so none are given; the links are for drawing only.
DLC_OPENFIELD_KEYPOINTS: tuple[KeypointRow, ...] = (
    ("snout", None, None, (255, 0, 0)),
    ("leftear", "rightear", None, (0, 255, 0)),
    ("rightear", "leftear", None, (255, 128, 0)),
    ("tailbase", None, None, (0, 0, 255)),
)
DLC_OPENFIELD_LINKS: tuple[LinkRow, ...] = (
    ("snout", "leftear", (0, 255, 0)),
    ("snout", "rightear", (255, 128, 0)),
    ("leftear", "tailbase", (0, 255, 0)),
    ("rightear", "tailbase", (255, 128, 0)),
)

HORSE10 = PoseDatasetInfo.from_rows(
    "horse10", HORSE10_KEYPOINTS, HORSE10_LINKS, source="mmpose configs/_base_/datasets/horse10.py"
)
MACAQUE = PoseDatasetInfo.from_rows(
    "macaque", MACAQUE_KEYPOINTS, MACAQUE_LINKS, source="mmpose configs/_base_/datasets/macaque.py"
)
ATRW = PoseDatasetInfo.from_rows(
    "atrw", ATRW_KEYPOINTS, ATRW_LINKS, source="mmpose configs/_base_/datasets/atrw.py"
)

DLC_OPENFIELD = PoseDatasetInfo.from_rows(
    "dlc_openfield",
    DLC_OPENFIELD_KEYPOINTS,
    DLC_OPENFIELD_LINKS,
    source="DeepLabCut examples/openfield-Pranav-2018-10-30/config.yaml",
)

POSE_DATASETS = (HORSE10, MACAQUE, ATRW, DLC_OPENFIELD)
