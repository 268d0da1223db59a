"""One client connection as the embedded broker's gate sees it: the streams, a reader that enforces
MQTT framing and the packet-size limit, and amqtt's protocol handler with keep-alive enforced."""

from __future__ import annotations

import asyncio
import logging

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.errors import NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

__all__ = ["Connection", "FleetHandler", "GatedReader"]

logger = logging.getLogger(__name__)


class GatedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """Reads the client's stream for amqtt, tracks MQTT framing and refuses oversized packets.

    After :meth:`rewind`, the bytes of the first packet (the CONNECT the gate already read) are read
    again, so amqtt sees the stream from its start. Once the connection is closed every read raises
    :class:`NoDataError`, which amqtt treats as end of stream (so the client's will fires).
    """

    _HEADER, _LENGTH, _BODY = range(3)

    def __init__(self, conn: Connection, stream: asyncio.StreamReader, max_packet_bytes: int) -> None:
        self.conn = conn
        self._stream = stream
        self._max = max_packet_bytes
        self._recording: bytearray | None = bytearray()
        self._replay = b""
        self._state = self._HEADER
        self._length = 0
        self._length_bytes = 0
        self._body_left = 0

    def rewind(self) -> None:
        """Stop recording; the recorded bytes are read again first."""
        self._replay, self._recording = bytes(self._recording or b""), None

    async def read(self, n: int = -1) -> bytes:
        if self.conn.close_reason is not None:
            raise NoDataError(f"connection closed: {self.conn.close_reason}")
        head = b""
        if self._replay:
            take = len(self._replay) if n < 0 else n
            head, self._replay = self._replay[:take], self._replay[take:]
            if n < 0 or len(head) == n:
                return head
            n -= len(head)
        if n < 0:
            data = await self._stream.read(self._max)
        else:
            try:
                data = await self._stream.readexactly(n)
            except asyncio.IncompleteReadError as exc:
                raise NoDataError("end of stream") from exc
        if self._recording is not None:
            self._recording += data
        self._track(data)
        return head + data

    def feed_eof(self) -> None:
        self._stream.feed_eof()

    def _track(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._state == self._BODY:
                take = min(self._body_left, len(data) - i)
                self._body_left -= take
                i += take
                if self._body_left == 0:
                    self._state = self._HEADER
                continue
            byte = data[i]
            i += 1
            if self._state == self._HEADER:
                self._state, self._length, self._length_bytes = self._LENGTH, 0, 0
                continue
            self._length += (byte & 0x7F) << (7 * self._length_bytes)
            self._length_bytes += 1
            if byte & 0x80:
                if self._length_bytes >= 4:
                    self._violation("malformed remaining length")
                continue
            size = 1 + self._length_bytes + self._length
            if size > self._max:
                self._violation(f"packet of {size} bytes exceeds the {self._max}-byte limit")
            self._state, self._body_left = (self._BODY, self._length) if self._length else (self._HEADER, 0)

    def _violation(self, reason: str) -> None:
        logger.warning("closing connection of %s: %s", self.conn.label, reason)
        self.conn.close(reason, abort=True)
        raise NoDataError(reason)


class Connection:
    """A client connection: its streams, why it was closed, and an event set when it is gone."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_packet_bytes: int
    ) -> None:
        self.writer = writer
        self.reader = GatedReader(self, reader, max_packet_bytes)
        self.writer_adapter = StreamWriterAdapter(writer)
        peer = writer.get_extra_info("peername")
        self.address: tuple[str, int] | None = (peer[0], peer[1]) if peer and len(peer) >= 2 else None
        self.client_id: str | None = None
        self.close_reason: str | None = None
        self.done = asyncio.Event()

    @property
    def label(self) -> str:
        where = f"{self.address[0]}:{self.address[1]}" if self.address else "?"
        return f"{self.client_id or '(no client id)'} at {where}"

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Drop the connection now; amqtt sees end of stream on its next read."""
        if self.close_reason is None:
            self.close_reason = reason
            logger.info("closing connection of %s: %s", self.label, reason)
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()

    async def wait_closed(self, within: float) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), within)
        except TimeoutError:
            self.writer.transport.abort()
        except OSError as exc:
            logger.debug("connection of %s ended with %r", self.label, exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not us: amqtt's handler was cancelled while awaiting the same close-waiter future
            # (StreamWriter.wait_closed shares one), which cancels that future. The transport is closed.


class FleetHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's protocol handler, with keep-alive enforced: silence past the deadline closes."""

    def handle_read_timeout(self) -> None:
        client = self.session.client_id if self.session else None
        reader = self.reader
        if isinstance(reader, GatedReader):
            logger.info("%s sent nothing within 1.5x its keep-alive", client)
            reader.conn.close("keep-alive timeout", abort=True)
