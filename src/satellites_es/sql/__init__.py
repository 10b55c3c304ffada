"""The SQL of the event log, kept in one place: ``queries.sql``, in named blocks.

A block starts with a ``-- name: <name>`` line and runs to the next one. Run-time blocks name
the schema as ``{schema}``; :func:`queries` substitutes a validated, quoted schema name (an
identifier cannot be a bind parameter, asyncpg #605). Blocks that name other identifiers (a
role, a database) take them through :func:`render`, the same substitution, from callers that
validated and quoted them. Blocks used by migrations carry a version suffix and are frozen once
released, so an old migration keeps creating what it created.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = [
    "SCHEMA_NAME", "UNIT_SEPARATOR", "joined_arrays", "load", "queries", "quote_schema", "render",
    "transaction_id_first",
]  # fmt: skip

#: The schema names we accept (the same rule as ``PostgresConfig.schema``).
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
#: What :func:`joined_arrays` splits on: ASCII's unit separator.
UNIT_SEPARATOR = "\x1f"
#: The same character as an SQL escape-string literal.
_SEPARATOR_LITERAL = f"E'\\x{ord(UNIT_SEPARATOR):02x}'"


@functools.cache
def _blocks() -> dict[str, str]:
    text = resources.files(__name__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def load(name: str) -> str:
    """The block called ``name``, as written (``KeyError`` if there is none)."""
    return _blocks()[name]


def quote_schema(schema: str) -> str:
    """``schema`` as a quoted identifier; ``ValueError`` unless it is a safe name."""
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"unsafe schema name {schema!r}: must match {SCHEMA_NAME.pattern}")
    return f'"{schema}"'


def _substituted(body: str, parts: dict[str, str]) -> str:
    for key, value in parts.items():
        body = body.replace("{" + key + "}", value)
    return body


def render(name: str, **parts: str) -> str:
    """The block called ``name`` with each ``{key}`` replaced by ``parts[key]``: SQL fragments
    the caller made safe (quoted identifiers, a server-quoted literal), never raw input."""
    return _substituted(_blocks()[name], parts)


def queries(schema: str) -> dict[str, str]:
    """Every block with ``{schema}`` replaced by the quoted ``schema``."""
    parts = {"schema": quote_schema(schema)}
    return {name: _substituted(body, parts) for name, body in _blocks().items()}


def transaction_id_first(create_block: str, old: str, new: str) -> str:
    """A released function's ``CREATE FUNCTION`` block as function ``new``, its body first
    taking the transaction's id (``pg_current_xact_id()``): migration 0006 makes the v4 append
    functions so from the frozen v3 blocks (the ``create_sequencer_state_v1`` paragraph says why)
    rather than keep a second copy of them that would have to stay in step."""
    renamed = create_block.replace(f"CREATE FUNCTION {old}(", f"CREATE FUNCTION {new}(", 1)
    body_start = renamed.index("\nBEGIN\n") + len("\nBEGIN\n")
    if renamed == create_block or old in renamed:
        raise ValueError(f"{old!r} is not the one function this block creates")
    return (renamed[:body_start]
            + "    PERFORM pg_current_xact_id();  -- before any pending number (migration 0006)\n"
            + renamed[body_start:])  # fmt: skip


def joined_arrays(query: str, params: tuple[int, ...]) -> str:
    """``query`` taking each array parameter ``$n::type[]`` of ``params`` as one text instead,
    its elements joined by :data:`UNIT_SEPARATOR` and split again by the server
    (``string_to_array``), then cast to the array type as before.

    Why: asyncpg checks every element of an array argument for a nested array, with two
    ``isinstance`` calls against ``collections.abc`` classes per string (Python-level
    ``ABCMeta.__instancecheck__``), which the batched append's seven text columns paid for every
    event (the figures are in BENCHMARKS.md, issue 17). A joined string costs the client one
    ``str.join``. Only for values that cannot hold the separator or be NULL: the
    caller checks (the store falls back to the arrays otherwise)."""
    for n in params:
        match = re.search(rf"\${n}::(\w+)\[\]", query)
        if match is None:
            raise ValueError(f"parameter ${n} is not an array parameter of the query")
        query = query.replace(
            match.group(0),
            f"string_to_array(${n}::text, {_SEPARATOR_LITERAL})::{match.group(1)}[]",
            1,
        )
    return query
