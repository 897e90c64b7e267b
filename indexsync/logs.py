"""Structured logging: one structlog pipeline for our events and for stdlib loggers."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

# Anything that looks like `scheme://user:password@host` keeps its user and loses the password.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Remove passwords from URLs and conninfo strings."""
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


def _redact_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def _without_tracebacks(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """One line per event: an exception becomes its message (tracebacks need --debug)."""
    info = event_dict.pop("exc_info", None)
    if info:
        error = info[1] if isinstance(info, tuple) else info
        if isinstance(error, BaseException):
            event_dict.setdefault("error", redact(f"{type(error).__name__}: {error}"))
    return event_dict


def configure(
    fmt: str | None = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Set up structlog and route the stdlib loggers (psycopg, elastic_transport) through it."""
    stream = stream if stream is not None else sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_values,
    ]
    debug = level.upper() == "DEBUG"
    if not debug:
        shared.append(_without_tracebacks)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The clients log every request at INFO and every failed one at WARNING, with a
    # traceback, each time the worker already says what failed and when it retries: only
    # their errors come through, unless --debug asks for everything.
    for name in ("elastic_transport", "opensearch", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)


def get_logger(name: str) -> Any:
    """A structlog logger for a module."""
    return structlog.get_logger(name)
