"""The controller's one MQTT session with the fleet: signed instructions out, checked messages in.

The connection itself is the kernel's peer session (:class:`kernel.session.Link`: failover,
reconnects with backoff and jitter, a timeout on every exchange, TLS built one way), the same code
the device agent and the phone bridge run on. What is the controller's own lives here:

* :class:`ControllerGreeter`: a retained, signed ``controller.offline`` as the will, and a
  retained, signed ``controller.online`` with the controller's session number on every connection;
* :class:`FleetLink`: the settings the controller connects with (:func:`link_settings`), each
  inbound message checked (who sent it, on which topic, whether it may say that) before it is
  handed on, and :meth:`FleetLink.send`, which publishes a signed, addressed, expiring instruction.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from cloud.keys import Keyring
from kernel import wire
from kernel.config import BrokerAddress, TlsSettings
from kernel.session import (
    Backoff,
    Link,
    LinkDown,
    LinkSettings,
    LinkState,
    LinkUp,
    Outbound,
    Received,
    Send,
    SessionError,
)

log = logging.getLogger(__name__)

#: Accepted messages go here (it may wait: a full inbound lane pushes back on the connection).
Deliver = Callable[[wire.Peer, wire.Envelope], Awaitable[None]]
#: Records a refusal that matters for security: (actor, action, target, detail).
Security = Callable[[str, str, str | None, str], Awaitable[None]]

#: The controller's keep-alive: a dead controller's will is published within 1.5 times this.
KEEPALIVE_S = 10
#: Reconnect delays grow to this cap (then jittered).
BACKOFF = Backoff(maximum=5.0)
#: Inbound messages the session holds for the checker before it pushes back on the connection
#: (as many as each of the inbound lanes holds).
INBOUND_QUEUE = 10_000


def link_settings(
    *, peer: wire.Peer, addresses: tuple[BrokerAddress, ...], secret: str, tls: TlsSettings | None = None
) -> LinkSettings:
    """How the controller connects: as ``peer`` (client id and user name alike), a clean session,
    subscribed to everything the fleet sends up."""
    return LinkSettings(
        addresses=addresses,
        client_id=peer.client_id,
        username=peer.client_id,
        password=secret,
        keepalive=KEEPALIVE_S,
        clean_session=True,
        tls=tls,
        subscriptions=wire.CONTROLLER_SUBSCRIPTIONS,
        backoff=BACKOFF,
        queue_size=INBOUND_QUEUE,
    )


class ControllerGreeter:
    """What the controller says on each connection: a retained will saying offline, a retained
    birth saying online, both signed, with its session number (one per controller start).

    ``key`` gives the key to sign with at the moment of signing: the controller signs its presence
    with the oldest key still in use, the one every peer trusts. ``seq`` numbers the births (the
    controller shares it with its instructions); the will is always number 0.
    """

    def __init__(
        self,
        *,
        peer: wire.Peer,
        session: int,
        key: Callable[[], wire.SigningKey],
        seq: wire.Sequencer | None = None,
    ) -> None:
        self.peer = peer
        self.session = session
        self.key = key
        self.seq = seq or wire.Sequencer()

    def _presence(self, body: wire.Body, seq: int) -> Outbound:
        env = wire.Envelope.build(body, src=self.peer, dst="*", seq=seq).signed(self.key())
        return Outbound(topic=wire.CONTROLLER_PRESENCE_TOPIC, payload=env.encode(), retain=True)

    async def will(self) -> Outbound:
        return self._presence(wire.ControllerOffline(session=self.session), 0)

    async def greet(self, send: Send) -> None:
        body = wire.ControllerOnline(session=self.session, started_at=wire.now_ms())
        await send(self._presence(body, self.seq.next()))


class FleetLink:
    """The controller's session. Nothing connects before :meth:`run`; ``online`` is set while the
    session is up (subscribed, greeted) and cleared as soon as it is not."""

    def __init__(
        self,
        *,
        peer: wire.Peer,
        settings: LinkSettings,
        keyring: Keyring,
        session_number: int,
        instruction_ttl_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.peer = peer
        self.keyring = keyring
        self.session_number = session_number
        #: How long an instruction stays valid.
        self.instruction_ttl_s = instruction_ttl_s
        #: The signing key ids each peer reported trusting (from its heartbeats).
        self.trusted: dict[str, tuple[str, ...]] = {}
        self._seq = wire.Sequencer()
        self.greeter = ControllerGreeter(
            peer=peer, session=session_number, key=lambda: keyring.keys[-1], seq=self._seq
        )
        self._link = Link(settings, greeter=self.greeter, rng=rng)

    @property
    def online(self) -> asyncio.Event:
        return self._link.online

    @property
    def state(self) -> LinkState:
        return self._link.state

    @property
    def last_error(self) -> SessionError | None:
        """Why the last connection, or attempt to connect, ended."""
        return self._link.last_error

    # -- the session --------------------------------------------------------------------------

    async def run(self, deliver: Deliver, security: Security, *, came_up: Callable[[], None]) -> None:
        """Keep the session up until cancelled: every accepted message goes to ``deliver``, every
        refusal that matters to ``security``; ``came_up`` is called each time it is (re)established."""
        async with self._link:
            async for event in self._link.events():
                match event:
                    case Received(topic=topic, payload=payload):
                        accepted = await self._accept(topic, payload, security)
                        if accepted is not None:
                            await deliver(*accepted)
                    case LinkUp():
                        came_up()
                    case LinkDown():
                        pass  # the session logged it, and keeps why in last_error

    async def _accept(
        self, topic: str, payload: bytes, security: Security
    ) -> tuple[wire.Peer, wire.Envelope] | None:
        """Check where a message came from and that it may say what it says; None if not."""
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
            exp = wire.now_ms() + int(self.instruction_ttl_s * 1000)
        key = self.keyring.for_peer(self.trusted.get(dst.name))
        return wire.Envelope.build(body, src=self.peer, dst=dst, seq=self._seq.next(), exp=exp).signed(key)

    async def send(self, peer: wire.Peer, body: wire.Body) -> bool:
        """Publish a signed instruction to a peer; False if the broker is not reachable now."""
        if self.state is not LinkState.ONLINE:
            return False
        env = self.instruction(body, peer)
        sent = await self._link.publish(Outbound(topic=peer.topic(wire.Channel.DOWN), payload=env.encode()))
        if not sent:
            log.warning("publish to %s failed", peer)
        return sent
