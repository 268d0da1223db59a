"""The controller's one MQTT session with the fleet: signed instructions out, checked messages in.

Everything that knows the MQTT client library lives in this module (it is where the session moves
onto the kernel's shared peer session). :class:`Link` connects with a will, announces the
controller's presence (signed, retained), subscribes, reconnects with backoff and jitter, and hands
each accepted message to its ``deliver`` callback; :meth:`Link.send` publishes a signed, addressed,
expiring instruction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import aiomqtt

from cloud.keys import Keyring
from kernel import wire

log = logging.getLogger(__name__)

#: Accepted messages go here (it may wait: a full inbound lane pushes back on the connection).
Deliver = Callable[[wire.Peer, wire.Envelope], Awaitable[None]]
#: Records a refusal that matters for security: (actor, action, target, detail).
Security = Callable[[str, str, str | None, str], Awaitable[None]]


class LinkState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    host: str
    port: int
    secret: str
    session_number: int
    #: How long an instruction stays valid.
    instruction_ttl_s: float
    tls_context: ssl.SSLContext | None = None


class Link:
    def __init__(self, *, peer: wire.Peer, settings: LinkSettings, keyring: Keyring) -> None:
        self.peer = peer
        self.settings = settings
        self.keyring = keyring
        #: The signing key ids each peer reported trusting (from its heartbeats).
        self.trusted: dict[str, tuple[str, ...]] = {}
        self._seq = wire.Sequencer()
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.state = LinkState.DISCONNECTED
        self.last_error: str | None = None
        self._on_connect: Callable[[], None] = lambda: None

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Called each time the session is (re)established."""
        self._on_connect = callback

    # -- the session --------------------------------------------------------------------------

    async def run(self, deliver: Deliver, security: Security) -> None:
        """Keep the session up until cancelled; every accepted message goes to ``deliver``."""
        cfg = self.settings
        backoff = 0.2
        offline = wire.Envelope.build(
            wire.ControllerOffline(session=cfg.session_number), src=self.peer, dst="*", seq=0
        ).signed(self.keyring.keys[-1])
        try:
            while True:
                try:
                    async with aiomqtt.Client(
                        cfg.host,
                        cfg.port,
                        identifier=self.peer.client_id,
                        username=self.peer.client_id,
                        password=cfg.secret,
                        keepalive=10,
                        clean_session=True,
                        timeout=10,
                        will=aiomqtt.Will(
                            wire.CONTROLLER_PRESENCE_TOPIC, offline.encode(), qos=1, retain=True
                        ),
                        socket_options=(wire.TCP_NODELAY_OPTION,),
                        tls_context=cfg.tls_context,
                    ) as client:
                        for topic in wire.CONTROLLER_SUBSCRIPTIONS:
                            await client.subscribe(topic, qos=1)
                        # signed with the oldest key still in use: the one every peer trusts
                        online = wire.Envelope.build(
                            wire.ControllerOnline(session=cfg.session_number, started_at=wire.now_ms()),
                            src=self.peer,
                            dst="*",
                            seq=self._seq.next(),
                        ).signed(self.keyring.keys[-1])
                        await client.publish(
                            wire.CONTROLLER_PRESENCE_TOPIC, online.encode(), qos=1, retain=True
                        )
                        self._client = client
                        self.state = LinkState.CONNECTED
                        self.connected.set()
                        self._on_connect()
                        backoff = 0.2
                        log.info("controller connected to broker %s:%d", cfg.host, cfg.port)
                        async for message in client.messages:
                            accepted = await self._accept(message, security)
                            if accepted is not None:
                                await deliver(*accepted)
                except aiomqtt.MqttError as exc:
                    self.last_error = str(exc)
                    log.warning("controller lost the broker (%s); reconnecting in %.1f s", exc, backoff)
                finally:
                    self._client = None
                    self.connected.clear()
                    if self.state is not LinkState.STOPPED:
                        self.state = LinkState.DISCONNECTED
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
        finally:
            self.state = LinkState.STOPPED

    async def _accept(
        self, message: aiomqtt.Message, security: Security
    ) -> tuple[wire.Peer, wire.Envelope] | None:
        """Check where a message came from and that it may say what it says; None if not."""
        topic = str(message.topic)
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return None
        try:
            peer, channel = wire.parse_topic(topic)
            env = wire.decode(payload)
        except wire.WireError as exc:
            await security(f"topic:{topic}", "message.invalid", topic, str(exc))
            return None
        if env.src != peer.client_id:
            await security(peer.client_id, "message.spoofed", env.src, f"on {topic} claiming src {env.src}")
            return None
        upstream = wire.BRIDGE_UPSTREAM_TYPES if peer.role is wire.Role.BRIDGE else wire.UPSTREAM_TYPES
        allowed = wire.PRESENCE_TYPES if channel is wire.Channel.PRESENCE else upstream
        if env.type not in allowed or channel is wire.Channel.DOWN:
            log.warning("dropped a %s message on %s", env.type, topic)
            return None
        if peer.role not in (wire.Role.DEVICE, wire.Role.BRIDGE):
            return None
        return peer, env

    # -- sending ------------------------------------------------------------------------------

    def instruction(self, body: wire.Body, dst: wire.Peer, *, exp: int | None = None) -> wire.Envelope:
        """An instruction: addressed, sequenced, signed (with a key ``dst`` trusts), valid for a bounded
        time only."""
        if exp is None:
            exp = wire.now_ms() + int(self.settings.instruction_ttl_s * 1000)
        key = self.keyring.for_peer(self.trusted.get(dst.name))
        return wire.Envelope.build(body, src=self.peer, dst=dst, seq=self._seq.next(), exp=exp).signed(key)

    async def send(self, peer: wire.Peer, body: wire.Body) -> bool:
        """Publish a signed instruction to a peer; False if the broker is not reachable now."""
        client = self._client
        if client is None:
            return False
        env = self.instruction(body, peer)
        try:
            await client.publish(peer.topic(wire.Channel.DOWN), env.encode(), qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("publish to %s failed: %s", peer, exc)
            return False
        return True
