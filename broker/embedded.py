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
* routing and reconnects survive subscriptions changing meanwhile: amqtt walks its live
  subscription table while it awaits, and a SUBSCRIBE or disconnect landing then cost messages
  (:class:`broker.fleet_broker.SubscriptionTable` walks a snapshot).
* TLS listeners (:func:`kernel.tls.server_context`, TLS 1.2 minimum), on port 0 like plain
  ones. With ``require_client_cert`` (mutual TLS) a client without a valid certificate from
  ``cafile`` fails the handshake, and one whose certificate identity
  (:func:`kernel.tls.peer_identity`) is not its username and client id gets CONNACK "not
  authorized"; the password is checked as well, mutual TLS adds to it.

Where it lives: this module is the lifecycle (:class:`EmbeddedBroker`, an async context manager
with an explicit :class:`BrokerState`); :mod:`broker.fleet_broker` the amqtt subclass (the gate and
the overrides); :mod:`broker.connection` one client connection; :mod:`broker.policy` the rules.
amqtt is pinned exactly (``amqtt==0.12.1``) because the subclass overrides its private methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import StrEnum
from types import TracebackType
from typing import Self

from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import BrokerError as AmqttBrokerError
from amqtt.errors import PluginError, PluginLoadError

from .credentials import BrokerError, CredentialSource, RefusalHook
from .fleet_broker import FleetBroker
from .listener import DEFAULT_MAX_PACKET_BYTES, ListenerSpec
from .plugins import FleetAuthPlugin, FleetTopicPlugin
from .policy import AccessPolicy

__all__ = ["DEFAULT_MAX_PACKET_BYTES", "TRANSITIONS", "BrokerState", "EmbeddedBroker", "ListenerSpec"]

logger = logging.getLogger(__name__)


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
        self._broker: FleetBroker | None = None

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
            broker = FleetBroker(
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
        timeout_disconnect_delay=0,  # per client instead: see FleetBroker._initialize_client_session
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
