"""`python -m app [--host H] [--port P] [--workers N] [--models-dir DIR] [--log-level L]`: run the service
with uvicorn. Everything else comes from the environment (`AE_*`, see app/settings.py)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import uvicorn

from app.logs import uvicorn_log_config
from app.settings import ENV_PREFIX, get_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app", description="Serve the autoencoders over HTTP.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--workers", type=int, help=f"worker processes (default {ENV_PREFIX}WORKERS or 1)")
    p.add_argument("--models-dir", type=Path, help=f"models directory (default {ENV_PREFIX}MODELS_DIR or models/)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    p.add_argument("--root-path", default="", help="path prefix when served behind a proxy")
    p.add_argument("--timeout-graceful-shutdown", type=float, default=30.0, help="seconds to finish in-flight requests")
    return p.parse_args(argv)


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Flags become environment variables so that every worker process builds the same settings.
    overrides = {"WORKERS": args.workers, "MODELS_DIR": args.models_dir, "LOG_LEVEL": args.log_level}
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"{ENV_PREFIX}{key}"] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    # uvicorn drains on SIGTERM, then re-raises the signal through the handler it found: make that handler a
    # clean exit, so an orderly stop (Kubernetes, systemd) ends with status 0 rather than "killed by SIGTERM".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=settings.workers,
        log_config=uvicorn_log_config(settings.log_level, settings.log_json),
        access_log=False,
        root_path=args.root_path,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
