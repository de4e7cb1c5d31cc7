"""``hrnet-export`` options from the environment (export.settings.ExportSettings) under
command-line flags (export.cli.parse_args): one test per kind of value (path, flag, list, int,
choice), the flag-over-environment order, the error naming a bad variable, and the parser's flags
matching the settings' fields one to one (so ``--help`` lists every setting)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from export.cli import CLIError, build_parser, parse_args
from export.settings import ExportSettings, env_name
from tests.export_fixtures import clear_export_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    clear_export_env(monkeypatch)


def test_defaults_without_environment_or_flags():
    s = parse_args([])
    assert (s.opset, s.exporter, s.seed, s.atol, s.rtol) == (17, "auto", 0, 1e-4, 1e-5)
    assert (s.instance_kind, s.instance_count, s.link, s.precision) == (
        "KIND_GPU",
        1,
        "copy",
        "fp32",
    )
    assert (s.calibration_crops, s.calibration_method, s.min_agreement) == (128, "minmax", 0.95)
    assert s.model_repository is None and s.max_batch_size is None and s.zoo is None
    assert not (s.random_init or s.shared_models or s.no_check or s.trt or s.verbose)


def test_paths_from_project_wide_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HRNET_MODEL_REPOSITORY", str(tmp_path / "repo"))
    monkeypatch.setenv("HRNET_SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("HRNET_CACHE_DIR", "")  # empty = unset
    monkeypatch.setenv("MODEL_REPOSITORY", "/not/this")  # only the HRNET_ name counts
    s = parse_args([])
    assert s.model_repository == tmp_path / "repo" and s.shared_dir == tmp_path / "shared"
    assert s.cache_dir is None
    assert parse_args(["--model-repository", "flag"]).model_repository == Path("flag")


@pytest.mark.parametrize(
    "raw,value",
    [
        ("1", True),
        ("true", True),
        (" Yes ", True),
        ("on", True),
        ("0", False),
        ("off", False),
        ("no", False),
        ("FALSE", False),
        ("", False),
    ],
)
def test_flags_from_environment(monkeypatch, raw, value):
    monkeypatch.setenv("HRNET_EXPORT_RANDOM_INIT", raw)
    assert parse_args([]).random_init is value
    assert parse_args(["--random-init"]).random_init is True


def test_bad_flag_names_its_variable(monkeypatch):
    monkeypatch.setenv("HRNET_EXPORT_TRT", "maybe")
    with pytest.raises(CLIError, match="HRNET_EXPORT_TRT='maybe': .*1/0, true/false"):
        parse_args([])


def test_lists_from_environment(monkeypatch):
    monkeypatch.setenv("HRNET_EXPORT_ZOO", "a, b c")
    monkeypatch.setenv("HRNET_EXPORT_CHECK_SIZE", "64x128 96X80")
    s = parse_args([])
    assert s.zoo == ["a", "b", "c"] and s.check_size == [(64, 128), (96, 80)]
    s = parse_args(["--check-size", "32x32", "--check-size", "8x16"])
    assert s.check_size == [(32, 32), (8, 16)] and s.zoo == ["a", "b", "c"]
    monkeypatch.setenv("HRNET_EXPORT_ZOO", " ")
    assert parse_args([]).zoo is None


def test_ints_and_choices_from_environment(monkeypatch):
    monkeypatch.setenv("HRNET_EXPORT_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("HRNET_EXPORT_OPSET", "18")
    monkeypatch.setenv("HRNET_EXPORT_INSTANCE_KIND", "KIND_CPU")
    s = parse_args([])
    assert (s.max_batch_size, s.opset, s.instance_kind) == (4, 18, "KIND_CPU")
    assert parse_args(["--max-batch-size", "2", "--opset", "17"]).max_batch_size == 2
    monkeypatch.setenv("HRNET_EXPORT_MAX_BATCH_SIZE", "four")
    with pytest.raises(CLIError, match="HRNET_EXPORT_MAX_BATCH_SIZE='four'"):
        parse_args([])
    monkeypatch.setenv("HRNET_EXPORT_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("HRNET_EXPORT_EXPORTER", "onnxscript")
    with pytest.raises(CLIError, match="HRNET_EXPORT_EXPORTER='onnxscript'"):
        parse_args([])


def test_empty_variable_is_unset_for_every_kind_of_option(monkeypatch):
    """pydantic-settings' ``env_ignore_empty``: an empty variable keeps the option's default,
    also for ints, floats, choices and strings (without it ``""`` is an invalid int / choice, and
    the string ``""`` for a text option)."""
    for var in (
        "MAX_BATCH_SIZE",
        "OPSET",
        "ATOL",
        "INSTANCE_KIND",
        "EXPORTER",
        "ARCH",
        "NAME",
        "CALIBRATION_ANN",
        "RANDOM_INIT",
        "ZOO",
        "CHECK_SIZE",
    ):
        monkeypatch.setenv(f"HRNET_EXPORT_{var}", "")
    monkeypatch.setenv("HRNET_MODEL_REPOSITORY", "")
    s = parse_args([])
    assert (s.max_batch_size, s.opset, s.atol, s.instance_kind, s.exporter) == (
        None,
        17,
        1e-4,
        "KIND_GPU",
        "auto",
    )
    assert s.arch is None and s.name is None and s.calibration_ann is None
    assert s.random_init is False and s.zoo is None and s.check_size is None
    assert s.model_repository is None
    # a flag given on the command line still wins over the (ignored) empty variable
    assert parse_args(["--opset", "18"]).opset == 18


def test_blank_values_that_the_library_does_not_ignore(monkeypatch):
    """``env_ignore_empty`` drops exactly ``""``; our validators keep whitespace-only flags off and
    blank lists unset, and an empty path given as a keyword (the command line) unset."""
    monkeypatch.setenv("HRNET_EXPORT_TRT", "  ")
    monkeypatch.setenv("HRNET_EXPORT_ZOO", " , ")
    s = parse_args([])
    assert s.trt is False and s.zoo is None
    s = parse_args(["--model-repository", "", "--shared-dir", "", "--cache-dir", ""])
    assert (s.model_repository, s.shared_dir, s.cache_dir) == (None, None, None)


def test_every_flag_is_a_setting_and_named_in_help():
    """The parser's long flags and the settings' fields are the same set (``--list`` is
    ``list_archs``), and the help names the environment variables' scheme."""
    # argparse wraps help lines after a hyphen ("--min-" / "agreement"): join those first
    text = re.sub(r"-\n\s+", "-", build_parser().format_help())
    flags = set(re.findall(r"--([a-z0-9][a-z0-9-]*)", text)) - {"help"}
    fields = {
        "list" if f == "list_archs" else f.replace("_", "-") for f in ExportSettings.model_fields
    }
    assert flags == fields
    assert "HRNET_MODEL_REPOSITORY" in text and "HRNET_EXPORT_<OPTION>" in text.replace("\n", " ")
    assert env_name("max_batch_size") == "HRNET_EXPORT_MAX_BATCH_SIZE"
    assert env_name("cache_dir") == "HRNET_CACHE_DIR"
