"""``hrnet-export`` options, read from the environment or passed explicitly (pydantic-settings,
as the gateway's :class:`service.settings.Settings`).

Environment names: ``HRNET_MODEL_REPOSITORY``, ``HRNET_CACHE_DIR`` and ``HRNET_SHARED_DIR``
(shared with the rest of the project), ``HRNET_EXPORT_<OPTION>`` for every other option
(``HRNET_EXPORT_ARCH``, ``HRNET_EXPORT_MAX_BATCH_SIZE``, ``HRNET_EXPORT_RANDOM_INIT=1``, ...;
names are matched case-insensitively). Keyword arguments (:func:`export.cli.parse_args` passes
the flags given on the command line) win over the environment, which wins over the defaults.

Environment strings: an empty variable is unset, for every option (pydantic-settings'
``env_ignore_empty``): the option keeps its default (flags off, lists and paths ``None``). Flags
take 1/0, true/false, yes/no, on/off (whitespace-only = off); repeatable options (``zoo``,
``check_size``) take a list separated by commas and/or whitespace (``HRNET_EXPORT_ZOO="a,b"`` or
``"a b"``, ``HRNET_EXPORT_CHECK_SIZE="64x128, 96x80"``; whitespace or commas only = unset). A
value that does not convert raises :class:`pydantic.ValidationError` (:func:`env_error` turns it
into one line naming the variable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "HRNET_EXPORT_"
#: options whose environment variable is project-wide rather than ``HRNET_EXPORT_*``
SHARED_ENV = {
    "model_repository": "HRNET_MODEL_REPOSITORY",
    "cache_dir": "HRNET_CACHE_DIR",
    "shared_dir": "HRNET_SHARED_DIR",
}
_TRUE = {"1", "true", "yes", "on"}
# "": a whitespace-only value (an empty variable never reaches the validators: env_ignore_empty)
_FALSE = {"0", "false", "no", "off", ""}


def env_name(field: str) -> str:
    """Environment variable of option ``field`` (e.g. ``max_batch_size`` ->
    ``HRNET_EXPORT_MAX_BATCH_SIZE``, ``model_repository`` -> ``HRNET_MODEL_REPOSITORY``)."""
    return SHARED_ENV.get(field, ENV_PREFIX + field.upper())


def parse_hw(text: str) -> tuple[int, int]:
    """``"HxW"`` (e.g. ``"256x512"``, case-insensitive ``x``) -> ``(h, w)`` positive pixels.
    Raises ``ValueError`` for anything else."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HxW (e.g. 256x512), got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {text!r}")
    return h, w


def _flag(value: Any) -> Any:
    """An environment flag string -> bool (1/0, true/false, yes/no, on/off, any case, blanks
    around ignored; whitespace-only = False). Raises ``ValueError`` for anything else."""
    if not isinstance(value, str):
        return value
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _words(value: Any) -> Any:
    """An environment list string -> its items, split at commas and/or whitespace (None if it
    has none, e.g. ``" "``); lists (repeated command-line flags) pass unchanged."""
    if not isinstance(value, str):
        return value
    return value.replace(",", " ").split() or None


def _sizes(value: Any) -> Any:
    """Like :func:`_words`, each item through :func:`parse_hw`."""
    words = _words(value)
    if not isinstance(value, str) or words is None:
        return words
    return [parse_hw(w) for w in words]


def _path(value: Any) -> Any:
    """An empty path is unset (None). Environment variables never reach here empty
    (env_ignore_empty); this is for keyword arguments: ``--model-repository "$UNSET"`` on the
    command line is "not given", not the working directory (``Path("")`` is ``.``)."""
    return None if value == "" else value


Flag = Annotated[bool, BeforeValidator(_flag)]
OptionalPath = Annotated[Path | None, BeforeValidator(_path)]


def _shared(field: str) -> Any:
    """A field read from its project-wide variable (:data:`SHARED_ENV`); by name as a keyword."""
    return Field(None, validation_alias=SHARED_ENV[field])


class ExportSettings(BaseSettings):
    """Every ``hrnet-export`` option (see ``hrnet-export --help`` for their meaning).

    Defaults are the command's: fp32, opset 17, the ``auto`` exporter, seed 0, parity tolerances
    ``atol=1e-4``, ``rtol=1e-5``, Triton ``KIND_GPU`` x 1, files copied; int8 calibration on at
    most 128 crops, ``minmax`` ranges, agreement 0.95. ``None`` means "not set" (the mode decides).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        protected_namespaces=(),
        validate_by_name=True,
        extra="forbid",
    )

    # what to register
    arch: str | None = None
    checkpoint: str | None = None
    random_init: Flag = False
    onnx: str | None = None
    card: str | None = None
    shared_models: Flag = False
    shared_dir: OptionalPath = _shared("shared_dir")
    zoo: Annotated[list[str] | None, NoDecode, BeforeValidator(_words)] = None
    list_archs: Flag = False

    # where and how
    name: str | None = None
    model_repository: OptionalPath = _shared("model_repository")
    cache_dir: OptionalPath = _shared("cache_dir")
    max_batch_size: int | None = None  # None: 32 pose, 8 segmentation, the card's with --onnx
    instance_kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = "KIND_GPU"
    instance_count: int = 1
    trt: Flag = False
    triton_backend: Literal["onnxruntime", "openvino", "openvino-bf16"] = "onnxruntime"
    link: Literal["copy", "hardlink", "symlink"] = "copy"

    # export
    opset: int = 17
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"
    seed: int = 0
    no_check: Flag = False
    atol: float = 1e-4
    rtol: float = 1e-5
    check_size: Annotated[list[tuple[int, int]] | None, NoDecode, BeforeValidator(_sizes)] = None

    # reduced precision
    precision: Literal["fp32", "int8"] = "fp32"
    calibration: str | None = None
    calibration_ann: str | None = None
    calibration_crops: int = 128
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    fp32_nodes: str | None = None
    min_agreement: float = 0.95

    verbose: Flag = False


def env_error(exc: ValidationError) -> str:
    """One line naming the environment variable(s) and value(s) that failed to convert, e.g.
    ``HRNET_EXPORT_RTOL='tiny': Input should be a valid number, ...``."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        name = field if field.startswith("HRNET_") else env_name(field)
        parts.append(f"{name}={err['input']!r}: {err['msg']}")
    return "; ".join(parts)
