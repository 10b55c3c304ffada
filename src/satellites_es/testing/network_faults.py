"""Network faults for tests and the soak: :class:`TcpProxy` sits between a client and a service
so that a test can cut every connection at a chosen moment (or after so many bytes) and let new
ones through again, a network fault without stopping a service other tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from .services import free_port

__all__ = ["TcpProxy"]


class TcpProxy:
    """A TCP proxy on a free local port in front of ``target``; :meth:`cut` severs every
    connection and (while ``blocked``) refuses new ones: a network fault for one client only.
    ``cut_after``: cut by itself once that many bytes have passed (either way), a fault in the
    middle of a transfer. ``tls``: clients speak TLS to the proxy (it terminates it), the proxy
    plain TCP to ``target``."""

    def __init__(
        self, target_host: str, target_port: int, cut_after: int | None = None, *,
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.target = (target_host, target_port)
        self.tls = tls
        self.port = free_port()
        self.blocked = False
        self.cut_after = cut_after
        self.passed = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self.tls
        )
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._pairs.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst), name="tcp-proxy-pipe")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
                self.passed += len(data)
                if self.cut_after is not None and self.passed >= self.cut_after:
                    self.cut_after = None
                    self.cut()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pairs.discard(dst)
            dst.close()

    @property
    def connections(self) -> int:
        """Connections open through the proxy (each is piped both ways until both ends close)."""
        return -(-len(self._tasks) // 2)

    def cut(self, *, block: bool = True) -> None:
        """Sever every open connection; refuse new ones until :meth:`restore` if ``block``."""
        self.blocked = block
        for w in list(self._pairs):
            with contextlib.suppress(Exception):
                transport = w.transport
                transport.abort()
        self._pairs.clear()

    def restore(self) -> None:
        self.blocked = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
