"""``hrnet-serve``: run the gateway with uvicorn (every flag also settable by HRNET_* env vars)."""
from __future__ import annotations

import argparse
import logging

from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    """Parse flags (defaults from HRNET_* env), then serve until SIGTERM/SIGINT; returns 0 after
    the graceful shutdown (:func:`service.lifecycle.serve`)."""
    defaults = Settings()
    p = argparse.ArgumentParser(prog="hrnet-serve", description=__doc__)
    p.add_argument("--model-repository", default=str(defaults.model_repository),
                   help="model repository folder (HRNET_MODEL_REPOSITORY)")
    p.add_argument("--backend", choices=["onnxruntime", "triton"], default=defaults.backend,
                   help="inference backend (HRNET_BACKEND)")
    p.add_argument("--triton-url", default=defaults.triton_url, help="HRNET_TRITON_URL")
    p.add_argument("--host", default=defaults.host, help="HRNET_HOST")
    p.add_argument("--port", type=int, default=defaults.port, help="HRNET_PORT")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = defaults.model_copy(update={
        "model_repository": args.model_repository, "backend": args.backend,
        "triton_url": args.triton_url, "host": args.host, "port": args.port})
    from .app import create_app
    from .lifecycle import serve
    return serve(create_app(settings), settings, log_level=args.log_level)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
