"""Where ``satellites-es`` finds the projections to run, rebuild and audit.

In order, the first that gives any:

1. ``SATELLITES_PROJECTIONS_MODULE`` (``DataLayerConfig.projections_module``): a module with a
   ``PROJECTIONS`` mapping of name to :class:`~satellites_es.projections.Projection`. It is
   imported as is, then from the working directory (a package in the current directory).
2. The ``satellites_es.projections`` entry-point group of every installed distribution: each
   entry point names a ``PROJECTIONS`` mapping, a module holding one, or a single
   ``Projection``. In a user's ``pyproject.toml``::

       [project.entry-points."satellites_es.projections"]
       myapp = "myapp.projections:PROJECTIONS"

   Two entry points defining one name is a configuration error naming both.
3. The demo's projections (:mod:`satellites_es.demo.projections`), so an installed wheel can
   run ``demo``, ``rebuild embeddings`` and ``audit`` without any of the user's.

The module of 1. may also define ``UPCASTERS``, an :class:`~satellites_es.upcasting.Upcasters`:
the commands then read the log through it (:func:`upcasters_of`), as the application does.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigurationError
from ..upcasting import Upcasters
from .model import Projection

__all__ = [
    "ENTRY_POINT_GROUP",
    "discover",
    "from_entry_points",
    "from_module",
    "load_projections",
    "upcasters_of",
]

ENTRY_POINT_GROUP = "satellites_es.projections"
_VAR = "SATELLITES_PROJECTIONS_MODULE"


def discover(module: str | None) -> dict[str, Projection]:
    """The projections, from ``module`` if named, else entry points, else the demo's."""
    if module:
        return from_module(module)
    installed = from_entry_points()
    if installed:
        return installed
    from ..demo.projections import PROJECTIONS

    return dict(PROJECTIONS)


def load_projections(module: str | None = None) -> dict[str, Projection]:
    """The projections the commands run: ``module``'s ``PROJECTIONS`` if named, else those of
    the installed ``satellites_es.projections`` entry points, else the demo's."""
    return discover(module)


def upcasters_of(module: str | None) -> Upcasters | None:
    """``UPCASTERS`` of the projections module, if it names one that defines it."""
    if not module:
        return None
    found = getattr(_import(module), "UPCASTERS", None)
    if found is not None and not isinstance(found, Upcasters):
        raise ConfigurationError(_VAR, f"{module}.UPCASTERS must be an Upcasters registry")
    return found


def from_module(module: str) -> dict[str, Projection]:
    """``PROJECTIONS`` of ``module``, imported as is or from the working directory."""
    return _checked(_mapping(_import(module), module), module)


def from_entry_points() -> dict[str, Projection]:
    found: dict[str, Projection] = {}
    owner: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        for name, projection in _from_entry_point(ep).items():
            if name in found:
                raise ConfigurationError(
                    f"entry point {ep.name!r} ({ep.value})",
                    f"projection {name!r} is also defined by entry point {owner[name]!r}",
                )
            found[name], owner[name] = projection, ep.name
    return found


def _from_entry_point(ep: EntryPoint) -> dict[str, Projection]:
    where = f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP}"
    try:
        loaded = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(where, f"cannot be loaded: {exc}") from exc
    if isinstance(loaded, Projection):
        return {loaded.name: loaded}
    if isinstance(loaded, ModuleType):
        return _checked(_mapping(loaded, where), where)
    if isinstance(loaded, Mapping):
        return _checked(loaded, where)
    raise ConfigurationError(where, "must name a Projection, a PROJECTIONS mapping or a module")


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not module.startswith(exc.name):
            raise ConfigurationError(_VAR, f"{module}: {exc}") from exc  # a missing dependency
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError:
            pass
    raise ConfigurationError(_VAR, f"no module {module!r} (searched sys.path and {cwd})")


def _mapping(mod: ModuleType, where: str) -> Mapping[str, Any]:
    found = getattr(mod, "PROJECTIONS", None)
    if not isinstance(found, Mapping):
        raise ConfigurationError(_VAR if where == mod.__name__ else where,
                                 f"{mod.__name__} has no PROJECTIONS mapping")  # fmt: skip
    return found


def _checked(mapping: Mapping[str, Any], where: str) -> dict[str, Projection]:
    out: dict[str, Projection] = {}
    for name, projection in mapping.items():
        if not isinstance(projection, Projection) or projection.name != name:
            raise ConfigurationError(
                _VAR if "entry point" not in where else where,
                f"PROJECTIONS[{name!r}] in {where} must be a Projection named {name!r}",
            )
        out[name] = projection
    return out
