"""The snapshot store's pure parts: its configuration, its URLs, and a pointer it cannot trust."""

from __future__ import annotations

import pytest

from satellites_es.config import DataLayerConfig
from satellites_es.errors import ConfigurationError, CorruptIndexError
from satellites_es.vectors.snapshot_store import Pointer, RemoteSnapshot, SnapshotStore

GOOD = RemoteSnapshot("000000003-0123abcd", "a" * 64, 120, 50, 4096, "2026-12-07T10:00:00+00:00")


def test_snapshot_settings_come_from_the_environment_and_are_checked() -> None:
    env = {"SATELLITES_FAISS_SNAPSHOT_URL": "s3://bucket/replicas",
           "SATELLITES_FAISS_SNAPSHOT_ENDPOINT": "http://127.0.0.1:9000",
           "SATELLITES_FAISS_SNAPSHOT_KEEP": "5", "SATELLITES_FAISS_SNAPSHOT_UPLOAD": "false"}  # fmt: skip
    faiss = DataLayerConfig.from_env(env).faiss
    assert (faiss.snapshot_url, faiss.snapshot_keep, faiss.snapshot_upload) == (
        "s3://bucket/replicas", 5, False)  # fmt: skip
    assert SnapshotStore.from_config(faiss) is not None
    assert SnapshotStore.from_config(DataLayerConfig.from_env({}).faiss) is None
    for var, value in (("SATELLITES_FAISS_SNAPSHOT_URL", "gs://bucket/x"),
                       ("SATELLITES_FAISS_SNAPSHOT_ENDPOINT", "ftp://host"),
                       ("SATELLITES_FAISS_SNAPSHOT_ENDPOINT", "http://host:99999"),
                       ("SATELLITES_FAISS_SNAPSHOT_KEEP", "0"),
                       ("SATELLITES_FAISS_SNAPSHOT_EVERY_SECONDS", "-1")):  # fmt: skip
        with pytest.raises(ConfigurationError, match=var):
            DataLayerConfig.from_env({"SATELLITES_FAISS_SNAPSHOT_URL": "s3://b/p", var: value})


def test_store_urls_are_checked_and_objects_named_by_url() -> None:
    with pytest.raises(ConfigurationError, match="absolute path"):
        SnapshotStore("file://relative/dir")
    with pytest.raises(ConfigurationError, match="s3://bucket/prefix"):
        SnapshotStore("s3:///no-bucket")
    store = SnapshotStore("s3://bucket/prefix/", endpoint="http://127.0.0.1:1")
    assert store.where("ns/POINTER") == "s3://bucket/prefix/ns/POINTER"
    where = store.describe("ns", GOOD)
    assert where("index.faiss") == f"s3://bucket/prefix/ns/snapshots/{GOOD.id}/index.faiss"
    with pytest.raises(CorruptIndexError, match="not a snapshot id"):
        store.describe("ns", RemoteSnapshot("../../etc", "a" * 64, 1, 1, 1, GOOD.created))


def test_a_pointer_round_trips() -> None:
    pointer = Pointer("ns", (GOOD,))
    assert Pointer.decode("s3://b/ns/POINTER", "ns", pointer.encode()) == pointer


_POINTER = Pointer("ns", (GOOD,)).encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{", id="not JSON"),
        pytest.param(Pointer("other", (GOOD,)).encode(), id="another namespace's"),
        pytest.param(_POINTER.replace(GOOD.id.encode(), b"../x"), id="an id not ours"),
        pytest.param(_POINTER.replace(b'"position"', b'"pos"'), id="a field missing"),
        pytest.param(_POINTER.replace(b'"format": 1', b'"format": 2'), id="a newer format"),
    ],
)
def test_a_pointer_that_cannot_be_trusted_is_refused_naming_it(data: bytes) -> None:
    with pytest.raises(CorruptIndexError, match="s3://b/ns/POINTER: invalid pointer"):
        Pointer.decode("s3://b/ns/POINTER", "ns", data)
