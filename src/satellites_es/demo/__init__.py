"""The demo pipeline (``satellites-es demo``): corpus, embedder, service choice and the flow."""

from __future__ import annotations

from .run import DemoReport, run_demo

__all__ = ["DemoReport", "run_demo"]
