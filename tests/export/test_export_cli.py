"""``hrnet-export`` (export.cli.main): full entries from a checkpoint, random weights, an existing
ONNX file, the shared models; environment settings; clean exit-2 errors.

To stay fast the checkpoint exports use a small registry entry registered here for the test
(HRNet-W18-small top-down pose at 96x64); the W32 256x192 export is covered in test_export.py.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.cli import main
from export.shared_models import PP_TINYPOSE, RTMDET_NANO, pp_tinypose_card
from service.cards import ModelCard, load_card
from tests.export_fixtures import clear_export_env, register_small_pose_entry

torch = pytest.importorskip("torch")

SMALL = "test-hm_hrnet-w18s_coco-96x64"


@pytest.fixture
def small_entry(monkeypatch):
    """A registry entry for a tiny pose model (input 64x96 (w, h), heatmaps 16x24), removed after."""
    return register_small_pose_entry(monkeypatch, SMALL, "https://example.invalid/small.pth")


@pytest.fixture
def clean_env(monkeypatch):
    clear_export_env(monkeypatch)


def _parse_config(entry_dir):
    from export.triton_config import parse_config

    return parse_config((entry_dir / "config.pbtxt").read_text())


def test_checkpoint_export_writes_full_entry(small_entry, clean_env, tmp_path, capsys):
    from export.onnx_export import calibrate_batchnorm
    from training.checkpoint import save_checkpoint
    from training.models import create_model

    model = create_model(SMALL, seed=3)
    calibrate_batchnorm(model, (2, 3, 96, 64), seed=3)  # trained-like BN statistics
    ckpt = save_checkpoint(model, tmp_path / "small.pth", layout="mmpose0")  # keypoint_head.*
    repo = tmp_path / "repo"

    rc = main(
        [
            "--arch",
            SMALL,
            "--checkpoint",
            str(ckpt),
            "--name",
            "small_pose",
            "--model-repository",
            str(repo),
            "--max-batch-size",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "parity 1x3x96x64: max abs err" in out and "parity 5x3x96x64: max abs err" in out
    assert "max |torch|" in out  # the reference magnitude is reported with the error
    assert "dynamo exporter" in out

    entry = repo / "small_pose"
    cfg = _parse_config(entry)
    assert cfg.name == "small_pose" and cfg.max_batch_size == 8
    assert list(cfg.input[0].dims) == [3, 96, 64] and list(cfg.output[0].dims) == [17, 24, 16]
    card = load_card(entry)
    assert card.name == "small_pose" and card.max_batch_size == 8
    assert card.source.checkpoint == str(ckpt) and card.source.metrics == {"AP": 0.5}
    assert card.codec.heatmap_size == (16, 24)

    # the registered graph computes the checkpoint's network (weights really loaded)
    x = np.random.default_rng(7).standard_normal((3, 3, 96, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(ref).max() > 0.01
    sess = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["heatmaps"], {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-4


def test_random_init_from_environment(small_entry, clean_env, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    monkeypatch.setenv("HRNET_MODEL_REPOSITORY", str(repo))
    monkeypatch.setenv("HRNET_EXPORT_ARCH", SMALL)
    monkeypatch.setenv("HRNET_EXPORT_RANDOM_INIT", "1")
    monkeypatch.setenv("HRNET_EXPORT_EXPORTER", "legacy")
    monkeypatch.setenv("HRNET_EXPORT_NO_CHECK", "true")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "legacy exporter" in out and "parity" not in out
    card = load_card(repo / SMALL)
    assert "RANDOM WEIGHTS" in card.source.notes
    # published URL/metrics describe other weights: dropped for a random model
    assert card.source.url is None and card.source.metrics == {}


def test_failed_parity_exits_2_and_writes_nothing(clean_env, tmp_path, capsys):
    # A parity tolerance no fp32 export can meet (real errors are ~4e-6; --rtol 0 drops the
    # magnitude-relative part): the check must fail cleanly, name the sizes and their errors,
    # and write nothing.
    repo = tmp_path / "repo"
    rc = main(
        [
            "--arch",
            "fcn_hr18s_4xb2-40k_cityscapes-512x1024",
            "--random-init",
            "--exporter",
            "legacy",
            "--check-size",
            "64x128",
            "--check-size",
            "96x80",
            "--atol",
            "1e-9",
            "--rtol",
            "0",
            "--model-repository",
            str(repo),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("hrnet-export: error: export failed:")
    assert "64x128" in err and "max |torch|" in err and "rtol=0" in err
    assert not (repo / "fcn_hr18s_4xb2-40k_cityscapes-512x1024").exists()


def test_register_existing_onnx_with_card(shared, clean_env, tmp_path, capsys):
    card_file = tmp_path / "card.json"
    pp_tinypose_card().save(tmp_path)
    repo = tmp_path / "repo"
    onnx_file = shared / "models" / "pp_tinypose_256x192.onnx"
    rc = main(
        [
            "--onnx",
            str(onnx_file),
            "--card",
            str(card_file),
            "--name",
            "tiny_cpu",
            "--model-repository",
            str(repo),
            "--instance-kind",
            "KIND_CPU",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    cfg = _parse_config(repo / "tiny_cpu")
    assert cfg.name == "tiny_cpu" and cfg.instance_group[0].kind == 2  # KIND_CPU
    assert load_card(repo / "tiny_cpu").name == "tiny_cpu"
    assert (repo / "tiny_cpu" / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert cfg.platform == "onnxruntime_onnx" and not cfg.backend

    # the same entry for Triton's OpenVINO backend (bf16): same model.onnx, another config
    args = ["--onnx", str(onnx_file), "--card", str(card_file), "--name", "tiny_ov"]
    rc = main([*args, "--model-repository", str(repo), "--triton-backend", "openvino-bf16"])
    assert rc == 0, capsys.readouterr().err
    cfg = _parse_config(repo / "tiny_ov")
    assert cfg.backend == "openvino" and cfg.default_model_filename == "model.onnx"
    assert cfg.parameters["HINT_BF16"].string_value == "YES"


def test_register_onnx_with_mismatched_card_exits_2(shared, clean_env, tmp_path, capsys):
    from export.shared_models import rtmdet_nano_card

    rtmdet_nano_card().save(tmp_path)
    rc = main(
        [
            "--onnx",
            str(shared / "models" / "pp_tinypose_256x192.onnx"),
            "--card",
            str(tmp_path / "card.json"),
            "--model-repository",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "does not match" in err and "image" in err


def test_shared_models_registered_via_environment(shared, clean_env, tmp_path, monkeypatch, capsys):
    from service.repository import ModelRepository

    repo = tmp_path / "repo"
    monkeypatch.setenv("HRNET_MODEL_REPOSITORY", str(repo))
    monkeypatch.setenv("HRNET_SHARED_DIR", str(shared))
    assert main(["--shared-models"]) == 0
    cards = ModelRepository(repo).cards
    assert set(cards) == {PP_TINYPOSE, RTMDET_NANO}
    assert cards[PP_TINYPOSE].task == "topdown_pose" and cards[RTMDET_NANO].task == "detection"
    assert _parse_config(repo / PP_TINYPOSE).max_batch_size == 32
    assert _parse_config(repo / RTMDET_NANO).max_batch_size == 1
    for name in (PP_TINYPOSE, RTMDET_NANO):
        src = shared / "models" / f"{name}.onnx"
        assert (repo / name / "1" / "model.onnx").read_bytes() == src.read_bytes()


def test_unknown_arch_exits_2_naming_it(clean_env, tmp_path, capsys):
    rc = main(
        ["--arch", "hrnet_w99_nonsense", "--random-init", "--model-repository", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("hrnet-export: error:") and "hrnet_w99_nonsense" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            [
                "--arch",
                "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
                "--checkpoint",
                "/nonexistent/x.pth",
            ],
            "checkpoint file not found",
        ),
        (
            ["--onnx", "/nonexistent/m.onnx", "--card", "/nonexistent/card.json"],
            "ONNX file not found",
        ),
        (["--arch", "td-hm_hrnet-w32_8xb64-210e_coco-256x192"], "--random-init"),
        (
            [
                "--arch",
                "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
                "--random-init",
                "--checkpoint",
                "a.pth",
            ],
            "not both",
        ),
        ([], "choose exactly one"),
        (
            ["--arch", "td-hm_hrnet-w32_8xb64-210e_coco-256x192", "--random-init", "--rtol=-1e-5"],
            "--rtol must be >= 0, got 0.0001 and -1e-05",
        ),
        (
            ["--shared-models", "--shared-dir", "/nonexistent/shared"],
            "shared models folder not found",
        ),
    ],
)
def test_usage_errors_exit_2(clean_env, tmp_path, capsys, argv, needle):
    rc = main(argv + ["--model-repository", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


def test_missing_repository_and_bad_env_value(shared, clean_env, monkeypatch, capsys):
    assert main(["--shared-models", "--shared-dir", str(shared)]) == 2
    assert "no model repository" in capsys.readouterr().err
    monkeypatch.setenv("HRNET_EXPORT_NO_CHECK", "maybe")
    assert main(["--shared-models"]) == 2
    assert "HRNET_EXPORT_NO_CHECK" in capsys.readouterr().err


def test_append_options_and_tolerances_from_environment(clean_env, monkeypatch):
    """Repeatable options take comma/whitespace lists from the environment (not characters)."""
    from export.cli import CLIError, parse_args

    def parse(argv, **env):
        clear_export_env(monkeypatch)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        return parse_args(argv)

    args = parse([], HRNET_EXPORT_ZOO="td-hm_a,td-hm_b", HRNET_EXPORT_CHECK_SIZE="64x128, 97x97")
    assert args.zoo == ["td-hm_a", "td-hm_b"]
    assert args.check_size == [(64, 128), (97, 97)]
    assert parse([], HRNET_EXPORT_ZOO=" a  b,c ").zoo == ["a", "b", "c"]
    assert parse([], HRNET_EXPORT_ZOO="only").zoo == ["only"]
    assert parse(["--zoo", "x"], HRNET_EXPORT_ZOO="a,b").zoo == ["x"]  # flag wins
    # parity tolerances: defaults, environment, flag over environment
    args = parse([])
    assert (args.atol, args.rtol) == (1e-4, 1e-5)
    args = parse([], HRNET_EXPORT_RTOL="3e-5", HRNET_EXPORT_ATOL="2e-4")
    assert (args.atol, args.rtol) == (2e-4, 3e-5)
    assert parse(["--rtol", "0"], HRNET_EXPORT_RTOL="3e-5").rtol == 0.0
    with pytest.raises(CLIError, match="HRNET_EXPORT_CHECK_SIZE"):
        parse([], HRNET_EXPORT_CHECK_SIZE="64x128,big")
    with pytest.raises(CLIError, match="HRNET_EXPORT_RTOL"):
        parse([], HRNET_EXPORT_RTOL="tiny")
