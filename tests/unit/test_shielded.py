"""``shielded.finished``: a cleanup runs to its end behind a cancelled caller, except when the
cleanup is what stops the caller (``stop_task``) or a cancel has waited its ``limit``."""

from __future__ import annotations

import asyncio
import gc

import pytest

from satellites_es.shielded import STOPPING, connect_shielded, finished, stop_task


async def test_a_cancelled_caller_waits_for_the_cleanup_then_is_cancelled() -> None:
    steps: list[str] = []

    async def cleanup() -> None:
        await asyncio.sleep(0.05)
        steps.append("closed")

    caller = asyncio.ensure_future(finished(cleanup()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0.01)
    caller.cancel()  # a second cancel is held back too
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["closed"]  # the caller ended only once the cleanup had


async def test_a_cancel_from_stop_task_goes_through_at_once() -> None:
    """The cleanup stops the very task that waits for it: it must not wait for itself."""
    release = asyncio.Event()

    async def cleanup() -> str:
        stop_task(waiter)  # a stop cancels the part's task, which is waiting here
        await release.wait()
        return "done"

    async def handler() -> None:
        await finished(cleanup())

    waiter = asyncio.ensure_future(handler())
    with pytest.raises(asyncio.CancelledError) as caught:
        async with asyncio.timeout(1):
            await waiter
    assert caught.value.args == (STOPPING,)
    release.set()  # the cleanup went on behind it


async def test_past_its_limit_a_cancel_goes_through_and_the_cleanups_error_is_read() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def cleanup() -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("the close failed")

    caller = asyncio.ensure_future(finished(cleanup(), limit=0.05))
    await asyncio.sleep(0)
    started = loop.time()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert loop.time() - started < 0.25  # the limit, not the cleanup's 0.3 s
    await asyncio.sleep(0.4)
    gc.collect()
    loop.set_exception_handler(None)
    assert errors == []


async def test_without_a_cancel_the_result_and_the_error_come_back() -> None:
    async def ok() -> int:
        return 7

    async def failing() -> None:
        raise ValueError("no")

    assert await finished(ok()) == 7
    with pytest.raises(ValueError, match="no"):
        await finished(failing())


async def test_a_connect_cancelled_midway_is_finished_and_discarded() -> None:
    discarded: list[str] = []
    connected = asyncio.Event()

    async def connect() -> str:
        await asyncio.sleep(0.05)
        connected.set()
        return "connection"

    caller = asyncio.ensure_future(connect_shielded(connect(), discarded.append))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not connected.is_set()  # the caller did not wait for the handshake
    await connected.wait()
    await asyncio.sleep(0)
    assert discarded == ["connection"]
