"""Structured logging: one JSON object per line, with the fields passed as `extra=` kept as top-level keys."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
# uvicorn attaches an ANSI-coloured copy of its message: noise in a JSON line.
_DROPPED = {"color_message"}
_SKIPPED = frozenset(_STANDARD | _DROPPED)


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "message": ..., <extra fields>}`."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        for key in vars(record).keys() - _SKIPPED:
            if not key.startswith("_"):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _Marker(logging.StreamHandler):  # type: ignore[type-arg]
    """Our handler, so configuring twice (tests create many apps) replaces rather than duplicates it."""


def configure_logging(level: str = "info", json_lines: bool = True) -> None:
    """Send the `app` loggers to stderr, JSON by default; idempotent."""
    logger = logging.getLogger("app")
    for handler in [h for h in logger.handlers if isinstance(h, _Marker)]:
        logger.removeHandler(handler)
    handler = _Marker(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # What every LogRecord would otherwise look up for fields our lines never show (the logging HOWTO's
    # "Optimization" section): thread and multiprocessing names. The pid comes from the formatter.
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False


def uvicorn_log_config(level: str = "info", json_lines: bool = True) -> dict[str, Any]:
    """uvicorn's own log lines in the same format (its access log is off: we log each request ourselves)."""
    formatter = (
        {"()": "app.runtime.logs.JsonFormatter"}
        if json_lines
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
