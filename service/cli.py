"""``hrnet-serve``: run the gateway with uvicorn (every flag also settable by HRNET_* env vars)."""

from __future__ import annotations

import argparse
from typing import get_args

from .memory import limit_malloc_arenas
from .observability import configure_logging
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    """Parse flags (defaults from HRNET_* env), then serve until SIGTERM/SIGINT; returns 0 after
    the graceful shutdown (:func:`service.lifecycle.serve`)."""
    defaults = Settings()
    p = argparse.ArgumentParser(prog="hrnet-serve", description=__doc__)
    p.add_argument(
        "--model-repository",
        default=str(defaults.model_repository),
        help="model repository folder (HRNET_MODEL_REPOSITORY)",
    )
    p.add_argument(
        "--backend",
        choices=get_args(Settings.model_fields["backend"].annotation),
        default=defaults.backend,
        help="inference backend (HRNET_BACKEND)",
    )
    p.add_argument("--triton-url", default=defaults.triton_url, help="HRNET_TRITON_URL")
    p.add_argument(
        "--openvino-precision",
        choices=get_args(Settings.model_fields["openvino_precision"].annotation),
        default=defaults.openvino_precision,
        help="OpenVINO backend: inference precision of every model (HRNET_OPENVINO_PRECISION; "
        "per model: HRNET_OPENVINO_PRECISIONS)",
    )
    p.add_argument("--host", default=defaults.host, help="HRNET_HOST")
    p.add_argument("--port", type=int, default=defaults.port, help="HRNET_PORT")
    p.add_argument("--log-level", default=defaults.log_level, help="HRNET_LOG_LEVEL")
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        default=defaults.log_format,
        help="json: one JSON object per line, one line per request (HRNET_LOG_FORMAT)",
    )
    args = p.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    limit_malloc_arenas(defaults.malloc_arena_max)  # before any worker thread exists
    settings = defaults.model_copy(
        update={
            "model_repository": args.model_repository,
            "backend": args.backend,
            "triton_url": args.triton_url,
            "openvino_precision": args.openvino_precision,
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
            "log_format": args.log_format,
        }
    )
    from .app import create_app
    from .lifecycle import serve

    return serve(create_app(settings), settings, log_level=args.log_level)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
