"""The demo pipeline: the whole flow as a newcomer meets it, on whatever services are at hand.

1. choose services (configured, local, or embedded: :mod:`.stack`) and start a ``DataLayer``;
2. append the bundled corpus (authors, documents, embeddings) to the log;
3. the relay publishes it to the bus (a subscriber counts what arrives) while the projectors
   build a Redis cache, an Elasticsearch index and a FAISS namespace from the log;
4. semantic search (FAISS), full-text search (Elasticsearch), a cached entity (Redis), and
   read-your-own-writes after an update;
5. a blue/green rebuild of the embeddings projection with a progress bar, then the flip;
6. the semantic layer (:mod:`.semantic`): the corpus through change sets embedded by a real
   model, hybrid next to text-only and vector-only search, read-your-writes through search, a
   re-embed with another model;
7. timings.

The demo works in its own namespace (schema ``satellites_demo``, key prefix ``demo:``, index
prefix ``demo-``, exchange ``satellites.demo.events``, FAISS under its data directory), whatever the
environment configures, and clears it first so it can run again; it refuses to clear a part of
that namespace that it did not create (:mod:`.namespace`). Its projections are the package's
own (:mod:`.projections`), loaded before anything is cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..events import DataEvent
from ..facade import DataLayer
from ..projections import Projection, rebuild
from ..projections.discovery import load_projections
from ..projections.supervisor import ProjectionService, build_sink
from ..vectors.codec import encode_vector
from .corpus import Author, Document, sample_corpus
from .embedder import HashingEmbedder
from .namespace import claim, exclusive
from .stack import DemoStack

__all__ = ["DemoReport", "run_demo"]

BATCH = 500


@dataclass
class DemoReport:
    timings: dict[str, float] = field(default_factory=dict)
    events: int = 0
    delivered: int = 0

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - started


async def run_demo(
    env: Mapping[str, str], data_dir: Path, *, documents: int = 3000, embedded: bool = False,
    console: Console | None = None,
) -> DemoReport:  # fmt: skip
    out = console or Console()
    report = DemoReport()
    stack = DemoStack(env, data_dir, embedded=embedded)
    async with contextlib.AsyncExitStack() as exits:
        with report.timed("services"):
            config = await exits.enter_async_context(stack)
        _show_services(out, stack)
        projections = load_projections(config.projections_module)
        # one run at a time on these services: another's claim would clear this one's namespace
        await exits.enter_async_context(exclusive(config, say=lambda m: out.print(f"[yellow]{m}")))
        await claim(config)
        async with DataLayer(config) as data:
            await _show_versions(out, data)
            await _pipeline(out, data, report, documents, projections)
    _show_timings(out, report)
    return report


async def _pipeline(
    out: Console, data: DataLayer, report: DemoReport, documents: int,
    projections: Mapping[str, Projection],
) -> None:  # fmt: skip
    embedder = HashingEmbedder(384)
    out.print(f"[bold]Embedder:[/] {embedder.name}")
    delivered = _count_deliveries(data, report)
    await data.subscriptions_ready()  # bound before the relay publishes the first event
    service = ProjectionService(data, list(projections.values()), poll_interval=0.2)
    await service.start()
    try:
        authors, docs = sample_corpus(documents=documents)
        with report.timed("append"):
            head = await _append_corpus(data, authors, docs, embedder, report)
        out.print(f"Appended [bold]{report.events}[/] events to the log (head at position {head}).")
        with report.timed("project"):
            await service.wait_for(head, timeout=300)
        out.print(
            "Projections caught up: "
            + ", ".join(f"{n} v{p.version}" for n, p in service.projectors.items())
        )
        await _searches(out, data, embedder, projections)
        await _read_your_writes(out, data, service)
        await _rebuild(out, data, projections["embeddings"], report)
        from .semantic import semantic_demo  # it imports the semantic layer, which imports us

        with report.timed("semantic"):
            await semantic_demo(out, data, authors, docs)
        await _wait_delivered(delivered)
        out.print(f"The bus delivered {report.delivered} events to a subscriber.")
    finally:
        await service.stop()


def _count_deliveries(data: DataLayer, report: DemoReport) -> asyncio.Event:
    done = asyncio.Event()

    async def count(event: DataEvent) -> None:
        report.delivered += 1
        if report.events and report.delivered >= report.events:
            done.set()

    count.subscriber_name = "demo-counter"  # type: ignore[attr-defined]
    data.events.subscribe_all(count)
    return done


async def _wait_delivered(done: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            await done.wait()


async def _append_corpus(
    data: DataLayer, authors: list[Author], docs: list[Document], embedder: HashingEmbedder,
    report: DemoReport,
) -> int:  # fmt: skip
    events = [
        DataEvent(type="entity.upserted", resource="entities", key=a.id, source="demo",
                  payload={"name": a.name, "topic": a.topic})
        for a in authors
    ]  # fmt: skip
    vectors = embedder([f"{d.title}. {d.body}" for d in docs])
    for d, v in zip(docs, vectors, strict=True):
        doc = {"title": d.title, "body": d.body, "topic": d.topic, "author_id": d.author_id}
        events.append(DataEvent(type="document.upserted", resource="documents", key=d.id,
                                source="demo", payload=doc))  # fmt: skip
        events.append(DataEvent(type="embedding.upserted", resource="embeddings", key=d.id,
                                source="demo", payload={"vector": encode_vector(v),
                                "title": d.title, "topic": d.topic, "model": "hashing-384"}))  # fmt: skip
    head = 0
    for start in range(0, len(events), BATCH):
        result = await data.log.append(events[start : start + BATCH])
        head = result.last_position
    report.events = len(events)
    return head


async def _searches(
    out: Console, data: DataLayer, embedder: HashingEmbedder, projections: Mapping[str, Projection]
) -> None:
    question = "nearest neighbour recall with an hnsw vector index"
    matches = await data.vectors.query("embeddings", embedder.embed_one(question).tolist(), top_k=5)
    table = Table(title=f"Semantic search (FAISS): {question!r}")
    for col in ("id", "score", "title", "topic"):
        table.add_column(col)
    for m in matches:
        meta = m.metadata or {}
        table.add_row(m.id, f"{m.score:.3f}", str(meta.get("title")), str(meta.get("topic")))
    out.print(table)

    alias = f"{data.config.elasticsearch.index_prefix}documents"
    await data.elasticsearch.indices.refresh(index=alias)  # applied is not yet searchable (NRT)
    result = await data.elasticsearch.search(
        index=alias, query={"match": {"body": "rabbitmq consumer"}}, size=5
    )
    table = Table(title=f"Full-text search (Elasticsearch, alias {alias}): 'rabbitmq consumer'")
    for col in ("id", "score", "title"):
        table.add_column(col)
    for hit in result["hits"]["hits"]:
        table.add_row(hit["_id"], f"{hit['_score']:.2f}", hit["_source"]["title"])
    out.print(table)

    sink = build_sink(projections["entities"], data)
    entity = await sink.get(projections["entities"], "author-0007")  # type: ignore[attr-defined]
    out.print(f"[bold]Cached entity (Redis)[/] author-0007: {entity}")
    if not matches or not result["hits"]["hits"] or entity is None:
        raise RuntimeError("a search came back empty: the projections did not build")


async def _read_your_writes(out: Console, data: DataLayer, service: ProjectionService) -> None:
    title = "Read your own writes: a freshly updated title"
    appended = await data.log.append(
        DataEvent(type="document.upserted", resource="documents", key="doc-00001", source="demo",
                  payload={"title": title, "body": "updated through the log", "topic": "demo"})
    )  # fmt: skip
    started = time.perf_counter()
    await service.wait_for(appended.last_position, timeout=30)
    waited = (time.perf_counter() - started) * 1000
    alias = f"{data.config.elasticsearch.index_prefix}documents"
    doc = await data.elasticsearch.get(index=alias, id="doc-00001")
    out.print(f"[bold]Read your writes[/]: position {appended.last_position} visible in "
              f"Elasticsearch after {waited:.0f} ms: {doc['_source']['title']!r}")  # fmt: skip
    if doc["_source"]["title"] != title:
        raise RuntimeError("read-your-writes returned a stale document")


async def _rebuild(
    out: Console, data: DataLayer, projection: Projection, report: DemoReport
) -> None:
    from ..projections import Checkpoints

    checkpoints = Checkpoints(data.postgres, data.config.postgres.schema)
    sink = build_sink(projection, data)
    head = await data.log.head()
    columns = (TextColumn("[bold]rebuild embeddings"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]:>9} ev/s"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task("rebuild", total=head, rate="-")
        started = time.perf_counter()

        def progress(p: object) -> None:
            done = getattr(p, "position", 0)
            rate = done / max(time.perf_counter() - started, 1e-6)
            bar.update(task, completed=done, rate=f"{rate:,.0f}")

        with report.timed("rebuild"):
            result = await rebuild(projection, sink, data.log, checkpoints, progress=progress)
    out.print(f"Rebuilt [bold]{projection.name}[/] into version {result.version} "
              f"(previous {result.previous}) and flipped; {result.events} events replayed.")  # fmt: skip


async def _show_versions(out: Console, data: DataLayer) -> None:
    health = await data.health()
    versions = [
        f"{name} {h.details['version']}"
        for name, h in health.details.items()
        if h.status == "ok" and "version" in h.details
    ]
    out.print("Backends: " + ", ".join(versions))


def _show_services(out: Console, stack: DemoStack) -> None:
    table = Table(title="satellites-es demo: services")
    for col in ("service", "source", "where"):
        table.add_column(col)
    for c in stack.choices:
        table.add_row(c.name, c.source, c.where)
    out.print(table)


def _show_timings(out: Console, report: DemoReport) -> None:
    table = Table(title="Timings")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("rate", justify="right")
    for step, seconds in report.timings.items():
        rate = f"{report.events / seconds:,.0f} events/s" if step in ("append", "project") else ""
        table.add_row(step, f"{seconds:.2f}", rate)
    out.print(table)
    out.print("[bold green]demo finished OK[/]")
