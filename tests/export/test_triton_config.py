"""Production config.pbtxt files parse with Triton's own protobuf text format and say the right thing.

Expected values are read off the cards below by hand (dims without the batch axis, Triton's TYPE_*
enums, the documented default batching), not from running the renderer.
"""

from __future__ import annotations

import sys

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.triton_adapter import MODEL_PY, convert_repository, write_python_entry
from export.triton_config import (
    build_tensorrt_plan,
    default_preferred_batch_sizes,
    default_spatial_ranges,
    parse_config,
    profile_shapes,
    render_config,
    write_config,
)
from service.cards import ModelCard, load_card, make_card

NORM = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}


def pose_card() -> ModelCard:
    return make_card(
        name="pp_tinypose_256x192",
        task="topdown_pose",
        input_size=(192, 256),
        inputs=[{"name": "image", "dims": [3, 256, 192]}],
        outputs=[{"name": "heatmaps", "dims": [17, 64, 48]}],
        max_batch_size=32,
        normalization=NORM,
        codec={"input_size": (192, 256), "heatmap_size": (48, 64)},
        keypoint_names=[f"k{i}" for i in range(17)],
    )


def det_card() -> ModelCard:
    return make_card(
        name="rtmdet_nano_person_320",
        task="detection",
        input_size=(320, 320),
        inputs=[{"name": "input", "dims": [3, 320, 320]}],
        outputs=[
            {"name": "dets", "dims": [-1, 5]},
            {"name": "labels", "dtype": "INT64", "dims": [-1]},
        ],
        max_batch_size=8,
        normalization={**NORM, "channel_order": "bgr"},
        detector={},
    )


def seg_card(mode: str = "slide") -> ModelCard:
    return make_card(
        name="fcn_hr18_cityscapes",
        task="segmentation",
        input_size=(None, None),
        inputs=[{"name": "input", "dims": [3, -1, -1]}],
        outputs=[{"name": "logits", "dims": [19, -1, -1]}],
        max_batch_size=4,
        normalization=NORM,
        classes=[f"c{i}" for i in range(19)],
        test_pipeline={
            "scale": (2048, 1024),
            "mode": mode,
            "crop_size": (512, 1024),
            "stride": (341, 683),
        },
    )


def tensors(items) -> list[tuple[str, int, list[int]]]:
    return [(t.name, t.data_type, list(t.dims)) for t in items]


def test_pose_config():
    cfg = parse_config(render_config(pose_card()))
    assert isinstance(cfg, mc.ModelConfig)
    assert cfg.name == "pp_tinypose_256x192"
    assert cfg.platform == "onnxruntime_onnx" and cfg.backend == ""
    assert cfg.default_model_filename == "model.onnx"
    assert cfg.max_batch_size == 32
    assert tensors(cfg.input) == [("image", mc.TYPE_FP32, [3, 256, 192])]
    assert tensors(cfg.output) == [("heatmaps", mc.TYPE_FP32, [17, 64, 48])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    assert not cfg.HasField("optimization")


def test_detector_config_int64_labels_and_dynamic_count():
    cfg = parse_config(
        render_config(
            det_card(), max_queue_delay_us=2000, instance_count=2, preferred_batch_sizes=[8, 2]
        )
    )
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert tensors(cfg.input) == [("input", mc.TYPE_FP32, [3, 320, 320])]
    assert tensors(cfg.output) == [("dets", mc.TYPE_FP32, [-1, 5]), ("labels", mc.TYPE_INT64, [-1])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]


def test_segmentation_config_dynamic_spatial_dims():
    cfg = parse_config(render_config(seg_card()))
    assert tensors(cfg.input) == [("input", mc.TYPE_FP32, [3, -1, -1])]
    assert tensors(cfg.output) == [("logits", mc.TYPE_FP32, [19, -1, -1])]
    assert cfg.max_batch_size == 4
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]


def test_tensorrt_plan_entry():
    cfg = parse_config(render_config(seg_card(), platform="tensorrt_plan"))
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert tensors(cfg.input) == [("input", mc.TYPE_FP32, [3, -1, -1])]


def test_onnxruntime_tensorrt_accelerator_option():
    cfg = parse_config(
        render_config(pose_card(), trt_accelerator=True, trt_workspace_bytes=1 << 30)
    )
    accs = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accs] == ["tensorrt"]
    assert dict(accs[0].parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": "1073741824",
    }
    assert cfg.platform == "onnxruntime_onnx"


def test_openvino_backend_entry_runs_the_same_onnx():
    cfg = parse_config(
        render_config(pose_card(), backend="openvino", openvino_bf16=True, instance_kind="KIND_CPU")
    )
    assert cfg.backend == "openvino" and cfg.platform == ""
    assert cfg.default_model_filename == "model.onnx"
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "NUM_STREAMS": "1",
        "PERFORMANCE_HINT": "LATENCY",
        "HINT_BF16": "YES",
    }
    plain = parse_config(render_config(pose_card(), backend="openvino"))
    assert "HINT_BF16" not in plain.parameters
    assert not parse_config(render_config(pose_card())).parameters  # ONNX Runtime: none
    with pytest.raises(ValueError, match="openvino_bf16 applies to backend 'openvino' only"):
        render_config(pose_card(), openvino_bf16=True)


def test_cpu_instances_and_batch_override():
    cfg = parse_config(
        render_config(pose_card(), instance_kind="KIND_CPU", instance_count=3, max_batch_size=12)
    )
    assert cfg.max_batch_size == 12
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 12]
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]


@pytest.mark.parametrize(
    "n, sizes",
    [
        (1, [1]),
        (2, [2]),
        (4, [4]),
        (5, [4, 5]),
        (12, [4, 8, 12]),
        (32, [4, 8, 16, 32]),
        (48, [4, 8, 16, 32, 48]),
    ],
)
def test_default_preferred_batch_sizes(n, sizes):
    assert default_preferred_batch_sizes(n) == sizes


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(max_batch_size=0), "max_batch_size must be >= 1"),
        (dict(preferred_batch_sizes=[4, 64]), r"preferred batch sizes \[64\] outside 1..32"),
        (dict(platform="tensorflow_savedmodel"), "unknown platform"),
        (dict(instance_kind="KIND_TPU"), "unknown instance kind"),
        (dict(platform="tensorrt_plan", trt_accelerator=True), "'onnxruntime_onnx' only"),
    ],
)
def test_render_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        render_config(pose_card(), **kw)


def test_parse_config_rejects_unknown_fields():
    with pytest.raises(text_format.ParseError):
        parse_config('name: "x"\nmax_batch: 3\n')


def test_write_config(tmp_path):
    path = write_config(det_card(), tmp_path / "rtmdet_nano_person_320", instance_kind="KIND_CPU")
    assert path == tmp_path / "rtmdet_nano_person_320" / "config.pbtxt"
    cfg = parse_config(path.read_text())
    assert cfg.name == "rtmdet_nano_person_320"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


# ----------------------------------------------------------------------------- TensorRT


def test_tensorrt_missing_gives_clear_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(RuntimeError, match=r"TensorRT is not installed.*\[tensorrt\] extra"):
        build_tensorrt_plan(tmp_path / "model.onnx", tmp_path / "model.plan", pose_card())
    assert not (tmp_path / "model.plan").exists()


def test_default_spatial_ranges():
    # max covers scales=ms (MMSeg ms ratios up to 1.75, applied to the original image): a
    # 2048 x 1024 frame (the card's test scale) at 1.75 is 3584 x 1792, so 1.75 * 2048 = 3584
    # on both axes (either orientation); min 64 x 64
    # slide: opt = crop (512, 1024)
    assert default_spatial_ranges(seg_card("slide")) == ((64, 64), (512, 1024), (3584, 3584))
    # whole: opt = scale as (short, long) = (1024, 2048)
    assert default_spatial_ranges(seg_card("whole")) == ((64, 64), (1024, 2048), (3584, 3584))
    # fixed-size pose input: (h, w) = (256, 192)
    assert default_spatial_ranges(pose_card())[1] == (256, 192)
    # ceil: a 520-pixel scale (Pascal Context) at 1.75 is 910; 1.75 * 517 = 904.75 -> 905
    ctx = make_card(**{**seg_card("whole").model_dump(), "test_pipeline": {"scale": (517, 517)}})
    assert default_spatial_ranges(ctx)[2] == (905, 905)


def test_default_max_covers_every_ms_view_of_a_test_size_image():
    """Every ``scales=ms`` view the gateway builds for an image of the card's test size (both
    orientations) fits the TensorRT profile."""
    from service.pipelines.seg_plan import MS_RATIOS, tta_resize_size

    assert max(MS_RATIOS) == 1.75  # MMSeg 1.x img_ratios [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    for mode in ("slide", "whole"):
        _, _, (max_h, max_w) = default_spatial_ranges(seg_card(mode))
        for size_wh in ((2048, 1024), (1024, 2048)):
            views = [tta_resize_size(size_wh, r) for r in MS_RATIOS]
            assert max(w for w, _ in views) <= max_w and max(h for _, h in views) <= max_h
            assert (3584, 1792) in views or (1792, 3584) in views  # the 1.75 view, exactly


def test_profile_shapes():
    card = seg_card()
    lo, opt, hi = profile_shapes(
        card,
        card.inputs[0],
        min_batch=1,
        opt_batch=2,
        max_batch=4,
        min_hw=(64, 64),
        opt_hw=(512, 1024),
        max_hw=(2048, 2048),
    )
    assert (lo, opt, hi) == ((1, 3, 64, 64), (2, 3, 512, 1024), (4, 3, 2048, 2048))
    card = pose_card()
    lo, opt, hi = profile_shapes(
        card,
        card.inputs[0],
        min_batch=1,
        opt_batch=16,
        max_batch=32,
        min_hw=(1, 1),
        opt_hw=(1, 1),
        max_hw=(1, 1),
    )
    assert (lo, opt, hi) == ((1, 3, 256, 192), (16, 3, 256, 192), (32, 3, 256, 192))


# ----------------------------------------------------------------------------- Python-backend adapter


def test_python_entry_mirrors_production_entry(tmp_path):
    card = det_card()
    onnx_path = tmp_path / "src.onnx"
    onnx_path.write_bytes(b"not really onnx")  # the adapter only links it
    model_dir = write_python_entry(card, onnx_path, tmp_path / "repo")
    assert model_dir == tmp_path / "repo" / "rtmdet_nano_person_320"
    assert (model_dir / "1" / "model.onnx").resolve() == onnx_path.resolve()
    assert (model_dir / "1" / "model.py").read_text() == MODEL_PY
    assert load_card(model_dir) == card

    py = parse_config((model_dir / "config.pbtxt").read_text())
    prod = parse_config(render_config(card))
    assert py.backend == "python" and py.platform == "" and py.default_model_filename == "model.py"
    assert py.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching"):
        assert getattr(py, field) == getattr(prod, field), field


def test_python_model_source_compiles():
    compile(MODEL_PY, "model.py", "exec")


def test_convert_repository(tmp_path):
    src = tmp_path / "prod"
    for card in (pose_card(), det_card()):
        (src / card.name / "1").mkdir(parents=True)
        card.save(src / card.name)
        (src / card.name / "1" / "model.onnx").write_bytes(b"x")
        write_config(card, src / card.name)
    (src / "no_onnx").mkdir()
    seg_card().model_copy(update={"name": "no_onnx"}).save(src / "no_onnx")
    names = convert_repository(src, tmp_path / "py")
    assert names == ["pp_tinypose_256x192", "rtmdet_nano_person_320"]
    cfg = parse_config((tmp_path / "py" / "pp_tinypose_256x192" / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 32
    with pytest.raises(FileNotFoundError):
        convert_repository(src, tmp_path / "py2", models=["no_onnx"])


def test_cli_config_and_plan_without_tensorrt(tmp_path, monkeypatch, capsys):
    from export.triton_config import main

    model_dir = tmp_path / "fcn_hr18_cityscapes"
    (model_dir / "1").mkdir(parents=True)
    seg_card().save(model_dir)
    assert (
        main(
            [
                "config",
                str(model_dir),
                "--instance-kind",
                "KIND_CPU",
                "--preferred-batch-sizes",
                "2,4",
            ]
        )
        == 0
    )
    cfg = parse_config((model_dir / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and list(
        cfg.dynamic_batching.preferred_batch_size
    ) == [2, 4]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["plan", str(model_dir)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    # the entry is left as it was (still the ONNX Runtime one)
    assert parse_config((model_dir / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
