"""Acks on a channel that closed meanwhile (a broker restart) are no error: the broker
redelivers the message, so nothing is logged above DEBUG and nothing raises."""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
import pytest

from satellites_es.bus import consumer


class _ClosedMessage:
    delivery_tag = 7

    @property
    def channel(self) -> Any:
        raise aio_pika.exceptions.ChannelInvalidStateError("No active channel")

    async def ack(self) -> None:
        return self.channel  # type: ignore[no-any-return]

    async def reject(self, requeue: bool = False) -> None:
        return self.channel  # type: ignore[no-any-return]


async def test_ack_after_the_channel_closed_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=consumer.__name__)
    message: Any = _ClosedMessage()
    await consumer._ack(message)
    await consumer._settle(message.ack)
    await consumer._settle(lambda: message.reject(requeue=True))
    lost = [r for r in caplog.records if "lost with the channel" in r.getMessage()]
    assert len(lost) == 3
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


async def test_other_errors_still_raise() -> None:
    async def broken() -> None:
        raise ValueError("a bug, not a lost channel")

    with pytest.raises(ValueError):
        await consumer._settle(broken)
