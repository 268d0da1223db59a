"""Topics, names and ACL rules: where each party may publish and subscribe on the broker.

Topic layout (``{role}`` is ``dev`` for a device agent, ``brg`` for a phone bridge)::

    pf/v1/{role}/{name}/down       controller -> peer     instructions (QoS 1)
    pf/v1/{role}/{name}/up         peer -> controller     reports, heartbeats (QoS 1)
    pf/v1/{role}/{name}/presence   peer -> controller     birth and last will (QoS 1)
    pf/v1/ctl/presence             controller -> all      retained "controller online" (no secrets)

An MQTT client id is ``{role}-{name}`` and equals the MQTT username: a credential can only be used
with its own client id.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from enum import StrEnum

from kernel.wire.model import WireError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "pf/v1"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: Message, job, command and report ids.
ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"

#: Every MQTT client of the project disables Nagle's algorithm: small QoS 1 messages otherwise wait
#: for delayed ACKs (measured here: 78 ms heartbeat round trips on loopback instead of a few ms).
TCP_NODELAY_OPTION = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def check_name(name: str, what: str = "name") -> str:
    """Validate a device, printer or bridge name; return it unchanged."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise WireError(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    return name


class Role(StrEnum):
    CONTROLLER = "ctl"
    DEVICE = "dev"
    BRIDGE = "brg"


class Channel(StrEnum):
    DOWN = "down"
    UP = "up"
    PRESENCE = "presence"


@dataclass(frozen=True, kw_only=True)
class Peer:
    """One MQTT party: its role and name. ``client_id`` is also its MQTT username."""

    role: Role
    name: str

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def client_id(self) -> str:
        return f"{self.role.value}-{self.name}"

    @classmethod
    def from_client_id(cls, client_id: str) -> Peer:
        role_s, sep, name = client_id.partition("-")
        try:
            role = Role(role_s)
        except ValueError as exc:
            raise WireError(f"invalid client id {client_id!r}") from exc
        if not sep:
            raise WireError(f"invalid client id {client_id!r}")
        return cls(role=role, name=name)

    def topic(self, channel: Channel) -> str:
        return f"{TOPIC_ROOT}/{self.role.value}/{self.name}/{channel.value}"

    def __str__(self) -> str:
        return self.client_id


CONTROLLER_PRESENCE_TOPIC = f"{TOPIC_ROOT}/ctl/presence"
#: What the controller subscribes to.
CONTROLLER_SUBSCRIPTIONS = (
    f"{TOPIC_ROOT}/dev/+/up",
    f"{TOPIC_ROOT}/dev/+/presence",
    f"{TOPIC_ROOT}/brg/+/up",
    f"{TOPIC_ROOT}/brg/+/presence",
)


def parse_topic(topic: str) -> tuple[Peer, Channel]:
    """Split a peer topic into its peer and channel; :class:`WireError` if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise WireError(f"not a printfleet peer topic: {topic!r}")
    try:
        role = Role(parts[2])
        channel = Channel(parts[4])
    except ValueError as exc:
        raise WireError(f"not a printfleet peer topic: {topic!r}") from exc
    if role is Role.CONTROLLER:
        raise WireError(f"not a printfleet peer topic: {topic!r}")
    return Peer(role=role, name=check_name(parts[3])), channel


@dataclass(frozen=True, kw_only=True)
class TopicRule:
    """One ACL entry: a topic filter and what the holder may do with it."""

    filter: str
    read: bool
    write: bool


def access_rules(peer: Peer) -> tuple[TopicRule, ...]:
    """The topics a peer may use. The single source for both brokers' ACLs."""
    if peer.role is Role.CONTROLLER:
        return (
            TopicRule(filter=f"{TOPIC_ROOT}/+/+/up", read=True, write=False),
            TopicRule(filter=f"{TOPIC_ROOT}/+/+/presence", read=True, write=False),
            TopicRule(filter=f"{TOPIC_ROOT}/dev/+/down", read=False, write=True),
            TopicRule(filter=f"{TOPIC_ROOT}/brg/+/down", read=False, write=True),
            TopicRule(filter=CONTROLLER_PRESENCE_TOPIC, read=True, write=True),
        )
    return (
        TopicRule(filter=peer.topic(Channel.DOWN), read=True, write=False),
        TopicRule(filter=peer.topic(Channel.UP), read=False, write=True),
        TopicRule(filter=peer.topic(Channel.PRESENCE), read=False, write=True),
        TopicRule(filter=CONTROLLER_PRESENCE_TOPIC, read=True, write=False),
    )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic-filter matching (``+`` one level, ``#`` the rest), ``$`` topics excluded."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return i == len(f_parts) - 1
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def filter_within(requested: str, allowed: str) -> bool:
    """True when every topic the filter ``requested`` can match is matched by ``allowed``.

    Used for SUBSCRIBE: a subscription to ``#`` is not within ``pf/v1/dev/a/down``.
    """
    r_parts = requested.split("/")
    a_parts = allowed.split("/")
    for i, a in enumerate(a_parts):
        if a == "#":
            return True
        if i >= len(r_parts):
            return False
        r = r_parts[i]
        if r == "#":
            return False
        if a == "+":
            continue
        if r == "+" or r != a:
            return False
    return len(r_parts) == len(a_parts)
