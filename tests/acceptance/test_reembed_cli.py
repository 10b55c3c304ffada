"""``satellites-es reembed NAME --embedder MODEL`` as an operator runs it: the vector projection
of a semantic collection is rebuilt with the second model (progress bar), flips, a serving
process follows the flip and then queries with that model, the audit is clean, and
``rollback`` restores the first model. Bad input exits 2 with one line."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from satellites_es.config import DataLayerConfig
from satellites_es.facade import DataLayer
from satellites_es.semantic import Embedder, SemanticStore
from tests.acceptance.semantic_projections import SCHEMA
from tests.integration.semantic_support import MODEL_A, MODEL_B

from .conftest import run_cli

MODULE = {"SATELLITES_PROJECTIONS_MODULE": "tests.acceptance.semantic_projections"}
DOCUMENTS = 300


async def _until_queried_with(docs: SemanticStore, model: Embedder, timeout: float = 60) -> None:
    """Wait for this process's follower to follow a flip made by the command."""
    deadline = time.monotonic() + timeout
    while await docs.query_embedder() is not model:
        assert time.monotonic() < deadline, f"still querying with {docs.query_embedder()}"
        await asyncio.sleep(0.1)


async def _scenario(env: dict[str, str], faiss_dir: Path) -> None:
    # a serving process of its own (its own FAISS directory), writing and searching
    config = DataLayerConfig.from_env({**env, "SATELLITES_FAISS_INDEX_PATH": str(faiss_dir)})
    config = config.replace(relay=dataclasses.replace(config.relay, enabled=False))
    async with DataLayer(config) as data:
        docs = SemanticStore(data, SCHEMA)
        service = docs.serve(poll_interval=0.1)
        service.projections = [SCHEMA.vectors]
        await service.start()
        try:
            changes = docs.changeset()
            for i in range(DOCUMENTS):
                changes.put_document(f"d{i}", {"title": f"note {i} on ranking",
                                               "body": f"document {i}", "topic": "t"})  # fmt: skip
            committed = await changes.commit()
            assert committed.position is not None
            await data.wait_for(committed.position, [SCHEMA.vectors], timeout=60)
            assert await docs.query_embedder() is MODEL_A

            done = await asyncio.to_thread(
                run_cli, ["reembed", "docs_vectors", "--embedder", MODEL_B.name], env
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"re-embed docs_vectors with {MODEL_B.name}" in done.stdout
            assert "100%" in done.stdout  # the progress bar
            assert f"version 2, embedded by {MODEL_B.name}, is active (previous 1)" in done.stdout

            await _until_queried_with(docs, MODEL_B)
            await data.wait_for(committed.position, [SCHEMA.vectors], timeout=60)
            hits = await docs.search("note 17 on ranking", k=5, mode="vector")
            expected = await data.vectors.query(
                "docs_vectors_v2", (await MODEL_B.embed(["note 17 on ranking"]))[0], 5
            )
            ids = [h.id for h in hits]
            assert ids == [m.id for m in expected] and "d17" in ids

            audited = await asyncio.to_thread(run_cli, ["audit", "docs_vectors"], env)
            assert audited.returncode == 0, audited.stdout + audited.stderr
            assert f"{DOCUMENTS} keys" in audited.stdout and "clean" in audited.stdout

            back = await asyncio.to_thread(run_cli, ["rollback", "docs_vectors"], env)
            assert back.returncode == 0, back.stdout + back.stderr
            await _until_queried_with(docs, MODEL_A)
        finally:
            await service.stop()


def test_reembed_builds_flips_is_followed_audits_clean_and_rolls_back(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    asyncio.run(_scenario({**cli_env, **MODULE}, tmp_path / "serving-faiss"))


def test_reembed_refuses_an_unknown_model_or_a_projection_that_is_not_semantic_vectors(
    cli_env: dict[str, str],
) -> None:
    env = {**cli_env, **MODULE}
    for args, message in (
        (["reembed", "docs_vectors", "--embedder", "nope"],
         "configuration error: --embedder: 'nope' is not one of docs's embedders "
         f"({MODEL_A.name}, {MODEL_B.name})"),
        (["reembed", "docs_text", "--embedder", MODEL_B.name],
         "docs_text is not the vector projection of a semantic collection"),
        (["reembed", "nothing_here", "--embedder", MODEL_B.name], "nothing_here"),
    ):  # fmt: skip
        done = run_cli(args, env)
        assert done.returncode == 2, done.stdout + done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert message in line, line
