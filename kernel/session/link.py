"""One MQTT connection that stays up: the transport half of the peer session.

A :class:`Link` connects through an ordered list of broker addresses, sets its will, subscribes,
lets its :class:`Greeter` announce itself, and then hands every inbound message on. When the
connection ends it says so (a typed :class:`~kernel.session.errors.ConnectionLost`) and connects
again, with exponential backoff and jitter::

    async with Link(settings, greeter=greeter) as link:
        async for event in link.events():
            match event:
                case LinkUp(address=address): ...
                case LinkDown(error=error): ...
                case Received(topic=topic, payload=payload): ...

Failover: each round tries the addresses in order, starting with the one that last worked; an
address that fails is followed at once by the next one; when a whole round failed the link waits
(the backoff grows with every failed round) and starts another. After an established connection
is lost the backoff starts over.

Every await that crosses the wire has a timeout (connect, subscribe, publish); silence is the
MQTT keep-alive's business: the client closes a connection whose broker stopped answering, and
that arrives here as :class:`ConnectionLost`. The link knows nothing of printfleet's messages:
:class:`~kernel.session.peer.PeerSession` (devices, bridges) and the controller build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

import aiomqtt

from kernel import tls, wire
from kernel.config import BrokerAddress, TlsSettings
from kernel.session.backoff import Backoff
from kernel.session.errors import ConnectFailed, ConnectionLost, SessionError

log = logging.getLogger(__name__)

#: On closing, a background task still running after this long is cancelled again (on Python 3.11
#: ``asyncio.wait_for``, which aiomqtt uses, can swallow a cancellation that arrives just as the
#: awaited operation completes).
RECANCEL_S = 3.0


class LinkState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    ONLINE = "online"
    BACKING_OFF = "backing-off"
    CLOSING = "closing"
    CLOSED = "closed"


S = LinkState
#: The lifecycle as data: from each state, the states a link may move to.
TRANSITIONS: Mapping[LinkState, frozenset[LinkState]] = {
    S.NEW: frozenset({S.CONNECTING, S.CLOSING}),
    S.CONNECTING: frozenset({S.CONNECTING, S.ONLINE, S.BACKING_OFF, S.CLOSING}),
    S.ONLINE: frozenset({S.BACKING_OFF, S.CLOSING}),
    S.BACKING_OFF: frozenset({S.CONNECTING, S.CLOSING}),
    S.CLOSING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
}


@dataclass(frozen=True, kw_only=True)
class Outbound:
    """One message to publish (a will, a birth, anything)."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    """Who connects where, and how."""

    addresses: tuple[BrokerAddress, ...]
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 10
    #: False: the broker keeps the subscriptions and queues QoS 1 messages while the link is down.
    clean_session: bool = True
    #: Used for every ``mqtts://`` address (required when there is one).
    tls: TlsSettings | None = None
    subscriptions: tuple[str, ...] = ()
    #: Bounds the CONNECT/CONNACK exchange, each SUBSCRIBE and each QoS 1 PUBLISH.
    timeout_s: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    #: Inbound messages waiting for the reader beyond this push back on the connection.
    queue_size: int = 1000

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("a link needs at least one broker address")
        if any(a.tls for a in self.addresses) and self.tls is None:
            raise ValueError("mqtts:// addresses need TLS settings (the fleet's CA)")
        if not 1 <= self.keepalive <= 65535:
            raise ValueError("keepalive must be between 1 and 65535 seconds")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")


@dataclass(frozen=True, kw_only=True)
class LinkUp:
    """The link is online at ``address`` (subscribed, greeted)."""

    address: BrokerAddress


@dataclass(frozen=True, kw_only=True)
class LinkDown:
    """The connection ended; the link is connecting again."""

    error: ConnectionLost


@dataclass(frozen=True, kw_only=True)
class Received:
    topic: str
    payload: bytes
    retain: bool = False


LinkEvent = LinkUp | LinkDown | Received
#: Publishes on the connection being set up (an error there fails the connection attempt).
Send = Callable[[Outbound], Awaitable[None]]


class Greeter(Protocol):
    """How the link's owner announces itself (both called for every connection attempt)."""

    async def will(self) -> Outbound | None:
        """The will the broker publishes if this connection dies."""
        ...

    async def greet(self, send: Send) -> None:
        """Publish what must precede everything else on a new connection (a birth)."""
        ...


def tls_context(settings: TlsSettings) -> ssl.SSLContext:
    """The one way a peer's TLS client context is built: the fleet's CA only, plus this peer's
    certificate under mutual TLS."""
    return tls.client_context_from_pem(settings.ca_pem, settings.cert_pem, settings.key_pem)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again while it runs on."""
    task.cancel()
    while not (await asyncio.wait({task}, timeout=RECANCEL_S))[0]:
        log.debug("task %s still running: cancelling it again", task.get_name())
        task.cancel()


class Link:
    """The connection owner. Nothing happens before ``async with``; see the module docstring."""

    def __init__(
        self, settings: LinkSettings, *, greeter: Greeter | None = None, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self._greeter = greeter
        self._rng = rng or random.Random()
        self.state = LinkState.NEW
        #: Set while the link is online (greeted); cleared as soon as it is not.
        self.online = asyncio.Event()
        #: Where the link is (or was last) online.
        self.address: BrokerAddress | None = None
        #: Why the last connection or attempt ended.
        self.last_error: SessionError | None = None
        self._client: aiomqtt.Client | None = None
        self._events: asyncio.Queue[LinkEvent] = asyncio.Queue(maxsize=settings.queue_size)
        self._tls: ssl.SSLContext | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def _move(self, new: LinkState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise SessionError(f"link {self.settings.client_id}: no transition {self.state} -> {new}")
        self.state = new

    async def __aenter__(self) -> Link:
        if self.state is not LinkState.NEW:
            raise SessionError(f"link {self.settings.client_id} was already started")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self.start_task(self._run(), name=f"mqtt-link-{self.settings.client_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._move(LinkState.CLOSING)
        self.online.clear()
        try:
            for task in reversed(self._tasks):
                await cancel_and_wait(task)
        finally:
            assert self._tg is not None
            try:
                # The body's own exception propagates by itself; the group adds only its tasks'
                # failures (and a cancellation, which it must see to account for it).
                cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
                await self._tg.__aexit__(*((exc_type, exc, tb) if cancelled else (None, None, None)))
            finally:
                self._move(LinkState.CLOSED)

    def start_task(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` for as long as the link is open (cancelled when it closes; if it fails,
        the failure ends the ``async with`` block)."""
        if self._tg is None or self.state in (LinkState.CLOSING, LinkState.CLOSED):
            raise SessionError(f"link {self.settings.client_id} is not open")
        task = self._tg.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    # -- use ----------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Every :class:`LinkUp`, :class:`LinkDown` and :class:`Received`, in order (one reader)."""
        while True:
            yield await self._events.get()

    async def publish(self, message: Outbound) -> bool:
        """Publish while online; False (nothing sent, nothing raised) when offline or it failed."""
        client = self._client
        if client is None or self.state is not LinkState.ONLINE:
            return False
        try:
            await _publish(client, message, self.settings.timeout_s)
        except aiomqtt.MqttError as exc:
            log.debug("%s: publish on %s failed: %s", self.settings.client_id, message.topic, exc)
            return False
        return True

    # -- the connection loop ------------------------------------------------------------------

    async def _run(self) -> None:
        addresses = self.settings.addresses
        start = 0
        failed_rounds = 0
        while True:
            for i in range(len(addresses)):
                index = (start + i) % len(addresses)
                self._move(LinkState.CONNECTING)
                try:
                    await self._connection(addresses[index])
                except ConnectFailed as exc:
                    self.last_error = exc
                    log.warning("%s: %s", self.settings.client_id, exc)
                    continue
                except ConnectionLost as exc:
                    self.last_error = exc
                    log.warning("%s: %s; connecting again", self.settings.client_id, exc)
                    await self._events.put(LinkDown(error=exc))
                    start, failed_rounds = index, 0
                    break
            else:
                failed_rounds += 1
            self._move(LinkState.BACKING_OFF)
            await asyncio.sleep(self.settings.backoff.delay(max(failed_rounds - 1, 0), self._rng))

    async def _connection(self, address: BrokerAddress) -> None:
        """Connect, subscribe, greet, then pass messages on until the connection ends (always by
        an exception: :class:`ConnectFailed` before it was online, :class:`ConnectionLost` after)."""
        s = self.settings
        will = await self._greeter.will() if self._greeter is not None else None
        if address.tls and self._tls is None:
            assert s.tls is not None  # LinkSettings refuses mqtts:// without it
            self._tls = tls_context(s.tls)
        client = aiomqtt.Client(
            address.host,
            address.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            keepalive=s.keepalive,
            clean_session=s.clean_session,
            timeout=s.timeout_s,
            will=None
            if will is None
            else aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
            socket_options=(wire.TCP_NODELAY_OPTION,),
            tls_context=self._tls if address.tls else None,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(client)
                for topic in s.subscriptions:
                    await client.subscribe(topic, qos=1, timeout=s.timeout_s)
                if self._greeter is not None:
                    await self._greeter.greet(lambda m: self._send_greeting(client, m))
                await self._serve(client, address)
        except aiomqtt.MqttError as exc:
            # before the link was online: this address failed; after: the connection was lost
            if self.state is LinkState.ONLINE:
                raise ConnectionLost(address, str(exc)) from exc
            raise ConnectFailed(address, str(exc)) from exc

    async def _serve(self, client: aiomqtt.Client, address: BrokerAddress) -> None:
        self._client = client
        self.address = address
        self._move(LinkState.ONLINE)
        self.online.set()
        log.info("%s online at %s", self.settings.client_id, address)
        try:
            await self._events.put(LinkUp(address=address))
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    received = Received(
                        topic=str(message.topic), payload=bytes(payload), retain=message.retain
                    )
                    await self._events.put(received)
        finally:
            self._client = None
            self.online.clear()
        raise ConnectionLost(address, "the message stream ended")

    async def _send_greeting(self, client: aiomqtt.Client, message: Outbound) -> None:
        await _publish(client, message, self.settings.timeout_s)


async def _publish(client: aiomqtt.Client, message: Outbound, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain, timeout=timeout_s
            )
    except TimeoutError as exc:
        raise aiomqtt.MqttError(f"publish on {message.topic} timed out after {timeout_s:.0f} s") from exc
