"""The demo's projections, re-exported for code that imports them from the checkout's root.

They live in the package (:mod:`satellites_es.demo.projections`) so that an installed wheel has
them; this module is what ``SATELLITES_PROJECTIONS_MODULE=projections`` used to name.
"""

from __future__ import annotations

from satellites_es.demo.projections import PROJECTIONS, documents, embeddings, entities

__all__ = ["PROJECTIONS", "documents", "embeddings", "entities"]
