"""A small multiplexing HTTP/2 client on asyncio using the ``h2`` state machine.

Every request is a stream on ONE connection. Outbound frames produced in one loop turn are
flushed together (``loop.call_soon``); request bodies respect HTTP/2 flow control and the
server's ``MAX_CONCURRENT_STREAMS``; received DATA is acknowledged as it is consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

__all__ = ["H2ClientProtocol", "H2Response"]

_WINDOW = 16 * 1024 * 1024


class H2Response:
    __slots__ = ("body", "future", "on_data", "status")

    def __init__(self, future: asyncio.Future[H2Response], on_data: Callable[[int], None] | None):
        self.future = future
        self.on_data = on_data
        self.status = 0
        self.body: list[bytes] = []


class H2ClientProtocol(asyncio.Protocol):
    def __init__(self, authority: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.authority = authority
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Response] = {}
        self.pings: dict[bytes, asyncio.Future[None]] = {}
        self.ping_ids = itertools.count(1)
        self.window_waiters: list[asyncio.Future[None]] = []
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.slots = asyncio.Semaphore(100)
        self.flush_scheduled = False
        self.paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.error: BaseException | None = None

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Initial values (not a pending update) so the first SETTINGS frame carries them and
        # the per-stream receive windows agree with what the server believes.
        self.conn.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("HTTP/2 connection closed"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(self.drain_waiters)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None and event.data is not None:
                    if stream.on_data is not None:
                        stream.on_data(len(event.data))
                    else:
                        stream.body.append(event.data)
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
            elif isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    for name, value in event.headers or ():
                        if name == b":status":
                            stream.status = int(value)
            elif isinstance(event, StreamEnded):
                stream = self.streams.pop(event.stream_id or 0, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_result(stream)
            elif isinstance(event, StreamReset):
                stream = self.streams.pop(event.stream_id or 0, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_exception(
                        ConnectionResetError(f"stream reset (error {event.error_code})")
                    )
            elif isinstance(event, WindowUpdated):
                self._wake(self.window_waiters)
            elif isinstance(event, RemoteSettingsChanged):
                limit = self.conn.remote_settings.max_concurrent_streams
                self.slots = asyncio.Semaphore(min(limit, 1000))
                self._wake(self.window_waiters)
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(event, PingAckReceived):
                waiter = self.pings.pop(event.ping_data or b"", None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                self._fail(ConnectionResetError(f"GOAWAY (error {event.error_code})"))
            elif isinstance(event, SettingsAcknowledged):
                pass
        self.flush()

    # -- sending ------------------------------------------------------------------------------

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def _wake(self, waiters: list[asyncio.Future[None]]) -> None:
        pending = waiters[:]
        waiters.clear()
        for waiter in pending:
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(exc)
        self.streams.clear()
        for waiter in [*self.pings.values(), *self.window_waiters, *self.drain_waiters]:
            if not waiter.done():
                waiter.set_exception(exc)
        if not self.ready.done():
            self.ready.set_exception(exc)

    async def _wait(self, waiters: list[asyncio.Future[None]]) -> None:
        if self.error is not None:
            raise self.error
        waiter = self.loop.create_future()
        waiters.append(waiter)
        await waiter

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        pos = unflushed = 0
        while pos < len(view):
            window = self.conn.local_flow_control_window(stream_id)
            if window <= 0:
                self.flush()
                unflushed = 0
                await self._wait(self.window_waiters)
                continue
            n = min(window, self.conn.max_outbound_frame_size, len(view) - pos)
            self.conn.send_data(stream_id, view[pos : pos + n])
            pos += n
            unflushed += n
            if unflushed >= 256 * 1024:
                self.flush()
                unflushed = 0
                if self.paused:
                    await self._wait(self.drain_waiters)
        self.conn.end_stream(stream_id)
        self.schedule_flush()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        on_data: Callable[[int], None] | None = None,
        content_type: bytes | None = None,
    ) -> H2Response:
        """One request on its own stream; returns status and body (or feeds ``on_data``)."""
        if self.error is not None:
            raise self.error
        async with self.slots:
            stream_id = self.conn.get_next_available_stream_id()
            headers = [
                (b":method", method.encode()),
                (b":scheme", b"http"),
                (b":authority", self.authority.encode()),
                (b":path", path.encode()),
            ]
            if body:
                headers.append((b"content-length", str(len(body)).encode()))
            if content_type:
                headers.append((b"content-type", content_type))
            response = H2Response(self.loop.create_future(), on_data)
            self.streams[stream_id] = response
            self.conn.send_headers(stream_id, headers, end_stream=not body)
            try:
                if body:
                    await self._send_body(stream_id, body)
                else:
                    self.schedule_flush()
                return await response.future
            except asyncio.CancelledError:
                if self.streams.pop(stream_id, None) is not None and self.error is None:
                    with contextlib.suppress(ProtocolError):
                        self.conn.reset_stream(stream_id)
                        self.schedule_flush()
                raise

    async def ping(self) -> None:
        """An HTTP/2 PING frame round trip."""
        if self.error is not None:
            raise self.error
        opaque = next(self.ping_ids).to_bytes(8, "big")
        waiter = self.loop.create_future()
        self.pings[opaque] = waiter
        self.conn.ping(opaque)
        self.schedule_flush()
        await waiter

    def close(self) -> None:
        if self.transport is not None and self.error is None:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection()
                self.flush()
        if self.transport is not None:
            self.transport.close()
