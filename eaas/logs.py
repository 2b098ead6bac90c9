"""Structured logs: one line per event, `key=value` pairs after a timestamp, level and component."""

from __future__ import annotations

import logging
import sys


def configure_logging(component: str, level: int = logging.INFO) -> None:
    """Send eaas logs to stderr as `ts=... level=... component=... event=... k=v`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"ts=%(asctime)s level=%(levelname)s component={component} %(message)s"))
    root = logging.getLogger("eaas")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _value(v) -> str:
    text = str(v)
    return f'"{text}"' if (" " in text or not text) else text


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, " ".join([f"event={event}"] + [f"{k}={_value(v)}" for k, v in fields.items()]))
