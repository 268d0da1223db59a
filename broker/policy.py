"""The broker's access policy: who is admitted on CONNECT, and which topics each peer may touch.

Broker-agnostic: :class:`AccessPolicy` decides from :func:`kernel.wire.access_rules`, the same rules
:mod:`broker.acl` writes into mosquitto's ACL file. :mod:`broker.plugins` adapts it to amqtt's plugin
interface and the gate in :mod:`broker.fleet_broker` asks it on every CONNECT.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Protocol

from kernel import wire

from .credentials import CredentialSource, Refusal, RefusalHook
from .passwords import verify_password

__all__ = ["AccessPolicy", "Admission", "ConnectRefusal", "SessionLike", "TopicAction"]

logger = logging.getLogger(__name__)


class TopicAction(Enum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    RECEIVE = "receive"


class ConnectRefusal(IntEnum):
    """CONNACK return codes of MQTT 3.1.1 that the admission check can answer."""

    UNACCEPTABLE_PROTOCOL = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USERNAME_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05


@dataclass(frozen=True, kw_only=True)
class Admission:
    """The outcome of checking one CONNECT: a peer, or the reason it is refused."""

    peer: wire.Peer | None = None
    refusal: ConnectRefusal | None = None
    reason: str = ""


class SessionLike(Protocol):
    """What the policy reads of a broker session (amqtt's ``Session`` has these)."""

    @property
    def client_id(self) -> str | None: ...

    @property
    def username(self) -> str | None: ...


@dataclass(kw_only=True)
class AccessPolicy:
    """Authentication and topic ACLs for the embedded broker (the mosquitto files encode the same)."""

    credentials: CredentialSource
    lookup_timeout: float = 10.0
    #: Called (synchronously, so it must not block) for every refused CONNECT, SUBSCRIBE and PUBLISH.
    on_refusal: RefusalHook | None = None
    #: Client ids admitted by the CONNECT gate (with the connection's address); the auth plugin
    #: confirms each admission exactly once.
    _admitted: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    async def admit(
        self,
        *,
        client_id: str | None,
        username: str | None,
        password: str | None,
        will_topic: str | None,
    ) -> Admission:
        """Check a CONNECT's identity: credentials, client id == username, and the will topic."""
        if username is None:
            return Admission(refusal=ConnectRefusal.NOT_AUTHORIZED, reason="anonymous")
        if password is None:
            return Admission(refusal=ConnectRefusal.BAD_USERNAME_PASSWORD, reason="no password")
        if client_id != username:
            return Admission(
                refusal=ConnectRefusal.IDENTIFIER_REJECTED,
                reason=f"client id {client_id!r} is not the username",
            )
        try:
            credential = await asyncio.wait_for(self.credentials.lookup(username), self.lookup_timeout)
        except TimeoutError:
            logger.warning("credential lookup for %s timed out", username)
            return Admission(refusal=ConnectRefusal.SERVER_UNAVAILABLE, reason="credential lookup timed out")
        if credential is None or credential.username != username:
            # Still spend the hashing time, so an unknown user is not told apart by timing.
            await asyncio.to_thread(verify_password, password, _DUMMY_HASH)
            return Admission(refusal=ConnectRefusal.BAD_USERNAME_PASSWORD, reason="unknown user")
        if not await asyncio.to_thread(verify_password, password, credential.password_hash):
            return Admission(refusal=ConnectRefusal.BAD_USERNAME_PASSWORD, reason="wrong password")
        if not credential.enabled:
            return Admission(refusal=ConnectRefusal.NOT_AUTHORIZED, reason="credential disabled")
        if will_topic is not None and not self.may(credential.peer, will_topic, TopicAction.PUBLISH):
            return Admission(
                refusal=ConnectRefusal.NOT_AUTHORIZED, reason=f"will topic {will_topic!r} not allowed"
            )
        return Admission(peer=credential.peer)

    # -- the handshake between the CONNECT gate and amqtt's auth plugin --------------------------
    # The gate admits one connection per client id at a time (a newer one takes over first); amqtt
    # then authenticates the session built from that same CONNECT. Keyed by client id because amqtt
    # reuses a persistent session object, which still carries the previous connection's address.

    def mark_admitted(self, client_id: str, address: tuple[str, int]) -> None:
        self._admitted[client_id] = address

    def refused(self, refusal: Refusal) -> None:
        if self.on_refusal is not None:
            try:
                self.on_refusal(refusal)
            except Exception:  # an audit hook must never break the broker
                logger.exception("refusal hook failed")

    def forget(self, client_id: str, address: tuple[str, int]) -> None:
        if self._admitted.get(client_id) == address:
            del self._admitted[client_id]

    def confirm(self, session: SessionLike) -> bool:
        """True once for a session whose CONNECT the gate admitted."""
        if session.client_id is None:
            return False
        admitted = self._admitted.pop(session.client_id, None)
        return admitted is not None and session.client_id == session.username

    # -- topics ---------------------------------------------------------------------------------

    @staticmethod
    def may(peer: wire.Peer, topic: str, action: TopicAction) -> bool:
        """Whether ``peer`` may subscribe to the filter / publish to / receive from the topic ``topic``."""
        rules = wire.access_rules(peer)
        match action:
            case TopicAction.SUBSCRIBE:
                return any(r.read and wire.filter_within(topic, r.filter) for r in rules)
            case TopicAction.PUBLISH:
                return any(r.write and wire.topic_matches(r.filter, topic) for r in rules)
            case TopicAction.RECEIVE:
                return any(r.read and wire.topic_matches(r.filter, topic) for r in rules)

    @staticmethod
    def may_retain(peer: wire.Peer) -> bool:
        """Only the controller stores retained messages (the wire contract retains ctl/presence only)."""
        return peer.role is wire.Role.CONTROLLER

    @staticmethod
    def session_peer(session: SessionLike | None) -> wire.Peer | None:
        """The peer of an authenticated session (its username), or None."""
        if session is None or session.username is None or session.username != session.client_id:
            return None
        try:
            return wire.Peer.from_client_id(session.username)
        except wire.WireError:
            return None


# A valid hash of a random secret, used to equalise timing for unknown usernames.
_DUMMY_HASH = "$7$1000$c2FsdHNhbHRzYWx0$" + "A" * 86 + "=="
