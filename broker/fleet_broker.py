"""The amqtt ``Broker`` subclass behind :class:`broker.embedded.EmbeddedBroker`: the CONNECT gate in
front of amqtt's session handling, and the overrides of amqtt's private methods that fix its
behaviour (keep-alive, retained messages, the offline queue, the subscription table).

amqtt is pinned exactly (``amqtt==0.12.1``) because this module overrides its private methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import struct
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import websockets.asyncio.server
from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.packet import CONNECT
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from kernel import tls, wire

from .connection import Connection, FleetHandler
from .credentials import BrokerError, Refusal
from .listener import ListenerSpec
from .policy import AccessPolicy, ConnectRefusal

__all__ = ["FleetBroker", "SubscriptionTable"]

logger = logging.getLogger(__name__)

_MQTT_311 = 4
_PUBLISH_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 5.0

_Entries = list[tuple[Session, int]]


class SubscriptionTable(dict[str, _Entries]):
    """amqtt's subscription table (topic filter -> [(session, granted QoS)]), walked over a snapshot.

    amqtt 0.12.1 walks this table while it awaits: routing a message awaits the receive ACL of each
    subscriber, and a persistent session's CONNECT awaits the retained replay of each filter. A
    SUBSCRIBE, UNSUBSCRIBE or clean disconnect handled meanwhile changed the live dict, and the walk
    died with "dictionary changed size during iteration": the message skipped every subscriber not
    yet reached, or the reconnecting client's message loop never started after its CONNACK. A list
    entry removed meanwhile shifted the next subscriber out of the walk. Here a walk (iteration,
    ``items()``, ``values()``) goes over a copy taken when it starts; lookups and changes go to the
    live table, so a subscriber added after a message's walk began gets the next message.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def keys(self) -> list[str]:  # type: ignore[override]  # a snapshot, not a live view
        return list(super().keys())

    def items(self) -> list[tuple[str, _Entries]]:  # type: ignore[override]  # a snapshot
        return [(topic_filter, list(entries)) for topic_filter, entries in super().items()]

    def values(self) -> list[_Entries]:  # type: ignore[override]  # a snapshot
        return [list(entries) for entries in super().values()]


class FleetBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
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
        self._subscriptions = SubscriptionTable()
        self._policy = policy
        self._specs = dict(zip(config.listeners.keys(), listeners, strict=True))
        self._ssl = dict(zip(config.listeners.keys(), ssl_contexts, strict=True))
        self._max_packet_bytes = max_packet_bytes
        self._connect_timeout = connect_timeout
        self._servers_started: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._live: dict[str, Connection] = {}

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
        conn = Connection(reader, writer, self._max_packet_bytes)
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

    async def _admit(self, conn: Connection, spec: ListenerSpec) -> bool:
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

    async def _refuse(self, conn: Connection, code: ConnectRefusal, reason: str) -> None:
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
    async def _wait_gone(conn: Connection, within: float) -> None:
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
        return FleetHandler(self.plugins_manager, loop=self._loop), session

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
