"""The workers' way to the replicas: a TCP relay, one listening port per worker process,
standing in for a load balancer (each new connection goes to a replica picked at random).
It lets the run drop a worker's connection: both sides are reset at once, as a broken
network path would end them, while the worker process lives on and reconnects."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable

#: How long connecting to a replica may take (a stopped one accepts, a dead one refuses).
CONNECT_WITHIN = 1.0
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass
    writer.transport.abort()


class Relay:
    """Relays connections accepted on one port to ``upstreams()`` (``host:port``)."""

    def __init__(self, upstreams: Callable[[], list[str]], rng: random.Random) -> None:
        self._upstreams = upstreams
        self._rng = rng
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        # The reset connections' handlers end at once; they are awaited so that none is
        # left to be cancelled when the event loop closes.
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=2.0)

    def drop(self) -> int:
        """Resets every connection relayed now; returns how many there were."""
        pairs = list(self._pairs)
        for down, up in pairs:
            _reset(down)
            _reset(up)
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        host, port = self._rng.choice(self._upstreams()).rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), CONNECT_WITHIN
            )
        except (OSError, asyncio.TimeoutError):
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            _reset(writer)
            _reset(up_writer)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copies until either side ends; then the other side is reset too (a relay that lost
    one end of a connection must not hold the other open)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        _reset(sink)
