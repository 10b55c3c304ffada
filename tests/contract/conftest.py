"""The contract suites' fixtures: the real implementations on this test's own Postgres schema,
Redis prefix, Elasticsearch index prefix and FAISS directory (the integration fixtures), beside
their in-memory twins."""

from __future__ import annotations

# the integration folder's fixtures: a migrated schema, its pool and store, the sink clients
from tests.integration.conftest import log_config, migrated, pg_config, pool, store  # noqa: F401
from tests.integration.sinks_support import es_client, redis_client, vectors  # noqa: F401
