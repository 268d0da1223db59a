"""The embedded MQTT broker: amqtt 0.12.1 behind a gate that enforces the fleet's rules.

What this wrapper adds to amqtt (each fix is proven by tests/test_broker_embedded.py):

* a CONNECT gate in front of amqtt's session handling: the first packet must be a CONNECT, within
  ``connect_timeout``; credentials, client id == username and the will topic are checked *before*
  amqtt touches its session table (amqtt deletes or mutates an existing session of that client id
  before it authenticates). Refused clients get a CONNACK with the reason and are disconnected.
* a packet-size limit (``max_packet_bytes``): a larger packet closes the connection before its body
  is read.
* keep-alive enforcement: a client silent for 1.5x its keep-alive is disconnected, so its will fires
  (amqtt's read timeout handler does nothing).
* session take-over: a second CONNECT with the same client id (after authentication) closes the
  first connection, whose will then fires, as in mosquitto.
* retained messages pass the receive ACL, and on CONNECT a client gets retained messages for its
  own subscriptions only (amqtt replays those of every client's subscriptions, unchecked).
* only the controller stores retained messages; a device's retained publish is delivered (without
  the retain flag) but not stored.
* messages queued for an offline persistent session are delivered in order and without the retain
  flag (amqtt sets RETAIN=1 on them).
* TLS listeners (:func:`kernel.tls.server_context`, TLS 1.2 minimum), on port 0 like plain
  ones. With ``require_client_cert`` (mutual TLS) a client without a valid certificate from
  ``cafile`` fails the handshake, and one whose certificate identity
  (:func:`kernel.tls.peer_identity`) is not its username and client id gets CONNACK "not
  authorized"; the password is checked as well, mutual TLS adds to it.

amqtt is pinned exactly (``amqtt==0.12.1``) because the subclass overrides its private methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import websockets.asyncio.server
from amqtt.adapters import ReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError, PluginError, PluginLoadError
from amqtt.errors import BrokerError as AmqttBrokerError
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.packet import CONNECT
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from kernel import tls, wire

from .plugins import (
    AccessPolicy,
    BrokerError,
    ConnectRefusal,
    CredentialSource,
    FleetAuthPlugin,
    FleetTopicPlugin,
    Refusal,
    RefusalHook,
)

__all__ = ["BrokerState", "EmbeddedBroker", "ListenerSpec"]

logger = logging.getLogger(__name__)

#: Largest packet the broker accepts by default: one envelope plus room for the MQTT headers.
DEFAULT_MAX_PACKET_BYTES = wire.MAX_MESSAGE_BYTES + 4096
_MQTT_311 = 4
_PUBLISH_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class ListenerSpec:
    """One TCP listener. Port 0 picks a free port (see :attr:`EmbeddedBroker.bound_addresses`).

    With ``certfile``/``keyfile`` the listener speaks TLS; ``require_client_cert`` additionally
    demands a client certificate signed by ``cafile``.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if not self.host:
            raise BrokerError("listener host must not be empty")
        if not 0 <= self.port <= 65535:
            raise BrokerError(f"listener port {self.port} is out of range")
        if (self.certfile is None) != (self.keyfile is None):
            raise BrokerError("a TLS listener needs both certfile and keyfile")
        if self.require_client_cert and (self.certfile is None or self.cafile is None):
            raise BrokerError("require_client_cert needs a TLS listener (certfile, keyfile) and a cafile")

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's server context (:func:`kernel.tls.server_context`), or None for plain TCP."""
        if self.certfile is None or self.keyfile is None:
            return None
        try:
            return tls.server_context(self.certfile, self.keyfile, self.cafile, self.require_client_cert)
        except tls.TlsError as exc:
            raise BrokerError(f"listener {self.host}:{self.port}: {exc}") from exc


class BrokerState(StrEnum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


#: The allowed lifecycle transitions (a broker is used once).
TRANSITIONS: dict[BrokerState, frozenset[BrokerState]] = {
    BrokerState.NEW: frozenset({BrokerState.STARTING}),
    BrokerState.STARTING: frozenset({BrokerState.RUNNING, BrokerState.STOPPED}),
    BrokerState.RUNNING: frozenset({BrokerState.STOPPING}),
    BrokerState.STOPPING: frozenset({BrokerState.STOPPED}),
    BrokerState.STOPPED: frozenset(),
}


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker for the fleet. Use as ``async with EmbeddedBroker(...) as b``."""

    def __init__(
        self,
        *,
        listeners: Sequence[ListenerSpec],
        credentials: CredentialSource,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
        connect_timeout: float = 10.0,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        on_refusal: RefusalHook | None = None,
    ) -> None:
        if not listeners:
            raise BrokerError("the broker needs at least one listener")
        if max_packet_bytes < 64:
            raise BrokerError(f"max_packet_bytes {max_packet_bytes} is too small")
        self._listeners = tuple(listeners)
        self._policy = AccessPolicy(credentials=credentials, on_refusal=on_refusal)
        self._max_packet_bytes = max_packet_bytes
        self._connect_timeout = connect_timeout
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._state = BrokerState.NEW
        self._broker: _FleetBroker | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def state(self) -> BrokerState:
        return self._state

    def _move(self, new: BrokerState) -> None:
        if new not in TRANSITIONS[self._state]:
            raise BrokerError(f"broker cannot go from {self._state} to {new}")
        logger.debug("broker %s -> %s", self._state, new)
        self._state = new

    async def start(self) -> None:
        self._move(BrokerState.STARTING)
        try:
            # Built here, once per listener, so a bad certificate or key fails start() plainly.
            contexts = [spec.ssl_context() for spec in self._listeners]
        except BrokerError:
            self._move(BrokerState.STOPPED)
            raise
        try:
            broker = _FleetBroker(
                _amqtt_config(self._listeners, self._policy),
                policy=self._policy,
                listeners=self._listeners,
                ssl_contexts=contexts,
                max_packet_bytes=self._max_packet_bytes,
                connect_timeout=self._connect_timeout,
            )
        except (PluginError, PluginLoadError, ValueError) as exc:
            self._move(BrokerState.STOPPED)
            raise BrokerError(f"the broker could not be configured: {exc}") from exc
        try:
            await asyncio.wait_for(broker.start(), self._start_timeout)
        except (TimeoutError, AmqttBrokerError, OSError) as exc:
            self._move(BrokerState.STOPPED)
            await broker.close_servers()
            raise BrokerError(f"the broker could not start: {exc}", retryable=True) from exc
        self._broker = broker
        self._move(BrokerState.RUNNING)
        logger.info("broker listening on %s", self.bound_addresses)

    async def stop(self) -> None:
        """Disconnect every client and close the listeners; a no-op unless running."""
        if self._state is not BrokerState.RUNNING or self._broker is None:
            return
        self._move(BrokerState.STOPPING)
        broker = self._broker
        try:
            await asyncio.wait_for(broker.shutdown(), self._stop_timeout)
        except TimeoutError:
            logger.warning("broker shutdown took longer than %.1f s; closing connections", self._stop_timeout)
        finally:
            await broker.close_all_connections(self._stop_timeout)
            self._move(BrokerState.STOPPED)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what it offers while running ----------------------------------------------------------

    @property
    def bound_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket, with the real port when the spec said 0."""
        return [] if self._broker is None else self._broker.bound_addresses()

    @property
    def port(self) -> int:
        """The first listener's bound port (convenience for tests and single-listener setups)."""
        addresses = self.bound_addresses
        if not addresses:
            raise BrokerError("the broker is not listening")
        return addresses[0][1]

    @property
    def credentials(self) -> CredentialSource:
        return self._policy.credentials

    @credentials.setter
    def credentials(self, source: CredentialSource) -> None:
        """Replace the credential source; the next CONNECT uses it (live clients stay connected)."""
        self._policy.credentials = source

    async def kick(self, client_id: str) -> bool:
        """Close the live connection of ``client_id`` now (its will fires); False if not connected."""
        if self._broker is None or self._state is not BrokerState.RUNNING:
            return False
        return await self._broker.kick(client_id, "kicked", self._stop_timeout)


def _amqtt_config(listeners: Sequence[ListenerSpec], policy: AccessPolicy) -> BrokerConfig:
    names = ["default"] + [f"listener-{i}" for i in range(1, len(listeners))]
    return BrokerConfig(
        listeners={
            name: ListenerConfig(type=ListenerType.TCP, bind=_bind(spec))
            for name, spec in zip(names, listeners, strict=True)
        },
        timeout_disconnect_delay=0,  # per client instead: see _FleetBroker._initialize_client_session
        # Our own plugin section replaces amqtt's defaults ($SYS, event and packet loggers, anonymous auth).
        plugins={
            _dotted(FleetAuthPlugin): {"policy": policy},
            _dotted(FleetTopicPlugin): {"policy": policy},
        },
    )


def _bind(spec: ListenerSpec) -> str:
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{host}:{spec.port}"


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------------------------
# One client connection as the gate sees it.


class _ConnectionClosedError(Exception):
    """Raised inside the reader once the broker decided to drop the connection."""


class _GatedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """Reads the client's stream for amqtt, tracks MQTT framing and refuses oversized packets.

    After :meth:`rewind`, the bytes of the first packet (the CONNECT the gate already read) are read
    again, so amqtt sees the stream from its start. Once the connection is closed every read raises
    :class:`NoDataError`, which amqtt treats as end of stream (so the client's will fires).
    """

    _HEADER, _LENGTH, _BODY = range(3)

    def __init__(self, conn: _Connection, stream: asyncio.StreamReader, max_packet_bytes: int) -> None:
        self._conn = conn
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
        if self._conn.close_reason is not None:
            raise NoDataError(f"connection closed: {self._conn.close_reason}")
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
        logger.warning("closing connection of %s: %s", self._conn.label, reason)
        self._conn.close(reason, abort=True)
        raise NoDataError(reason)


class _Connection:
    """A client connection: its streams, why it was closed, and an event set when it is gone."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_packet_bytes: int
    ) -> None:
        self.writer = writer
        self.reader = _GatedReader(self, reader, max_packet_bytes)
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


class _FleetHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's protocol handler, with keep-alive enforced: silence past the deadline closes."""

    def handle_read_timeout(self) -> None:
        client = self.session.client_id if self.session else None
        reader = self.reader
        if isinstance(reader, _GatedReader):
            logger.info("%s sent nothing within 1.5x its keep-alive", client)
            reader._conn.close("keep-alive timeout", abort=True)


# ----------------------------------------------------------------------------------------------
# The amqtt subclass.


class _FleetBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    def __init__(
        self,
        config: BrokerConfig,
        *,
        policy: AccessPolicy,
        listeners: Sequence[ListenerSpec],
        ssl_contexts: Sequence[ssl.SSLContext | None],
        max_packet_bytes: int,
        connect_timeout: float,
    ) -> None:
        super().__init__(config)
        self._policy = policy
        self._specs = dict(zip(config.listeners.keys(), listeners, strict=True))
        self._ssl = dict(zip(config.listeners.keys(), ssl_contexts, strict=True))
        self._max_packet_bytes = max_packet_bytes
        self._connect_timeout = connect_timeout
        self._servers_started: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._live: dict[str, _Connection] = {}

    # -- listeners ------------------------------------------------------------------------------

    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: ListenerType,
        address: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> asyncio.Server | websockets.asyncio.server.Server:
        spec = self._specs[listener_name]
        context = self._ssl[listener_name]
        try:
            server = await asyncio.start_server(
                partial(self.stream_connected, listener_name=listener_name),
                spec.host,
                spec.port,
                ssl=context,
                # A client that stalls the TLS handshake is dropped like one that sends no CONNECT.
                ssl_handshake_timeout=self._connect_timeout if context is not None else None,
            )
        except OSError as exc:
            raise BrokerError(f"cannot listen on {spec.host}:{spec.port}: {exc}") from exc
        self._servers_started.append(server)
        return server

    def bound_addresses(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for server in self._servers_started:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    # -- the CONNECT gate -------------------------------------------------------------------------

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        conn = _Connection(reader, writer, self._max_packet_bytes)
        self._connections.add(conn)
        try:
            if await self._admit(conn, self._specs[listener_name]):
                await self._client_connected(listener_name, conn.reader, conn.writer_adapter)
        finally:
            if conn.address is not None and conn.client_id is not None:
                self._policy.forget(conn.client_id, conn.address)
            if conn.client_id is not None and self._live.get(conn.client_id) is conn:
                del self._live[conn.client_id]
            await conn.wait_closed(_CLOSE_TIMEOUT)
            self._connections.discard(conn)
            conn.done.set()

    async def _admit(self, conn: _Connection, spec: ListenerSpec) -> bool:
        """Read and check the CONNECT; refuse with a CONNACK, or take over and let amqtt continue."""
        try:
            connect = await asyncio.wait_for(ConnectPacket.from_stream(conn.reader), self._connect_timeout)
        except TimeoutError:
            logger.info("no CONNECT from %s within %.1f s", conn.label, self._connect_timeout)
            return False
        except (NoDataError, MQTTError, AMQTTError, ValueError, IndexError, struct.error, OSError) as exc:
            logger.info("unreadable CONNECT from %s: %r", conn.label, exc)
            return False
        if connect.fixed_header is None or connect.fixed_header.packet_type != CONNECT:
            logger.info("first packet from %s is not a CONNECT", conn.label)
            return False
        if connect.proto_name != "MQTT" or connect.proto_level != _MQTT_311:
            await self._refuse(conn, ConnectRefusal.UNACCEPTABLE_PROTOCOL, "only MQTT 3.1.1 is supported")
            return False
        conn.client_id = connect.client_id
        if spec.require_client_cert:
            # Mutual TLS adds to the password: the certificate's identity must be this client.
            identity = tls.peer_identity(conn.writer.get_extra_info("ssl_object"))
            username = connect.username if connect.username_flag else None
            if identity is None or identity != username or identity != connect.client_id:
                await self._refuse(
                    conn,
                    ConnectRefusal.NOT_AUTHORIZED,
                    f"client certificate of {identity!r} used for username {username!r}",
                )
                return False
        try:
            admission = await self._policy.admit(
                client_id=connect.client_id,
                username=connect.username if connect.username_flag else None,
                password=connect.password if connect.password_flag else None,
                will_topic=connect.will_topic if connect.will_flag else None,
            )
        except Exception:  # a broken credential source must not kill the listener: refuse, retryably
            logger.exception("credential lookup failed for %s", conn.label)
            await self._refuse(conn, ConnectRefusal.SERVER_UNAVAILABLE, "credential lookup failed")
            return False
        if admission.peer is None:
            await self._refuse(conn, admission.refusal or ConnectRefusal.NOT_AUTHORIZED, admission.reason)
            return False
        client_id = admission.peer.client_id
        previous = self._live.get(client_id)
        self._live[client_id] = conn
        if previous is not None:
            previous.close("taken over by a new connection", abort=True)
            await self._wait_gone(previous, _CLOSE_TIMEOUT)
        if conn.close_reason is not None or conn.address is None:
            return False  # itself taken over while waiting
        self._policy.mark_admitted(client_id, conn.address)
        conn.reader.rewind()
        return True

    async def _refuse(self, conn: _Connection, code: ConnectRefusal, reason: str) -> None:
        logger.info("refusing %s: %s (CONNACK %d)", conn.label, reason, code)
        self._policy.refused(
            Refusal(client=conn.client_id or "(none)", action="connect", target=conn.label, reason=reason)
        )
        try:
            await asyncio.wait_for(
                ConnackPacket.build(0, int(code)).to_stream(conn.writer_adapter), _CLOSE_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            logger.debug("could not send CONNACK to %s: %r", conn.label, exc)
        conn.close(f"refused: {reason}")

    @staticmethod
    async def _wait_gone(conn: _Connection, within: float) -> None:
        try:
            await asyncio.wait_for(conn.done.wait(), within)
        except TimeoutError:
            logger.warning("connection of %s did not end within %.1f s", conn.label, within)

    async def kick(self, client_id: str, reason: str, within: float) -> bool:
        conn = self._live.get(client_id)
        if conn is None:
            return False
        conn.close(reason, abort=True)
        await self._wait_gone(conn, within)
        return True

    async def close_servers(self) -> None:
        for server in self._servers_started:
            server.close()
            await server.wait_closed()

    async def close_all_connections(self, within: float) -> None:
        for conn in list(self._connections):
            conn.close("broker stopping", abort=True)
        pending = [conn.done.wait() for conn in list(self._connections)]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), within)

    # -- amqtt overrides --------------------------------------------------------------------------

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        _, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        if session.keep_alive > 0:
            # Like mosquitto: drop a client silent for 1.5x its keep-alive (timeout_disconnect_delay is 0).
            session.keep_alive += math.ceil(session.keep_alive / 2)
        return _FleetHandler(self.plugins_manager, loop=self._loop), session

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if source_session is not None:
            peer = AccessPolicy.session_peer(source_session)
            if peer is None or not AccessPolicy.may_retain(peer):
                logger.info(
                    "not storing a retained message from %s on %s", source_session.client_id, topic_name
                )
                return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, _ = subscription
        granted = [
            qos for s, qos in self._subscriptions.get(topic_filter, ()) if s.client_id == session.client_id
        ]
        handler = self._get_handler(session)
        if not granted or handler is None:
            return  # amqtt offers every client's subscriptions on CONNECT: only the session's own count
        sends: list[Any] = []
        for topic, retained in list(self._retained_messages.items()):
            if not wire.topic_matches(topic_filter, topic):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                logger.info("%s may not receive the retained message on %s", session.client_id, topic)
                continue
            qos = min(granted[0], granted[0] if retained.qos is None else retained.qos)
            sends.append(
                asyncio.wait_for(
                    handler.mqtt_publish(topic, retained.data, qos, retain=True), _PUBLISH_TIMEOUT
                )
            )
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.info("retained message to %s not delivered: %r", session.client_id, result)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Messages queued while a persistent session was offline: in order, and not flagged RETAIN.
        handler = self._get_handler(session)
        while handler is not None and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            try:
                await asyncio.wait_for(
                    handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False),
                    _PUBLISH_TIMEOUT,
                )
            except (TimeoutError, AMQTTError, OSError) as exc:
                logger.info("queued message to %s not delivered: %r", session.client_id, exc)
                return
