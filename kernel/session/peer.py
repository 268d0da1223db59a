"""The MQTT peer session of a device agent or a phone bridge: the one copy both use.

::

    async with PeerSession(settings, store=journal, keys=keys, birth=make_birth) as session:
        async for msg in session.messages():
            match msg:
                case Connected(): ...            # online: birth and sync request already sent
                case ControllerPresence(): ...   # the controller went online/offline or restarted
                case Instruction(body=wire.JobPrint() as job): ...
        ...
        await session.publish(wire.Heartbeat(...))

What it does for its owner, on top of :class:`~kernel.session.link.Link` (failover, reconnects,
TLS, timeouts):

* every connection gets a new session number (from the store), a will carrying it, and a
  birth then a sync request before anything else;
* it follows the controller's presence (its retained birth and will) and announces itself again
  when the controller restarted (a new controller session);
* an instruction reaches the owner only when it is signed by a trusted controller key, addressed
  to this peer by its controller, of a type the controller sends, never seen before (a replay
  guard per sender whose floor is kept in the store, so it survives restarts) and not expired on
  the controller's clock (heartbeat acks, which teach that clock, excepted);
* whatever it refuses is reported to the controller (``refused``, audited there) and resent until
  acknowledged; the owner refuses what it cannot act on with :meth:`PeerSession.refuse`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kernel import wire
from kernel.config import BrokerAddress, TlsSettings
from kernel.session.backoff import Backoff
from kernel.session.errors import ConnectionLost, SessionError
from kernel.session.link import (
    Link,
    LinkDown,
    LinkSettings,
    LinkState,
    LinkUp,
    Outbound,
    Received,
    Send,
)
from kernel.session.store import SessionStore

log = logging.getLogger(__name__)

#: Refusals kept for resending until acknowledged (the oldest are dropped beyond this).
MAX_PENDING_REFUSALS = 200
#: An unacknowledged refusal is sent again after this long.
REFUSAL_RESEND_S = 5.0
#: On a clean stop the goodbye (a will with a reason) gets this long.
GOODBYE_TIMEOUT_S = 2.0


@dataclass(frozen=True, kw_only=True)
class PeerSettings:
    peer: wire.Peer
    controller: wire.Peer
    addresses: tuple[BrokerAddress, ...]
    username: str
    password: str
    keepalive: int = 10
    tls: TlsSettings | None = None
    #: The agent keeps its broker session (QoS 1 instructions wait for it); a bridge does not.
    clean_session: bool = True
    #: The reason the goodbye gives on a clean stop ("agent stopped").
    goodbye: str = "stopped"
    timeout_s: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)

    def link(self) -> LinkSettings:
        return LinkSettings(
            addresses=self.addresses,
            client_id=self.peer.client_id,
            username=self.username,
            password=self.password,
            keepalive=self.keepalive,
            clean_session=self.clean_session,
            tls=self.tls,
            subscriptions=(self.peer.topic(wire.Channel.DOWN), wire.CONTROLLER_PRESENCE_TOPIC),
            timeout_s=self.timeout_s,
            backoff=self.backoff,
        )


class ControllerState(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, kw_only=True)
class ControllerStatus:
    state: ControllerState = ControllerState.UNKNOWN
    session: int | None = None


# -- what messages() yields ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Connected:
    """Online (again) at ``address`` as session ``session``: birth and sync request are sent."""

    session: int
    address: BrokerAddress


@dataclass(frozen=True, kw_only=True)
class Disconnected:
    """The connection ended (the session is connecting again)."""

    error: ConnectionLost


@dataclass(frozen=True, kw_only=True)
class ControllerPresence:
    """The controller's presence changed; ``restarted``: a new controller session (this peer has
    announced itself to it again)."""

    status: ControllerStatus
    restarted: bool = False

    @property
    def online(self) -> bool:
        return self.status.state is ControllerState.ONLINE


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """A verified instruction from the controller (signed, addressed, fresh, unexpired)."""

    envelope: wire.Envelope
    body: wire.Body

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> wire.MsgType:
        return self.envelope.type


SessionMessage = Connected | Disconnected | ControllerPresence | Instruction
#: Builds the birth of a new connection from its session number.
BirthFactory = Callable[[int], wire.Birth]


class PeerSession:
    """See the module docstring. Nothing happens before ``async with``.

    ``store`` keeps the replay floors and session numbers; ``keys`` are the controller keys
    trusted at start (:meth:`trust` replaces them); ``birth`` builds each connection's birth from
    its session number; ``clock`` is the controller's clock as the owner estimates it (expiry is
    judged on it).
    """

    def __init__(
        self,
        settings: PeerSettings,
        *,
        store: SessionStore,
        keys: Mapping[str, Ed25519PublicKey],
        birth: BirthFactory,
        clock: Callable[[], int] = wire.now_ms,
    ) -> None:
        self.settings = settings
        self._store = store
        self._keys = dict(keys)
        self._birth = birth
        self._clock = clock
        self._link = Link(settings.link(), greeter=self)
        self._seq = wire.Sequencer()
        #: The session number of the current (or last) connection; 0 before the first.
        self.number = 0
        self._next_number = 0
        self._guards: dict[str, wire.ReplayGuard] = {}
        self._refusals: dict[str, wire.Refused] = {}
        self._refusal_sent: dict[str, float] = {}
        self._controller = ControllerStatus()
        #: Set while the controller is known to be online.
        self.controller_online = asyncio.Event()

    # -- state --------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._link.state

    @property
    def online(self) -> asyncio.Event:
        """Set while connected and announced."""
        return self._link.online

    @property
    def address(self) -> BrokerAddress | None:
        return self._link.address

    @property
    def last_error(self) -> SessionError | None:
        return self._link.last_error

    @property
    def controller(self) -> ControllerStatus:
        return self._controller

    @property
    def trusted_kids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def trust(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        """From now on, accept instructions signed by ``keys`` only (after a ``keys.update``)."""
        self._keys = dict(keys)

    @property
    def pending_refusals(self) -> int:
        return len(self._refusals)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> PeerSession:
        await self._link.__aenter__()
        self._link.start_task(
            self._resend_refusals(), name=f"session-refusals-{self.settings.peer.client_id}"
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.online.is_set():  # a clean stop: the controller need not wait for the deadline
                bye = wire.Will(session=self.number, reason=self.settings.goodbye)
                try:
                    async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                        await self.publish(bye)
                except TimeoutError:
                    log.debug("%s: no time for the goodbye", self.settings.peer)
        finally:
            await self._link.__aexit__(exc_type, exc, tb)

    # -- the greeter (called by the link for each connection) ---------------------------------

    async def will(self) -> Outbound:
        self._next_number = await self._store.next_session()
        env = self._envelope(wire.Will(session=self._next_number), seq=0)
        return Outbound(topic=self.settings.peer.topic(wire.Channel.PRESENCE), payload=env.encode())

    async def greet(self, send: Send) -> None:
        self.number = self._next_number
        await self._announce(send)

    async def _announce(self, send: Send) -> None:
        for body in (self._birth(self.number), wire.SyncRequest(session=self.number)):
            await send(self._outbound(body))

    # -- sending ------------------------------------------------------------------------------

    def _envelope(self, body: wire.Body, *, seq: int | None = None) -> wire.Envelope:
        s = self.settings
        return wire.Envelope.build(
            body, src=s.peer, dst=s.controller, seq=self._seq.next() if seq is None else seq
        )

    def _outbound(self, body: wire.Body) -> Outbound:
        channel = wire.Channel.PRESENCE if body.TYPE in wire.PRESENCE_TYPES else wire.Channel.UP
        return Outbound(topic=self.settings.peer.topic(channel), payload=self._envelope(body).encode())

    async def publish(self, body: wire.Body) -> bool:
        """Send ``body`` to the controller (births and wills on the presence topic, the rest up);
        False when not online or the broker did not take it (the caller decides to retry)."""
        return await self._link.publish(self._outbound(body))

    async def refuse(self, reason: str, message_id: str = "") -> None:
        """Report a refused instruction to the controller; resent until acknowledged."""
        log.warning("%s refused an instruction: %s", self.settings.peer, reason)
        refused = wire.Refused(message_id=message_id[:64], reason=reason[:200], report_id=uuid.uuid4().hex)
        assert refused.report_id is not None
        self._refusals[refused.report_id] = refused
        while len(self._refusals) > MAX_PENDING_REFUSALS:
            dropped = next(iter(self._refusals))
            del self._refusals[dropped]
            self._refusal_sent.pop(dropped, None)
        if await self.publish(refused):
            self._refusal_sent[refused.report_id] = asyncio.get_running_loop().time()

    async def _resend_refusals(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REFUSAL_RESEND_S / 2)
            if not self.online.is_set():
                continue
            for rid, refused in list(self._refusals.items()):
                sent = self._refusal_sent.get(rid)
                if sent is not None and loop.time() - sent < REFUSAL_RESEND_S:
                    continue
                if not await self.publish(refused):
                    break
                self._refusal_sent[rid] = loop.time()

    # -- receiving ----------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[SessionMessage]:
        """Every connection change, controller presence change and verified instruction, in
        order. One reader; the session follows presence and refuses bad instructions only while
        someone reads."""
        async for event in self._link.events():
            match event:
                case LinkUp(address=address):
                    self._refusal_sent.clear()  # resend what is unacknowledged on the new connection
                    yield Connected(session=self.number, address=address)
                case LinkDown(error=error):
                    yield Disconnected(error=error)
                case Received(topic=topic, payload=payload):
                    message = await self._accept(topic, payload)
                    if message is not None:
                        yield message

    async def _accept(self, topic: str, payload: bytes) -> ControllerPresence | Instruction | None:
        try:
            env = wire.decode(payload)
            env.verify(self._keys)
        except wire.WireError as exc:
            await self.refuse(f"{exc} (on {topic})")
            return None
        if topic == wire.CONTROLLER_PRESENCE_TOPIC:
            return await self._on_presence(env)
        me, controller = self.settings.peer.client_id, self.settings.controller.client_id
        if env.dst != me or env.src != controller:
            await self.refuse(f"addressed to {env.dst} from {env.src}", env.id)
            return None
        if env.type not in wire.DOWNSTREAM_TYPES:
            await self.refuse(f"unexpected {env.type} (seq {env.seq}): not an instruction", env.id)
            return None
        if not await self._fresh(env):
            # the bridge's wording ("unexpected or replayed") and the agent's ("replayed instruction")
            await self.refuse(
                f"unexpected or replayed {env.type} (seq {env.seq}): a replayed instruction,"
                " or one too old to tell from a replay",
                env.id,
            )
            return None
        # The clock is learnt from heartbeat acks, so they cannot be judged on it; every other
        # instruction must still be valid on the controller's clock.
        if env.type is not wire.MsgType.HEARTBEAT_ACK and (env.exp is None or env.expired(self._clock())):
            await self.refuse("expired instruction" if env.exp else "instruction without expiry", env.id)
            return None
        try:
            body = env.body_model()
        except wire.WireError as exc:
            await self.refuse(str(exc), env.id)
            return None
        if isinstance(body, wire.ReportAck):
            for rid in body.report_ids:
                self._refusals.pop(rid, None)
                self._refusal_sent.pop(rid, None)
        return Instruction(envelope=env, body=body)

    async def _fresh(self, env: wire.Envelope) -> bool:
        """Each sequence number of the controller is acted on once, across restarts: the highest
        accepted is kept in the store (``seq_floor:<sender>``) before the instruction is handed on."""
        guard = self._guards.get(env.src)
        if guard is None:
            floor = await self._store.get_kv(f"seq_floor:{env.src}")
            guard = self._guards[env.src] = wire.ReplayGuard(int(floor) if floor else 0)
        before = guard.max_seq
        if not guard.accept(env.seq):
            return False
        if guard.max_seq != before:
            await self._store.set_kv(f"seq_floor:{env.src}", str(guard.max_seq))
        return True

    async def _on_presence(self, env: wire.Envelope) -> ControllerPresence | None:
        """The controller's retained birth or will. A session older than the one known is stale
        (a late message never moves presence backwards)."""
        match env.type:
            case wire.MsgType.CONTROLLER_ONLINE:
                session, state = env.parsed(wire.ControllerOnline).session, ControllerState.ONLINE
            case wire.MsgType.CONTROLLER_OFFLINE:
                session, state = env.parsed(wire.ControllerOffline).session, ControllerState.OFFLINE
            case _:
                log.warning(
                    "%s: ignored a %s on the controller's presence topic", self.settings.peer, env.type
                )
                return None
        known = self._controller
        if known.session is not None and session < known.session:
            return None
        status = ControllerStatus(state=state, session=session)
        if status == known:
            return None
        restarted = state is ControllerState.ONLINE and known.session not in (None, session)
        self._controller = status
        if state is ControllerState.ONLINE:
            self.controller_online.set()
        else:
            self.controller_online.clear()
        if restarted:
            log.info(
                "controller restarted (session %d); %s announces itself again", session, self.settings.peer
            )
            await self._announce(self._send_now)
        return ControllerPresence(status=status, restarted=restarted)

    async def _send_now(self, message: Outbound) -> None:
        await self._link.publish(message)
