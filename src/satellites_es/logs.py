"""Structured logs: every record of the stdlib loggers rendered by structlog.

The package logs through ``logging.getLogger(__name__)`` with lazy ``%`` arguments (cheap when a
level is off); :func:`configure` renders those records as JSON lines (``json``, for production
and log shippers) or coloured key-value lines (``console``), with a timestamp, level and logger.
"""

from __future__ import annotations

import logging
from typing import Literal

import structlog

__all__ = ["configure"]

Format = Literal["json", "console"]


def configure(level: int = logging.INFO, fmt: Format = "console") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
