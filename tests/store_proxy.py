"""A TCP relay in front of a real store that can sever the connections open through it, for
tests of what a client does with a pooled connection that is dead though it still looks alive.

A restarted store closes its sockets, and a client library may notice that when it takes the
connection from its pool (redis-py does: it checks for a pending end-of-file on checkout) and
quietly open a fresh one. What it cannot notice there is a connection that dies only when it is
used: a load balancer or NAT in front of the store that forgot the flow, a restart whose FIN was
lost, a store that died between checkout and command. `sever()` produces exactly that: every
connection open at that moment stays open, and the next bytes its client sends are not relayed;
the relay resets the connection instead. Nothing depends on timing: the failure happens on the
command, whenever it is sent.

Runs on the test's own event loop (`await relay.start()`), so keep blocking calls off that loop.
"""

from __future__ import annotations

import asyncio
import contextlib


class StoreRelay:
    """Relays 127.0.0.1:`port` to the store at `host`:`store_port`. Counts connections accepted
    (`accepted`) and open (`open`) and commands dropped on severed connections (`dropped`)."""

    def __init__(self, host: str, store_port: int) -> None:
        self.host, self.store_port = host, store_port
        self.port = 0
        self.accepted = 0
        self.open = 0
        self.dropped = 0
        self.sever_new = False  # also sever each connection opened from now on, at its first command
        self._generation = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Listen on a free loopback port (`port`, `url`)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def sever(self) -> None:
        """Doom every connection open now: its next command is dropped and the connection reset."""
        self._generation += 1

    async def close(self) -> None:
        """Stop listening and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.open += 1
        born = self._generation
        store_reader, store_writer = await asyncio.open_connection(self.host, self.store_port)
        back = asyncio.create_task(self._pipe(store_reader, client_writer))
        try:
            while data := await client_reader.read(65536):
                if self._generation > born or self.sever_new:
                    self.dropped += 1
                    client_writer.transport.abort()  # a reset, and the command never reached the store
                    return
                store_writer.write(data)
                await store_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            back.cancel()
            store_writer.close()
            client_writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
