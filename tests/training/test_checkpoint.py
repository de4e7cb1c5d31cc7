"""Checkpoints: published layouts round-trip exactly, mismatches are named, loading is safe,
downloads are atomic and hash-checked."""

from __future__ import annotations

import collections
import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import (
    CheckpointError,
    convert_state_dict,
    detect_layout,
    download_checkpoint,
    extract_state_dict,
    hash_prefix,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from training.models import build_model


def _randomize(model, seed):
    """Give every BN tensor (affine, running stats, counter) and bias seed-dependent values.

    Conv weights are already random from the seeded init (tests load into a model built with
    another seed); BN tensors and biases start as constants (1/0), so a loader that skipped
    them could otherwise produce identical outputs by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1:
                t.copy_(
                    torch.randn(t.shape, generator=g) * 0.2
                    + (1.0 if name.endswith("weight") else 0.0)
                )
    return model


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def w32_pose():
    return _randomize(build_model("hrnet_w32", "topdown_pose", 17, seed=0), 1)


@pytest.fixture(scope="module")
def small_pose():
    return _randomize(build_model("hrnet_w18_small", "topdown_pose", 17, seed=0), 2)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", ["mmpose1", "mmpose0", "hrnet"])
def test_w32_pose_round_trip_in_each_published_layout(w32_pose, layout, tmp_path):
    path = save_checkpoint(
        w32_pose,
        tmp_path / f"w32_{layout}.pth",
        layout=layout,
        meta={"dataset_meta": {"sigmas": np.full(17, 0.05, np.float32)}},
    )
    raw = read_checkpoint(path)
    sd, _ = extract_state_dict(raw)
    assert detect_layout(sd) == layout
    head_key = {
        "mmpose1": "head.final_layer.weight",
        "mmpose0": "keypoint_head.final_layer.weight",
        "hrnet": "final_layer.weight",
    }[layout]
    bb = "" if layout == "hrnet" else "backbone."
    assert head_key in sd and bb + "stage4.2.fuse_layers.0.3.1.running_mean" in sd
    assert (layout == "hrnet") == ("state_dict" not in raw)
    # torch's per-module metadata survives, renamed to the layout (BN version 2 entries)
    metadata = (raw if layout == "hrnet" else raw["state_dict"])._metadata
    assert metadata[bb + "stage2.0.branches.0.0.bn1"]["version"] == 2

    fresh = build_model("hrnet_w32", "topdown_pose", 17, seed=99)
    info = load_checkpoint(fresh, path)
    assert info["layout"] == layout and info["num_loaded"] == len(fresh.state_dict())
    assert not (info["missing"] or info["unexpected"] or info["shape_mismatch"])
    _assert_same_state(w32_pose, fresh)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(w32_pose(x), fresh(x))


@pytest.mark.parametrize(
    "arch,classes", [("hrnet_w18_small", 19), ("hrnet_w18", 19), ("hrnet_w48", 19)]
)
def test_fcn_hrnet_round_trip_in_mmseg_layout(arch, classes, tmp_path):
    src = _randomize(build_model(arch, "segmentation", classes, seed=0), 3)
    path = save_checkpoint(
        src,
        tmp_path / f"fcn_{arch}.pth",
        layout="mmseg",
        meta={"dataset_meta": {"classes": ("road",) * classes}},
    )
    fresh = build_model(arch, "segmentation", classes, seed=42)
    info = load_checkpoint(fresh, path)
    assert info["layout"] == "mmseg"
    assert info["meta"]["dataset_meta"]["classes"][0] == "road"
    _assert_same_state(src, fresh)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(src(x), fresh(x))


def test_convert_state_dict_renames_per_layout(small_pose):
    ours = small_pose.state_dict()
    mm0 = {("keypoint_head." + k[5:]) if k.startswith("head.") else k: v for k, v in ours.items()}
    bare = {
        k[len("backbone.") :] if k.startswith("backbone.") else k[len("head.") :]: v
        for k, v in ours.items()
    }
    for sd in (ours, mm0, bare):
        assert convert_state_dict(sd, "topdown_pose").keys() == ours.keys()
    with pytest.raises(CheckpointError, match="segmentation model"):
        convert_state_dict(ours, "segmentation")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        detect_layout({"foo.weight": torch.zeros(1)})


def test_segmentation_checkpoint_is_refused_by_pose_model(tmp_path):
    seg = build_model("hrnet_w18_small", "segmentation", 19, seed=0)
    path = save_checkpoint(seg, tmp_path / "seg.pth", layout="mmseg")
    with pytest.raises(
        CheckpointError, match="'mmseg' checkpoint cannot be loaded into a topdown_pose model"
    ):
        load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 17), path)


# --------------------------------------------------------------------------- mismatches


def _pose_ckpt(model, layout):
    ours = model.state_dict()
    if layout == "mmpose0":
        sd = {
            ("keypoint_head." + k[5:]) if k.startswith("head.") else k: v.clone()
            for k, v in ours.items()
        }
    else:
        sd = {k: v.clone() for k, v in ours.items()}
    return {"meta": {}, "state_dict": sd}


def test_renamed_key_is_named_both_ways(small_pose):
    ckpt = _pose_ckpt(small_pose, "mmpose0")
    sd = ckpt["state_dict"]
    sd["keypoint_head.final_layer.b"] = sd.pop("keypoint_head.final_layer.bias")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 17), ckpt)
    msg = str(e.value)
    assert "mmpose0" in msg
    assert "missing keys (1): keypoint_head.final_layer.bias" in msg
    assert "unexpected keys (1): keypoint_head.final_layer.b" in msg


def test_extra_key_is_named(small_pose):
    ckpt = _pose_ckpt(small_pose, "mmpose1")
    ckpt["state_dict"]["backbone.stage4.1.fuse_layers.1.0.0.0.weight"] = torch.zeros(36, 18, 3, 3)
    with pytest.raises(
        CheckpointError,
        match=r"unexpected keys \(1\): backbone\.stage4\.1\.fuse_layers\.1\.0\.0\.0\.weight",
    ):
        load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 17), ckpt)


def test_missing_key_is_named(small_pose):
    ckpt = _pose_ckpt(small_pose, "mmpose1")
    del ckpt["state_dict"]["backbone.stage3.2.branches.1.1.bn2.running_var"]
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \(1\): backbone\.stage3\.2\.branches\.1\.1\.bn2\.running_var",
    ):
        load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 17), ckpt)


def test_wrong_shape_is_named_with_both_shapes(small_pose):
    ckpt = _pose_ckpt(small_pose, "mmpose1")  # 17 keypoints into a 14-keypoint model
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 14), ckpt)
    msg = str(e.value)
    assert "shape mismatches (2)" in msg
    assert "head.final_layer.weight: checkpoint [17, 18, 1, 1] vs model [14, 18, 1, 1]" in msg
    assert "head.final_layer.bias: checkpoint [17] vs model [14]" in msg


def test_non_strict_loads_what_matches_and_reports_the_rest(small_pose):
    ckpt = _pose_ckpt(small_pose, "mmpose1")
    model = build_model("hrnet_w18_small", "topdown_pose", 14, seed=3)
    head_before = model.head.final_layer.weight.clone()
    info = load_checkpoint(model, ckpt, strict=False)
    assert set(info["shape_mismatch"]) == {"head.final_layer.weight", "head.final_layer.bias"}
    assert torch.equal(model.head.final_layer.weight, head_before)
    assert torch.equal(model.backbone.conv1.weight, small_pose.backbone.conv1.weight)


def test_old_files_without_bn_counters_and_with_module_prefix_load(small_pose):
    sd = {
        "module." + k: v
        for k, v in small_pose.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    model = build_model("hrnet_w18_small", "topdown_pose", 17, seed=3)
    info = load_checkpoint(model, {"state_dict": sd})
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert len(info["filled_num_batches_tracked"]) == n_bn
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), small_pose(x))


# --------------------------------------------------------------------------- safe loading


def test_meta_with_numpy_arrays_and_scalars_loads(tmp_path, small_pose):
    meta = {
        "dataset_meta": {
            "sigmas": np.array([0.026, 0.025, 0.035], np.float32),
            "flip_indices": np.array([0, 2, 1], np.int64),
            "keypoint_colors": np.array([[255, 128, 0]], np.uint8),
        },
        "best_score": np.float64(0.7431),
        "seed": np.int64(21),
    }
    path = save_checkpoint(small_pose, tmp_path / "meta.pth", layout="mmpose1", meta=meta)
    info = load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 17), path)
    got = info["meta"]
    assert got["dataset_meta"]["sigmas"].dtype == np.float32
    np.testing.assert_array_equal(got["dataset_meta"]["sigmas"], np.float32([0.026, 0.025, 0.035]))
    np.testing.assert_array_equal(got["dataset_meta"]["flip_indices"], [0, 2, 1])
    assert got["dataset_meta"]["keypoint_colors"].dtype == np.uint8
    assert got["best_score"] == np.float64(0.7431) and got["seed"] == 21


def test_meta_pickled_under_numpy1_names_loads(tmp_path):
    # numpy 1.x pickles arrays as numpy.core.multiarray._reconstruct; torch's legacy format
    # (protocol 2, text GLOBAL opcodes) lets us write such a file by renaming the module.
    obj = {
        "state_dict": collections.OrderedDict(w=torch.ones(2)),
        "meta": {"sigmas": np.array([0.5, 0.25], np.float32), "s": np.float64(2.0)},
    }
    path = tmp_path / "np1.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    out = read_checkpoint(path)
    np.testing.assert_array_equal(out["meta"]["sigmas"], np.float32([0.5, 0.25]))
    assert out["meta"]["s"] == 2.0


class _Payload:
    """An arbitrary class: unpickling it would import test code."""

    def __init__(self):
        self.x = 1


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_arbitrary_class_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"obj": _Payload()}}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*_Payload"):
        read_checkpoint(path)


def test_os_system_reduce_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"x": _Exploit(marker)}}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*system"):
        load_checkpoint(build_model("hrnet_w18_small", "topdown_pose", 17), path)
    assert not marker.exists()


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


# --------------------------------------------------------------------------- download


def test_hash_prefix_of_published_names():
    assert hash_prefix("hrnet_w32_coco_256x192-c78dce93_20200708.pth") == "c78dce93"
    assert (
        hash_prefix("td-hm_hrnet-w32_8xb64-210e_coco-256x192-81c58e40_20220909.pth") == "81c58e40"
    )
    assert (
        hash_prefix("fcn_hr18s_512x1024_40k_cityscapes_20200601_014216-93db27d0.pth") == "93db27d0"
    )
    assert hash_prefix("hrnet_w32-36af842e.pth") == "36af842e"
    assert hash_prefix("pose_hrnet_w32_256x192.pth") is None


def _write_named(directory: Path, stem: str, payload: bytes, good: bool = True) -> Path:
    digest = hashlib.sha256(payload).hexdigest()
    prefix = digest[:8] if good else ("0" if digest[0] != "0" else "1") + digest[1:8]
    path = directory / f"{stem}-{prefix}_20240101.pth"
    path.write_bytes(payload)
    return path


def test_download_file_url_checks_hash_and_caches(tmp_path):
    src_dir, cache = tmp_path / "src", tmp_path / "cache"
    src_dir.mkdir()
    payload = os.urandom(300_000)
    src = _write_named(src_dir, "model", payload)
    got = download_checkpoint(src.as_uri(), cache)
    assert got == cache / src.name and got.read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == [src.name]  # no temp file left
    src.unlink()  # a second call must be served from the cache
    assert download_checkpoint(src.as_uri(), cache) == got


def test_download_with_wrong_hash_fails_and_leaves_nothing(tmp_path):
    src_dir, cache = tmp_path / "src", tmp_path / "cache"
    src_dir.mkdir()
    src = _write_named(src_dir, "model", b"not the weights you are looking for", good=False)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        download_checkpoint(src.as_uri(), cache)
    assert list(cache.iterdir()) == []


def test_cached_file_with_wrong_hash_is_downloaded_again(tmp_path):
    src_dir, cache = tmp_path / "src", tmp_path / "cache"
    src_dir.mkdir()
    cache.mkdir()
    payload = b"good bytes" * 1000
    src = _write_named(src_dir, "model", payload)
    (cache / src.name).write_bytes(b"corrupt")
    assert download_checkpoint(src.as_uri(), cache).read_bytes() == payload


def test_download_bad_urls(tmp_path):
    with pytest.raises(CheckpointError, match="unsupported checkpoint URL scheme"):
        download_checkpoint("ftp://example.invalid/x.pth", tmp_path)
    with pytest.raises(CheckpointError, match="cannot download"):
        download_checkpoint((tmp_path / "absent.pth").as_uri(), tmp_path / "cache")


@pytest.fixture()
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def test_download_over_loopback_http_then_load(http_dir, tmp_path, small_pose):
    root, base = http_dir
    tmp = save_checkpoint(small_pose, tmp_path / "staging.pth", layout="mmpose0")
    payload = tmp.read_bytes()
    name = f"hrnet_w18s_test-{hashlib.sha256(payload).hexdigest()[:8]}_20240101.pth"
    (root / name).write_bytes(payload)
    got = download_checkpoint(f"{base}/{name}", tmp_path / "cache")
    assert got.read_bytes() == payload
    model = build_model("hrnet_w18_small", "topdown_pose", 17, seed=5)
    assert load_checkpoint(model, got)["layout"] == "mmpose0"
    _assert_same_state(small_pose, model)
    with pytest.raises(CheckpointError, match="404"):
        download_checkpoint(f"{base}/missing-0123abcd.pth", tmp_path / "cache")
