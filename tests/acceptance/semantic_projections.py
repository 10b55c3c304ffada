"""The projections module of the ``reembed`` command's test: a semantic collection's, exported
the way an application exports them (``PROJECTIONS = schema.projections``)."""

from tests.integration.semantic_support import make_schema

SCHEMA = make_schema()
PROJECTIONS = dict(SCHEMA.projections)
