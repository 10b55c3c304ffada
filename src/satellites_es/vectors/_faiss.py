"""The faiss module, typed as ``Any``.

faiss-cpu 1.15 ships a ``__init__.pyi`` that lacks much of the SWIG API (``DirectMap``,
``SearchParametersHNSW``, ``set_direct_map_type``...), so strict mypy would reject correct calls.
The wrapper's own checks (dimension, finiteness, error translation) stand in for the stubs.
"""

from __future__ import annotations

from typing import Any

import faiss as _faiss

__all__ = ["faiss"]

faiss: Any = _faiss
