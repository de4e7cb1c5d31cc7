"""``hrnet-export``: checkpoint -> ONNX -> Triton model-repository entry (config + card + model).

Three modes::

    # a registry model from a published checkpoint (file or URL), or random weights
    hrnet-export --arch td-hm_hrnet-w32_8xb64-210e_coco-256x192 --checkpoint FILE_OR_URL \\
                 --name hrnet_w32_coco --model-repository models/
    hrnet-export --arch fcn_hr18s_4xb2-40k_cityscapes-512x1024 --random-init --model-repository models/

    # an existing ONNX file with its card
    hrnet-export --onnx model.onnx --card card.json --name NAME --model-repository models/

    # the two real models of the shared folder (PP-TinyPose, RTMDet-nano)
    hrnet-export --shared-models [--shared-dir ../shared] --model-repository models/

Every option can also come from the environment: ``HRNET_MODEL_REPOSITORY``,
``HRNET_CACHE_DIR`` and ``HRNET_SHARED_DIR`` (shared with the rest of the project), and
``HRNET_EXPORT_<OPTION>`` for the others (``HRNET_EXPORT_ARCH``, ``HRNET_EXPORT_CHECKPOINT``,
``HRNET_EXPORT_MAX_BATCH_SIZE``, ``HRNET_EXPORT_RANDOM_INIT=1``, ...), read by
:class:`export.settings.ExportSettings`. A command-line flag wins over the environment.

Exit status: 0 on success, 2 with a one-line ``hrnet-export: error: ...`` message on stderr for a
usage error, an unknown arch, a missing file, a bad checkpoint, a failed parity check or a
card that does not match its graph.

This module only parses options; ``--arch`` runs :func:`export.pipeline.export_model`, which other
code can call directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from .paths import default_shared_dir
from .pipeline import PROG, ExportInputError, export_model, registry_entry
from .settings import ExportSettings, env_error, parse_hw

if TYPE_CHECKING:
    from service.cards import ModelCard

log = logging.getLogger("export.cli")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        return parse_hw(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _choices(field: str) -> tuple[str, ...]:
    """The values :class:`ExportSettings` allows for option ``field`` (its ``Literal``)."""
    return get_args(ExportSettings.model_fields[field].annotation)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: its namespace holds only the options given (no defaults, which
    :class:`export.settings.ExportSettings` fills from the environment, then its own)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export HRNet checkpoints to ONNX and write Triton model-repository "
        "entries (config.pbtxt + card.json + 1/model.onnx).",
        epilog="Each option may be set by environment: HRNET_MODEL_REPOSITORY, HRNET_CACHE_DIR, "
        "HRNET_SHARED_DIR, otherwise HRNET_EXPORT_<OPTION> (e.g. HRNET_EXPORT_ARCH, "
        "HRNET_EXPORT_RANDOM_INIT=1, HRNET_EXPORT_ZOO='a,b'); a flag wins over the environment.",
        argument_default=argparse.SUPPRESS,
    )

    mode = p.add_argument_group("what to register")
    mode.add_argument(
        "--arch",
        help="registry model name (training.registry), e.g. "
        "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
    )
    mode.add_argument(
        "--checkpoint",
        help="checkpoint file or http(s)/file URL (published "
        "MMPose 1.x/0.x, MMSeg or original-HRNet layout; loaded strictly)",
    )
    mode.add_argument(
        "--random-init",
        action="store_true",
        help="no checkpoint: fixed-seed random weights (tests/demos)",
    )
    mode.add_argument("--onnx", help="register this existing ONNX file (needs --card)")
    mode.add_argument("--card", help="card.json for --onnx")
    mode.add_argument(
        "--shared-models",
        action="store_true",
        help="register the shared PP-TinyPose and RTMDet-nano ONNX models",
    )
    mode.add_argument(
        "--shared-dir",
        help="shared data folder (default: $HRNET_SHARED_DIR, else ../shared beside the "
        "project root of the current directory if it exists, else beside this checkout)",
    )
    mode.add_argument(
        "--zoo",
        action="append",
        metavar="ARCH",
        help="with --shared-models: also export this registry model from its "
        "published checkpoint URL, best effort (skipped with a message when torch "
        "is not installed or the URL cannot be reached); repeatable",
    )
    mode.add_argument(
        "--list",
        action="store_true",
        dest="list_archs",
        help="list the registry model names and exit",
    )

    out = p.add_argument_group("where and how")
    out.add_argument(
        "--name",
        help="model name in the repository (default: --arch, or the card's name with --onnx)",
    )
    out.add_argument("--model-repository", help="Triton model repository folder")
    out.add_argument("--cache-dir", help="download cache for checkpoint URLs")
    out.add_argument(
        "--max-batch-size",
        type=int,
        help="Triton max_batch_size (default 32 for "
        "pose, 8 for segmentation, the card's value with --onnx)",
    )
    out.add_argument(
        "--instance-kind",
        choices=_choices("instance_kind"),
        help="Triton instance_group kind (default KIND_GPU)",
    )
    out.add_argument("--instance-count", type=int, help="Triton instances per device (default 1)")
    out.add_argument(
        "--trt",
        action="store_true",
        help="enable ONNX Runtime's TensorRT execution accelerator in config.pbtxt",
    )
    out.add_argument(
        "--triton-backend",
        choices=_choices("triton_backend"),
        help="Triton backend in config.pbtxt: onnxruntime (platform onnxruntime_onnx, default) "
        "or Triton's OpenVINO backend on the same model.onnx (openvino-bf16: its HINT_BF16)",
    )
    out.add_argument(
        "--link",
        choices=_choices("link"),
        help="how model.onnx gets into the repository (default copy)",
    )

    exp = p.add_argument_group("export")
    exp.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    exp.add_argument(
        "--exporter",
        choices=_choices("exporter"),
        help="torch.onnx path: auto (default: dynamo, falling back to the legacy "
        "TorchScript exporter for batch-only graphs), dynamo, legacy",
    )
    exp.add_argument(
        "--seed", type=int, help="seed of --random-init weights and parity inputs (default 0)"
    )
    exp.add_argument(
        "--no-check",
        action="store_true",
        help="skip the ONNX Runtime vs PyTorch parity check",
    )
    exp.add_argument(
        "--atol",
        type=float,
        help="parity tolerance, absolute part: passes when "
        "max|onnx - torch| <= atol + rtol * max|torch| (default 1e-4)",
    )
    exp.add_argument(
        "--rtol",
        type=float,
        help="parity tolerance, relative part: times the "
        "largest |output| of PyTorch on that input (default 1e-5; float32 error "
        "grows with the logits' magnitude)",
    )
    exp.add_argument(
        "--check-size",
        action="append",
        type=_parse_hw,
        metavar="HxW",
        help="segmentation and bottom-up parity sizes in pixels (repeatable). "
        "Segmentation: batch 2, default half the training crop and a size that is "
        "not a multiple of 32; bottom-up: batches 1 and 2, default SxS*3/2 and "
        "(S+128)xS for the test size S (512x768 and 640x512 at 512), multiples of "
        "64 as upstream's resize gives",
    )
    prec = p.add_argument_group("reduced precision (export.quantize; top-down pose models)")
    prec.add_argument(
        "--precision",
        choices=_choices("precision"),
        help="fp32 (default) or int8: ONNX Runtime static QDQ int8, calibrated on "
        "person crops of --calibration; refused (nothing written) when its keypoint "
        "agreement with the fp32 graph on those crops is below --min-agreement. "
        "With --shared-models the int8 PP-TinyPose is added as "
        "<name>_int8 beside the fp32 entries",
    )
    prec.add_argument(
        "--calibration",
        metavar="DIR",
        help="COCO-style folder (annotation json "
        "under DIR/annotations/ or DIR, images by file_name) whose ground-truth "
        "boxes give the calibration crops, e.g. ../shared/data/coco_mini",
    )
    prec.add_argument(
        "--calibration-ann",
        metavar="FILE",
        help="the COCO-style annotation json of the calibration boxes (e.g. a train "
        "split: runs/dlc_data/annotations/train.json with --calibration "
        "runs/dlc_data/images); default: the first json in name order under "
        "--calibration DIR/annotations/ or DIR",
    )
    prec.add_argument(
        "--calibration-crops",
        type=int,
        help="at most this many calibration crops (default 128)",
    )
    prec.add_argument(
        "--calibration-method",
        choices=_choices("calibration_method"),
        help="activation ranges from the crops: minmax (default; memory stays "
        "small), percentile (99.999th of |x|) or entropy; the last two hold every "
        "activation of every crop in memory (HRNet-W32 256x192: ~0.2 GB a crop)",
    )
    prec.add_argument(
        "--fp32-nodes",
        metavar="NAMES",
        help="comma list of node names left in "
        "fp32 (mixed precision); unnamed nodes are named <op_type>_<index> after "
        "ONNX Runtime's pre-processing (export.quantize.name_nodes). 'auto' or "
        "'auto:K' (may follow names): keep the nodes reading the worst-quantised "
        "activations (lowest SQNR on the calibration crops) in fp32, 8, 16, 32, ... "
        "of them, until --min-agreement is reached or K (default 256) are kept "
        "(export.sensitivity)",
    )
    prec.add_argument(
        "--min-agreement",
        type=float,
        help="keypoint agreement (mean OKS of the "
        "reduced graph's keypoints vs the fp32 graph's on the calibration crops, "
        "1 = identical) an int8 entry needs (default 0.95)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def parse_args(argv: Sequence[str] | None = None) -> ExportSettings:
    """Parse ``argv`` (default ``sys.argv[1:]``): the flags given, over the environment
    (``os.environ``, see :mod:`export.settings`), over the defaults.

    Raises ``SystemExit(2)`` (argparse) for malformed flags and :class:`CLIError` naming the
    variable for a malformed environment value.
    """
    given = vars(build_parser().parse_args(argv))
    try:
        return ExportSettings(**given)
    except ValidationError as exc:
        raise CLIError(env_error(exc)) from None


def _config_kw(args: ExportSettings) -> dict:
    kw: dict[str, Any] = dict(
        instance_kind=args.instance_kind,
        instance_count=args.instance_count,
        trt_accelerator=bool(args.trt),
    )
    if args.triton_backend.startswith("openvino"):
        kw.update(backend="openvino", openvino_bf16=args.triton_backend == "openvino-bf16")
    if args.max_batch_size is not None:
        if args.max_batch_size < 1:
            raise CLIError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
        kw["max_batch_size"] = args.max_batch_size
    return kw


def _repository(args: ExportSettings) -> Path:
    if not args.model_repository:
        raise CLIError(
            "no model repository: give --model-repository DIR (or set HRNET_MODEL_REPOSITORY)"
        )
    return Path(args.model_repository)


def _run_shared(args: ExportSettings) -> int:
    from .shared_models import register_shared_models

    shared = Path(args.shared_dir) if args.shared_dir else default_shared_dir()
    if not (shared / "models").is_dir():
        raise CLIError(
            f"shared models folder not found: {shared / 'models'} "
            "(give --shared-dir or set HRNET_SHARED_DIR)"
        )
    written = register_shared_models(shared, _repository(args), link=args.link, **_config_kw(args))
    for name, path in written.items():
        print(f"registered {name}: {path}")
    if args.precision != "fp32":
        from .shared_models import PP_TINYPOSE, pp_tinypose_card, shared_model_path

        _write_reduced(
            args,
            f"{PP_TINYPOSE}_{args.precision}",
            shared_model_path(shared, PP_TINYPOSE),
            pp_tinypose_card(),
        )
    for arch in args.zoo or []:
        _export_zoo_best_effort(args, arch)
    return 0


def _export_zoo_best_effort(args: ExportSettings, arch: str) -> None:
    """Export registry model ``arch`` from its published URL; print why when it cannot be done.

    Only a missing torch or a :class:`training.checkpoint.CheckpointError` (unreachable URL,
    sha256 mismatch, a file that does not load) is skipped (the gateway then serves the other
    models); an unknown ``arch`` and any other failure are errors like anywhere else.
    """
    entry = registry_entry(arch)
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"skipped {arch}: torch is not installed (pip install -e '.[train]')")
        return
    from training.checkpoint import CheckpointError  # torch is importable here

    try:
        export_model(arch, _repository(args), checkpoint=entry.url, **_export_kw(args))
    except CheckpointError as exc:  # download_checkpoint wraps network errors and bad hashes
        print(f"skipped {arch}: {exc}")


def _calibration(args: ExportSettings) -> str:
    """``--calibration``; raises :class:`CLIError` when it is not set."""
    if not args.calibration:
        raise CLIError(
            f"--precision {args.precision} needs --calibration DIR (person photos "
            "with a COCO-style box annotation json, e.g. ../shared/data/coco_mini)"
        )
    return args.calibration


def _check_precision_args(args: ExportSettings) -> None:
    if args.precision == "fp32":
        return
    _calibration(args)
    if args.calibration_crops < 1:
        raise CLIError(f"--calibration-crops must be >= 1, got {args.calibration_crops}")
    _auto_cap(_fp32_names(args))


def _fp32_names(args: ExportSettings) -> list[str]:
    return [n.strip() for n in (args.fp32_nodes or "").split(",") if n.strip()]


def _is_auto(name: str) -> bool:
    return name == "auto" or name.startswith("auto:")


#: --fp32-nodes auto: the most nodes the sensitivity search keeps in fp32
DEFAULT_AUTO_FP32_CAP = 256


def _auto_cap(names: list[str]) -> int | None:
    """The cap of an ``auto`` / ``auto:K`` entry of ``--fp32-nodes`` (None without one)."""
    autos = [n for n in names if _is_auto(n)]
    if not autos:
        return None
    if len(autos) > 1:
        raise CLIError(f"--fp32-nodes: give 'auto' at most once, got {', '.join(autos)}")
    text = autos[0].partition(":")[2]
    if not text:
        return DEFAULT_AUTO_FP32_CAP
    if not text.isdigit() or int(text) < 1:
        raise CLIError(f"--fp32-nodes: expected auto:K with K >= 1, got {autos[0]!r}")
    return int(text)


def _write_reduced(
    args: ExportSettings, name: str, onnx_path: Path, card
) -> tuple[Path, ModelCard]:
    """Quantise fp32 ``onnx_path`` to ``args.precision`` (:func:`export.quantize.reduce_precision`
    on ``--calibration`` crops), print the accuracy check and write entry ``name`` (copied).
    Returns the entry's path and its card; raises :class:`export.quantize.PrecisionRefused`
    before writing when the check fails."""
    from .quantize import calibration_crops, reduce_precision
    from .repository import write_entry

    names = _fp32_names(args)
    crops = calibration_crops(
        _calibration(args), card, limit=args.calibration_crops, ann_file=args.calibration_ann
    )
    with tempfile.TemporaryDirectory(prefix="hrnet-quant-") as tmp:
        reduced = Path(tmp) / "model.onnx"
        card, agreement = reduce_precision(
            onnx_path,
            reduced,
            card,
            crops,
            precision=args.precision,
            calibration_source=str(args.calibration_ann or args.calibration),
            method=args.calibration_method,
            exclude_nodes=[n for n in names if not _is_auto(n)],
            auto_fp32_cap=_auto_cap(names),
            min_agreement=args.min_agreement,
        )
        print(
            f"{args.precision} {name}: keypoint agreement with fp32 {agreement.mean_oks:.4f} "
            f"(mean OKS, {agreement.crops} calibration crops; required "
            f"{args.min_agreement:g}), argmax agreement {agreement.argmax_agreement:.4f}"
        )
        path = write_entry(_repository(args), name, reduced, card, link="copy", **_config_kw(args))
    print(f"registered {name}: {path}")
    return path, card


def _run_onnx(args: ExportSettings, onnx_path: Path) -> int:
    from service.cards import load_card

    from .repository import write_entry

    if not onnx_path.is_file():
        raise CLIError(f"ONNX file not found: {onnx_path}")
    if not args.card:
        raise CLIError("--onnx needs --card CARD.json (the model card to register it with)")
    card_path = Path(args.card)
    if not card_path.exists():
        raise CLIError(f"card file not found: {card_path}")
    try:
        card = load_card(card_path)
    except ValueError as exc:  # pydantic ValidationError, JSON errors
        raise CLIError(f"invalid card {card_path}: {exc}") from exc
    name = args.name or card.name
    if args.precision != "fp32":
        _write_reduced(args, name, onnx_path, card)
        return 0
    path = write_entry(_repository(args), name, onnx_path, card, link=args.link, **_config_kw(args))
    print(f"registered {name}: {path}")
    return 0


def _export_kw(args: ExportSettings) -> dict:
    """Keywords of :func:`export.pipeline.export_model` from the parsed options."""
    return dict(
        cache_dir=args.cache_dir,
        seed=args.seed,
        opset=args.opset,
        exporter=args.exporter,
        check=not args.no_check,
        atol=args.atol,
        rtol=args.rtol,
        check_sizes=args.check_size,
        config_kw=_config_kw(args),
    )


def _run_export(args: ExportSettings, arch: str) -> int:
    def write_reduced(name: str, onnx_path: Path, card: ModelCard) -> tuple[Path, ModelCard]:
        return _write_reduced(args, name, onnx_path, card)  # the int8 graph instead of the fp32 one

    write = write_reduced if args.precision != "fp32" else None

    export_model(
        arch,
        _repository(args),
        name=args.name,
        checkpoint=args.checkpoint,
        random_init=bool(args.random_init),
        write=write,
        **_export_kw(args),
    )
    return 0


def _run(args: ExportSettings) -> int:
    if args.list_archs:
        from training.registry import list_entries

        for e in list_entries():
            print(f"{e.name}\t{e.task}\t{e.arch}\t{e.dataset}")
        return 0
    modes = [
        m
        for m, on in (
            ("--shared-models", args.shared_models),
            ("--onnx", bool(args.onnx)),
            ("--arch", bool(args.arch)),
        )
        if on
    ]
    if len(modes) == 1:
        _check_precision_args(args)
        if args.shared_models:
            return _run_shared(args)
        if args.onnx:
            return _run_onnx(args, Path(args.onnx))
        if args.arch:
            return _run_export(args, args.arch)
    raise CLIError(
        "choose exactly one of --arch (export a checkpoint), --onnx (register an "
        "ONNX file) or --shared-models" + (f"; got {' and '.join(modes)}" if modes else "")
    )


def _reported_errors() -> tuple[type[BaseException], ...]:
    """Exception types printed as ``Type: message`` (exit 2) rather than a traceback: ValueError
    (pydantic's ValidationError is one: card validation, config values) and, where torch is
    installed, ``training.checkpoint.CheckpointError``."""
    errors: list[type[BaseException]] = [ValueError]
    try:
        from training.checkpoint import CheckpointError
    except ImportError:  # the torch-free install: no checkpoints are read
        return tuple(errors)
    return (*errors, CheckpointError)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``hrnet-export``; returns the exit status (0 ok, 2 error)."""
    try:
        args = parse_args(argv)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse usage errors (already printed) and --help
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .onnx_export import ExportError

    try:
        return _run(args)
    except (CLIError, ExportInputError) as exc:
        msg = str(exc)
    except ExportError as exc:
        msg = f"export failed: {exc}"
    except FileNotFoundError as exc:
        msg = f"file not found: {exc.filename or exc}"
    except _reported_errors() as exc:  # CheckpointError, card validation, config values
        msg = f"{type(exc).__name__}: {exc}"
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
