"""Model-zoo registry (training.registry): integrity, upstream facts, lookup API.

Spot-check values were read off the upstream model-zoo tables by hand (MMPose
``configs/body_2d_keypoint/topdown_heatmap/coco/hrnet_coco.md``, ``hrnet_coco_aic.md``, MMPose 0.x
``hrnet_horse10.md``, MMSeg ``configs/hrnet/README.md``); geometry expectations are arithmetic
(heatmap = input / 4, HxW -> (w, h)).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from service.datasets import get_pose_dataset, get_seg_dataset
from training import registry
from training.registry import (
    COCO_METRIC_KEYS,
    HORSE10_METRIC_KEYS,
    SEG_METRIC_KEYS,
    ModelEntry,
    get_entry,
    list_entries,
    register,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# rows per upstream table
POSE_TABLES = {
    "hrnet_coco": 4,
    "hrnet_fp16_coco": 1,
    "hrnet_augmentation_coco": 3,
    "hrnet_coco_aic": 2,
    "hrnet_dark_coco": 4,
    "hrnet_udp_coco": 4,
    "hrnet_horse10": 6,
    "hrnet_macaque": 2,
    "hrnet_atrw": 2,
    "project": 1,
}
SEG_TABLE = {"cityscapes": 9, "ade20k": 6, "voc": 6, "pascal_context": 2, "pascal_context_59": 2}


def _table_of(e: ModelEntry) -> str:
    n = e.name
    if not e.url:  # project rows (hrnet-train recipes), no upstream table
        return "project"
    if e.upstream == "mmpose-0.x" and e.dataset != "coco":  # the 0.x animal tables
        return f"hrnet_{e.dataset}"
    if "coco-aic" in n:
        return "hrnet_coco_aic"
    for key, table in (
        ("_dark-", "hrnet_dark_coco"),
        ("_udp-", "hrnet_udp_coco"),
        ("_fp16-", "hrnet_fp16_coco"),
        ("_coarsedropout-", "hrnet_augmentation_coco"),
        ("_gridmask-", "hrnet_augmentation_coco"),
        ("_photometric-", "hrnet_augmentation_coco"),
    ):
        if key in n:
            return table
    return "hrnet_coco"


# ------------------------------------------------------------------------------------ counts


def test_counts_per_table():
    pose = list_entries(task="topdown_pose")
    seg = list_entries(task="segmentation")
    assert Counter(_table_of(e) for e in pose) == POSE_TABLES
    assert Counter(e.dataset for e in seg) == SEG_TABLE
    bottomup = list_entries(task="bottomup_pose")  # HigherHRNet rows: test_higher_hrnet.py
    assert len(pose) == 29 and len(seg) == 25 and len(bottomup) == 3
    assert len(list_entries()) == 57


def test_seg_rows_cover_arch_x_schedule_grid():
    def grid(dataset):
        out = set()
        for e in list_entries(dataset=dataset):
            m = re.match(r"fcn_(hr18s|hr18|hr48)_4xb\d-(\d+k)_", e.name)
            out.add((m.group(1), m.group(2)))
        return out

    archs = {"hr18s", "hr18", "hr48"}
    assert grid("cityscapes") == {(a, s) for a in archs for s in ("40k", "80k", "160k")}
    assert grid("ade20k") == {(a, s) for a in archs for s in ("80k", "160k")}
    assert grid("voc") == {(a, s) for a in archs for s in ("20k", "40k")}
    assert grid("pascal_context") == {("hr48", "40k"), ("hr48", "80k")}
    assert grid("pascal_context_59") == {("hr48", "40k"), ("hr48", "80k")}


# --------------------------------------------------------------------------------- integrity


def test_names_urls_and_configs_unique_and_well_formed():
    entries = list_entries()
    assert len({e.name for e in entries}) == len(entries)
    # project rows (trained with hrnet-train) have no URL and no upstream config, only a recipe
    from training.recipes import RECIPES

    project = [e for e in entries if not e.url]
    assert [e.name for e in project] == ["td-hm_hrnet-w18-small_dlc-openfield-128x128"]
    assert all(e.config == "" and e.name in RECIPES for e in project)
    entries = [e for e in entries if e.url]
    assert len({e.url for e in entries}) == len(entries)
    for e in entries:
        assert e.url.startswith("https://download.openmmlab.com/"), e.name
        assert e.url.endswith(".pth"), e.name
        # every published checkpoint name ends in an 8-hex-digit hash (+ optional _date)
        assert re.search(r"-[0-9a-f]{8}(_\d{8})?\.pth$", e.url), e.name
        assert e.config == f"{e.config.rsplit('/', 1)[0]}/{e.name}.py"
        assert e.checkpoint_filename == e.url.rsplit("/", 1)[1]
        assert "//" not in e.url[len("https://") :]


def test_every_entry_matches_its_dataset_metainfo():
    for e in list_entries(task="topdown_pose"):
        assert e.num_outputs == get_pose_dataset(e.dataset).num_keypoints, e.name
    for e in list_entries(task="segmentation"):
        assert e.num_outputs == get_seg_dataset(e.dataset).num_classes, e.name


def test_pose_geometry():
    expected = {
        "256x192": ((192, 256), 2.0),
        "384x288": ((288, 384), 3.0),
        "256x256": ((256, 256), 2.0),
        "128x128": ((128, 128), 2.0),
    }
    for e in list_entries(task="topdown_pose"):
        size = re.findall(r"\d{3}x\d{3}", e.name)[-1]  # upstream writes HxW in the name
        (w, h), sigma = expected[size]
        assert e.input_size == (w, h), e.name
        assert e.heatmap_size == (w // 4, h // 4), e.name
        assert e.sigma == sigma, e.name


def test_pose_codec_flags():
    for e in list_entries(task="topdown_pose"):
        assert e.dark == ("_dark-" in e.name), e.name
        assert (e.codec == "UDPHeatmap") == ("_udp-" in e.name) == e.use_udp, e.name
        assert e.shift_heatmap == (not e.use_udp) and e.flip_test
        assert e.arch == (
            "hrnet_w48"
            if "w48" in e.name
            else "hrnet_w18_small"
            if "w18-small" in e.name
            else "hrnet_w32"
        )
        assert e.head_prefix == ("keypoint_head." if e.upstream == "mmpose-0.x" else "head.")
        assert e.test_mode is None and e.crop_size is None


def test_seg_test_settings():
    for e in list_entries(task="segmentation"):
        assert e.align_corners is False and e.head_prefix == "decode_head."
        assert e.codec is None and e.input_size is None
        assert (
            e.arch
            == {"hr18s": "hrnet_w18_small", "hr18": "hrnet_w18", "hr48": "hrnet_w48"}[
                e.name.split("_")[1]
            ]
        )
        crop = tuple(int(v) for v in e.name.rsplit("-", 1)[1].split("x"))  # HxW in the name
        assert e.crop_size == crop
        if e.dataset.startswith("pascal_context"):
            assert (e.test_mode, e.test_scale, e.test_crop, e.test_stride) == (
                "slide",
                (520, 520),
                (480, 480),
                (320, 320),
            )
        else:
            assert e.test_mode == "whole" and e.test_crop is None and e.test_stride is None
            assert (
                e.test_scale
                == {"cityscapes": (2048, 1024), "ade20k": (2048, 512), "voc": (2048, 512)}[
                    e.dataset
                ]
            )
        # the (0.x-named) checkpoint encodes the same arch, schedule and dataset
        arch, sched = re.match(r"fcn_(hr18s|hr18|hr48)_4xb\d-(\d+k)_", e.name).groups()
        assert f"/fcn_{arch}_" in e.url and f"_{sched}_" in e.url, e.name


def test_metric_keys_and_ranges():
    for e in list_entries(task="topdown_pose"):
        if not e.url:  # project rows publish no metrics
            assert dict(e.metrics) == {}, e.name
            continue
        keys = HORSE10_METRIC_KEYS if e.dataset == "horse10" else COCO_METRIC_KEYS
        assert tuple(e.metrics) == keys, e.name
        assert all(0 < v < 1 for v in e.metrics.values()), e.name
        if e.dataset != "horse10":
            m = e.metrics
            assert m["AP50"] >= m["AP75"] >= m["AP"] * 0.9 and m["AR50"] >= m["AR"] >= m["AP"]
    for e in list_entries(task="segmentation"):
        assert tuple(e.metrics) == SEG_METRIC_KEYS
        assert 0 < e.metrics["mIoU"] < e.metrics["mIoU(ms+flip)"] < 100, e.name


def test_metrics_are_read_only():
    e = get_entry("td-hm_hrnet-w32_8xb64-210e_coco-256x192")
    with pytest.raises(TypeError):
        e.metrics["AP"] = 1.0  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.url = "x"  # type: ignore[misc]


# ------------------------------------------------------------------- spot checks vs upstream


def test_spot_check_coco_w32_256x192():
    e = get_entry("td-hm_hrnet-w32_8xb64-210e_coco-256x192")
    assert e.url == (
        "https://download.openmmlab.com/mmpose/v1/body_2d_keypoint/topdown_heatmap/"
        "coco/td-hm_hrnet-w32_8xb64-210e_coco-256x192-81c58e40_20220909.pth"
    )
    assert dict(e.metrics) == {
        "AP": 0.749,
        "AP50": 0.906,
        "AP75": 0.821,
        "AR": 0.804,
        "AR50": 0.945,
    }
    assert e.config == (
        "configs/body_2d_keypoint/topdown_heatmap/coco/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py"
    )
    assert (e.task, e.arch, e.dataset, e.codec, e.upstream) == (
        "topdown_pose",
        "hrnet_w32",
        "coco",
        "MSRAHeatmap",
        "mmpose-1.x",
    )


def test_spot_check_w48_udp_384x288():
    e = get_entry("td-hm_hrnet-w48_udp-8xb32-210e_coco-384x288")
    assert e.metrics["AP"] == 0.773 and e.use_udp and not e.shift_heatmap
    assert e.url.endswith("td-hm_hrnet-w48_udp-8xb32-210e_coco-384x288-70d7ab01_20220913.pth")


def test_spot_check_coco_aic():
    merge = get_entry("td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-merge")
    combine = get_entry("td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-combine")
    assert merge.dataset == "coco" and merge.num_outputs == 17
    assert merge.output_keypoint_indices is None and merge.num_reported_keypoints == 17
    assert merge.url.endswith("-merge-a9ea6d77_20230818.pth") and merge.metrics["AP"] == 0.756
    assert combine.dataset == "coco_aic" and combine.num_outputs == 19
    assert combine.output_keypoint_indices == tuple(range(17))
    assert combine.num_reported_keypoints == 17
    assert combine.url.endswith("-combine-458125cc_20230818.pth")
    assert combine.metrics["AP"] == 0.755


def test_spot_check_animals():
    h = get_entry("hrnet_w48_horse10_256x256-split1")
    assert dict(h.metrics) == {"PCK@0.3": 0.973, "NME": 0.095}
    assert h.url == (
        "https://download.openmmlab.com/mmpose/animal/hrnet/"
        "hrnet_w48_horse10_256x256_split1-3c950d3b_20210405.pth"
    )
    assert h.upstream == "mmpose-0.x" and h.head_prefix == "keypoint_head."
    m = get_entry("hrnet_w32_macaque_256x192")
    assert m.input_size == (192, 256) and m.metrics["AP"] == 0.814
    a = get_entry("hrnet_w32_atrw_256x256")
    assert a.num_outputs == 15 and a.metrics["AP"] == 0.912


def test_augmentation_rows_are_mmpose_0x_checkpoints():
    """hrnet_augmentation_coco.md (MMPose 1.x) links the 0.x checkpoints of
    configs/top_down/augmentation/ (download.openmmlab.com/mmpose/top_down/augmentation/,
    dated 2021-03-20, before MMPose 1.0): their state dicts hold keypoint_head.* keys."""
    for kind, tail in (
        ("coarsedropout", "0f16a0ce"),
        ("gridmask", "868180df"),
        ("photometric", "308cf591"),
    ):
        e = get_entry(f"td-hm_hrnet-w32_{kind}-8xb64-210e_coco-256x192")
        assert e.url == (
            "https://download.openmmlab.com/mmpose/top_down/augmentation/"
            f"hrnet_w32_coco_256x192_{kind}-{tail}_20210320.pth"
        )
        assert e.upstream == "mmpose-0.x" and e.head_prefix == "keypoint_head."
        assert e.config == (
            "configs/body_2d_keypoint/topdown_heatmap/coco/"
            f"td-hm_hrnet-w32_{kind}-8xb64-210e_coco-256x192.py"
        )
    # every other COCO row is a 1.x checkpoint (mmpose/v1/...) with head.* keys
    for e in list_entries(dataset="coco"):
        v1 = e.url.startswith("https://download.openmmlab.com/mmpose/v1/")
        assert v1 == (e.upstream == "mmpose-1.x") == (e.head_prefix == "head."), e.name


def test_spot_check_segmentation():
    e = get_entry("fcn_hr48_4xb2-160k_cityscapes-512x1024")
    assert e.url == (
        "https://download.openmmlab.com/mmsegmentation/v0.5/hrnet/"
        "fcn_hr48_512x1024_160k_cityscapes/"
        "fcn_hr48_512x1024_160k_cityscapes_20200602_190946-59b7973e.pth"
    )
    assert dict(e.metrics) == {"mIoU": 80.65, "mIoU(ms+flip)": 81.92}
    assert e.crop_size == (512, 1024) and e.test_scale == (2048, 1024)
    p = get_entry("fcn_hr48_4xb4-80k_pascal-context-59-480x480")
    assert p.num_outputs == 59 and p.metrics["mIoU"] == 51.12
    assert p.url.endswith("fcn_hr48_480x480_80k_pascal_context_59_20210411_003240-3ae7081e.pth")
    v = get_entry("fcn_hr18s_4xb4-20k_voc12aug-512x512")
    assert v.metrics["mIoU"] == 65.5 and v.url.endswith("_20210829_174910-0aceadb4.pth")


# ----------------------------------------------------------------------------------- the API


def test_get_entry_accepts_py_suffix_and_suggests_close_matches():
    name = "fcn_hr18_4xb2-40k_cityscapes-512x1024"
    assert get_entry(name + ".py") is get_entry(name)
    with pytest.raises(KeyError) as e:
        get_entry("td-hm_hrnet-w32_8xb64-210e_coco-256x193")
    assert "td-hm_hrnet-w32_8xb64-210e_coco-256x192" in str(e.value)
    with pytest.raises(KeyError):
        get_entry("resnet50")


def test_list_entries_filters():
    assert len(list_entries(task="segmentation", dataset="cityscapes")) == 9
    assert len(list_entries(dataset="horse10")) == 6
    assert list_entries(task="segmentation", dataset="coco") == []
    assert all(e.task == "topdown_pose" for e in list_entries(task="topdown_pose"))
    with pytest.raises(ValueError):
        list_entries(task="detection")


def _pose_kwargs(**over):
    kw = dict(
        name="my_hrnet",
        task="topdown_pose",
        arch="hrnet_w32",
        dataset="coco",
        num_outputs=17,
        config="local/my_hrnet.py",
        url="https://example.org/x.pth",
        input_size=(192, 256),
        heatmap_size=(48, 64),
        sigma=2.0,
        codec="MSRAHeatmap",
    )
    kw.update(over)
    return kw


def test_register_and_duplicate():
    e = ModelEntry(**_pose_kwargs())
    try:
        assert register(e) is e and get_entry("my_hrnet") is e
        with pytest.raises(ValueError):
            register(ModelEntry(**_pose_kwargs()))
        e2 = ModelEntry(**_pose_kwargs(sigma=3.0))
        assert register(e2, overwrite=True) is e2 and get_entry("my_hrnet").sigma == 3.0
        with pytest.raises(TypeError):
            register("my_hrnet")  # type: ignore[arg-type]
    finally:
        registry._REGISTRY.pop("my_hrnet", None)
    assert len(list_entries()) == 57


@pytest.mark.parametrize(
    "over",
    [
        dict(task="bottomup"),
        dict(arch="hrnet_w40"),
        dict(codec="SimCC"),
        dict(codec="UDPHeatmap"),  # UDP without use_udp
        dict(dark=True, codec="UDPHeatmap", use_udp=True),
        dict(sigma=None),
        dict(num_outputs=0),
        dict(config="local/other.py"),
        dict(output_keypoint_indices=(0, 17)),
        dict(test_mode="whole"),
    ],
)
def test_entry_validation(over):
    with pytest.raises(ValueError):
        ModelEntry(**_pose_kwargs(**over))


def test_seg_entry_validation():
    base = dict(
        name="s",
        task="segmentation",
        arch="hrnet_w18",
        dataset="voc",
        num_outputs=21,
        config="c/s.py",
        url="https://example.org/s.pth",
        crop_size=(512, 512),
        test_scale=(2048, 512),
        test_mode="whole",
    )
    ModelEntry(**base)
    for over in (
        dict(test_mode="slide"),
        dict(test_mode="tiles"),
        dict(crop_size=None),
        dict(test_crop=(1, 1), test_stride=(1, 1)),
        dict(codec="MSRAHeatmap"),
    ):
        with pytest.raises(ValueError):
            ModelEntry(**{**base, **over})


def test_entries_make_valid_model_cards():
    """Every entry + its metainfo fills the shared card schema (service.cards) without error."""
    from service.cards import (
        CodecSpec,
        ModelCard,
        Normalization,
        SegTestPipeline,
        TensorSpec,
        make_card,
    )

    norm = Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    for e in list_entries():
        if e.task == "topdown_pose":
            info = get_pose_dataset(e.dataset)
            w, h = e.input_size
            card = make_card(
                name=e.name,
                task=e.task,
                input_size=e.input_size,
                normalization=norm,
                inputs=[TensorSpec(name="input", dims=[3, h, w])],
                outputs=[
                    TensorSpec(
                        name="heatmaps", dims=[e.num_outputs, e.heatmap_size[1], e.heatmap_size[0]]
                    )
                ],
                codec=CodecSpec(
                    type=e.codec,
                    input_size=e.input_size,
                    heatmap_size=e.heatmap_size,
                    sigma=e.sigma,
                    unbiased=e.dark,
                ),
                use_udp=e.use_udp,
                shift_heatmap=e.shift_heatmap,
                flip_test=e.flip_test,
                keypoint_names=list(info.keypoint_names),
                skeleton=list(info.skeleton),
                flip_indices=list(info.flip_indices),
                sigmas=list(info.sigmas),
                dataset=e.dataset,
            )
            assert card.num_keypoints == e.num_outputs
        elif e.task == "bottomup_pose":  # its card builder is pinned in test_higher_hrnet.py
            from export.cards import card_for_entry

            card = card_for_entry(e, e.name)
            assert card.bottomup is not None and card.bottomup.num_joints == e.num_outputs
        else:
            info = get_seg_dataset(e.dataset)
            card = make_card(
                name=e.name,
                task=e.task,
                input_size=(None, None),
                normalization=norm,
                inputs=[TensorSpec(name="input", dims=[3, -1, -1])],
                outputs=[TensorSpec(name="logits", dims=[e.num_outputs, -1, -1])],
                classes=list(info.classes),
                palette=list(info.palette),
                test_pipeline=SegTestPipeline(
                    scale=e.test_scale,
                    mode=e.test_mode,
                    crop_size=e.test_crop,
                    stride=e.test_stride,
                ),
                align_corners=e.align_corners,
            )
            assert len(card.classes) == e.num_outputs


def test_import_is_torch_free():
    code = (
        "import sys, training.registry, service.datasets; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


def test_atrw_uses_padding_one_as_mmpose_0x_atrw_dataset():
    """MMPose 0.x AnimalATRWDataset: ``_xywh2cs(..., padding=1.0)``; Horse-10/Macaque: 1.25."""
    from export.cards import card_for_entry

    for name in ("hrnet_w32_atrw_256x256", "hrnet_w48_atrw_256x256"):
        assert get_entry(name).bbox_padding == 1.0
        assert card_for_entry(get_entry(name), "x").bbox_padding == 1.0
    for name in (
        "hrnet_w32_macaque_256x192",
        "hrnet_w32_horse10_256x256-split1",
        "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
    ):
        assert get_entry(name).bbox_padding == 1.25
