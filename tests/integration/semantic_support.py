"""A semantic collection for the tests, and the reader process of the cross-process test.

``python -m tests.integration.semantic_support ENV_JSON`` is a second process: it starts its own
DataLayer on the test's environment, serves the collection's projections (its own FAISS index),
then for each position read on stdin prints the ids a ``search(consistent_at=position)`` finds.
"""

from __future__ import annotations

import asyncio
import json
import sys

from satellites_es.config import DataLayerConfig
from satellites_es.facade import DataLayer
from satellites_es.semantic import HashingEmbedder, SemanticSchema, SemanticStore

#: Small vectors keep the tests quick; two models of different dimensions for re-embedding.
MODEL_A = HashingEmbedder(64)
MODEL_B = HashingEmbedder(32)


def make_schema(*embedders: HashingEmbedder) -> SemanticSchema:
    return SemanticSchema(
        "docs",
        text_fields=("title", "body"),
        metadata_fields=("topic",),
        cached_fields=("title",),
        embedders=embedders or (MODEL_A, MODEL_B),
    )


def env_without_bus(env: dict[str, str]) -> dict[str, str]:
    """The projectors read the log: the tests need no relay or broker."""
    return {**env, "SATELLITES_RABBITMQ_ENABLED": "false", "SATELLITES_RELAY_ENABLED": "false"}


async def _reader(env: dict[str, str]) -> None:
    async with DataLayer(DataLayerConfig.from_env(env)) as data:
        docs = SemanticStore(data, make_schema())
        service = docs.serve(poll_interval=0.1)
        await service.start()
        try:
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                position, query = line.rstrip("\n").split(" ", 1)
                hits = await docs.search(query, k=5, consistent_at=int(position), timeout=60)
                print(json.dumps([h.id for h in hits]), flush=True)
        finally:
            await service.stop()


if __name__ == "__main__":
    asyncio.run(_reader(json.loads(sys.argv[1])))
