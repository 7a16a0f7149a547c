"""The command line, `python -m app [--host H] [--port P] [--grpc-port G] [--workers N] [--models-dir DIR]
[--log-level L]`: run the service with uvicorn (HTTP, and gRPC in the same event loop).
Everything else comes from the environment (`AE_*`, see app/settings.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from app.runtime.logs import uvicorn_log_config
from app.runtime.memory import tuned_environment
from app.runtime.metrics import MULTIPROC_ENV
from app.server.protocol import PROTOCOL as HTTP_PROTOCOL
from app.settings import ENV_PREFIX, get_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app", description="Serve the autoencoders over HTTP.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--workers", type=int, help=f"worker processes (default {ENV_PREFIX}WORKERS or 1)")
    p.add_argument("--models-dir", type=Path, help=f"models directory (default {ENV_PREFIX}MODELS_DIR or models/)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    p.add_argument("--grpc-port", type=int, help=f"gRPC port, 0 for none (default {ENV_PREFIX}GRPC_PORT or 8001)")
    p.add_argument("--root-path", default="", help="path prefix when served behind a proxy")
    p.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        help=f"seconds from SIGTERM to exit, drain included (default {ENV_PREFIX}GRACEFUL_TIMEOUT_SECONDS or 25)",
    )
    return p.parse_args(argv)


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Flags become environment variables so that every worker process builds the same settings.
    overrides = {
        "WORKERS": args.workers,
        "MODELS_DIR": args.models_dir,
        "LOG_LEVEL": args.log_level,
        "GRACEFUL_TIMEOUT_SECONDS": args.timeout_graceful_shutdown,
        "GRPC_PORT": args.grpc_port,
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[f"{ENV_PREFIX}{key}"] = str(value)
    os.environ.setdefault(f"{ENV_PREFIX}GRPC_HOST", args.host)  # gRPC listens where HTTP does, unless told
    get_settings.cache_clear()
    settings = get_settings()
    tuned = tuned_environment(settings.malloc_tunables, os.environ) if argv is None else None
    if tuned is not None:  # glibc reads its tunables at start only: the same command again, with them
        os.execve(sys.executable, sys.orig_argv, tuned)
    # SIGTERM first drains (app/runtime/lifecycle.py, AE_DRAIN_SECONDS), then uvicorn closes the listener and gives the
    # in-flight requests the rest of the grace period.
    args.timeout_graceful_shutdown = settings.shutdown_timeout()
    # uvicorn drains on SIGTERM, then re-raises the signal through the handler it found: make that handler a
    # clean exit, so an orderly stop (Kubernetes, systemd) ends with status 0 rather than "killed by SIGTERM".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with multiprocess_metrics(settings.workers):
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
            http=HTTP_PROTOCOL,  # httptools with a deadline and a size limit on request heads (app/server/protocol.py)
            proxy_headers=True,
            forwarded_allow_ips=",".join(settings.forwarded_allow_ips),  # whose X-Forwarded-For names the client
        )
    return 0


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[None]:
    """With several workers, a fresh temporary `PROMETHEUS_MULTIPROC_DIR` (removed at exit) so that `/metrics`
    adds up every worker's values. Set before uvicorn spawns the workers, which inherit it; one already set in
    the environment is used as it is (and kept)."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="ae-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
