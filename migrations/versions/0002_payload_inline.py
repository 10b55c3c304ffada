"""Events stored in the table row (``STORAGE MAIN``), not out of line in TOAST.

A 384-d embedding event's payload is ~2.2 KB of jsonb: above the ~2 KB at which Postgres moves a
value out of line, and base64 does not compress, so every such payload lived in TOAST and every
reference to it in a query fetched it from there again (an index lookup and two chunks). A
projection's replay reads the vector apart from the rest of the payload (``read_payloads``: four
references); on the project's machine the server's CPU per event was 25-29 us with out-of-line
payloads and 7.5 us with inline ones, and the plain full read 18-21 against 14-16 us.
``MAIN`` still compresses what compresses and still moves a value out of line when a row would
not fit a page (8 KB): only the ~2-8 KB band stays inline. It applies to rows written from now
on; rows already stored stay where they are (rewriting them is an ``UPDATE`` of the log, which
this migration does not do on a table that may be large).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


#: Every variable-length column: with only the payload MAIN, a row over ~2 KB had its largest
#: *other* column (the 36-character id) moved to TOAST instead, a lookup on every read of it.
COLUMNS = ("payload", "id", "resource", "key", "type", "source")


def upgrade() -> None:
    op.execute(
        "ALTER TABLE events "
        + ", ".join(f"ALTER COLUMN {column} SET STORAGE MAIN" for column in COLUMNS)
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE events "
        + ", ".join(f"ALTER COLUMN {column} SET STORAGE EXTENDED" for column in COLUMNS)
    )
