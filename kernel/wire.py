"""The wire contract between controller, device agents and phone bridges.

Everything that crosses MQTT is defined here and nowhere else: the topic layout, the versioned
message envelope, the body of every message type, their validation, and the Ed25519 signature
over an envelope. See docs/protocol.md for the prose version.

Topic layout (``{role}`` is ``dev`` for a device agent, ``brg`` for a phone bridge)::

    pf/v1/{role}/{name}/down       controller -> peer     instructions (QoS 1)
    pf/v1/{role}/{name}/up         peer -> controller     reports, heartbeats (QoS 1)
    pf/v1/{role}/{name}/presence   peer -> controller     birth and last will (QoS 1)
    pf/v1/ctl/presence             controller -> all      retained "controller online" (no secrets)

An MQTT client id is ``{role}-{name}`` and equals the MQTT username: a credential can only be used
with its own client id.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import json
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernel.errors import PrintfleetError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "pf/v1"
#: Largest envelope either side accepts; the brokers are configured with the same packet limit.
MAX_MESSAGE_BYTES = 512 * 1024
#: Largest print payload (rendered ESC/POS) carried inline in a job message.
MAX_JOB_BYTES = 256 * 1024

#: How long an agent holds a job whose predecessor (``JobPrint.after``) never arrived.
AFTER_GATE_MS = 30_000

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class WireError(PrintfleetError):
    """A message or name that does not follow the wire contract."""


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


# ----------------------------------------------------------------------------------------------
# States, spelled the same everywhere (CLI, API, docs).


class JobState(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"
    PRINTING = "printing"
    HELD = "held"
    PRINTED = "printed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset(
    {JobState.PRINTED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED, JobState.UNKNOWN}
)


class MsgType(StrEnum):
    # peer -> controller
    BIRTH = "birth"
    WILL = "will"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_ECHO = "heartbeat.echo"
    JOB_REPORT = "job.report"
    SYNC_REQUEST = "sync.request"
    REFUSED = "refused"
    # controller -> peer
    HEARTBEAT_ACK = "heartbeat.ack"
    JOB_PRINT = "job.print"
    JOB_CANCEL = "job.cancel"
    REPORT_ACK = "report.ack"
    PRINTERS_CONFIG = "printers.config"
    KEYS_UPDATE = "keys.update"
    CMD_RUN = "cmd.run"
    CMD_REPORT = "cmd.report"
    CONTROLLER_ONLINE = "controller.online"
    CONTROLLER_OFFLINE = "controller.offline"
    # the right to print (agents and bridges)
    JOB_CLAIM = "job.claim"
    JOB_GRANT = "job.grant"
    # the degraded path through a phone bridge
    BRIDGE_OFFER = "bridge.offer"
    BRIDGE_READY = "bridge.ready"
    BRIDGE_FAILED = "bridge.failed"
    JOB_SUBMIT = "job.submit"
    JOB_ACCEPTED = "job.accepted"


# ----------------------------------------------------------------------------------------------
# Bodies. Strict pydantic models: no silent coercion; unknown fields are ignored so that a newer
# controller can add optional fields without breaking older agents.


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")
    TYPE: ClassVar[MsgType]


_Name = Field(pattern=NAME_RE.pattern)
_Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class PrinterHealth(BaseModel):
    """A printer's status as read from the printer itself (DLE EOT), in wire form."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    reachable: bool
    online: bool = False
    paper: Literal["ok", "near_end", "out", "unknown"] = "unknown"
    cover_open: bool = False
    errors: tuple[str, ...] = ()
    drawer_open: bool | None = None
    checked_at: int = 0

    @property
    def faults(self) -> tuple[str, ...]:
        """Human reasons why the printer cannot print now (empty when it can)."""
        out: list[str] = []
        if not self.reachable:
            out.append("not responding")
        if self.paper == "out":
            out.append("paper out")
        if self.cover_open:
            out.append("cover open")
        out.extend(self.errors)
        if self.reachable and not self.online and not out:
            out.append("offline")
        return tuple(out)


class PrinterSpec(BaseModel):
    """One printer as the agent must drive it; pushed by the controller."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    name: str = _Name
    serial_url: str = Field(min_length=1, max_length=512)
    baud: int = Field(default=19200, ge=300, le=4_000_000)
    profile: str = Field(default="generic-80", max_length=64)
    flow_control: Literal["none", "rtscts", "xonxoff"] = "none"
    status_queries: bool = True
    chunk_size: int = Field(default=1024, ge=16, le=65536)
    window: int = Field(default=3, ge=1, le=64)
    #: Enable Automatic Status Back (GS a): the printer reports status changes by itself.
    asb: bool = False


class Birth(Body):
    TYPE: ClassVar[MsgType] = MsgType.BIRTH
    session: int = Field(ge=1)
    boot_id: str = _Id
    version: str = Field(max_length=64)
    started_at: int
    printers: tuple[str, ...] = ()
    keepalive: int = Field(default=10, ge=1, le=3600)


class Will(Body):
    """The last will (the broker sends it when the connection dies) or a clean goodbye from the agent."""

    TYPE: ClassVar[MsgType] = MsgType.WILL
    session: int = Field(ge=1)
    reason: str = Field(default="connection lost", max_length=64)


class Heartbeat(Body):
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    session: int = Field(ge=1)
    hb_seq: int = Field(ge=0)
    printers: dict[str, PrinterHealth] = Field(default_factory=dict)
    config_version: int = 0
    pending_reports: int = 0
    keepalive: int = Field(default=10, ge=1, le=3600)
    #: Ids of the controller signing keys this peer trusts (the controller signs with one of them).
    kids: tuple[str, ...] = Field(default=(), max_length=8)


class HeartbeatAck(Body):
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT_ACK
    hb_seq: int = Field(ge=0)
    ctl_ts: int
    config_version: int = 0


class HeartbeatEcho(Body):
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT_ECHO
    hb_seq: int = Field(ge=0)
    ctl_ts: int


class SyncRequest(Body):
    TYPE: ClassVar[MsgType] = MsgType.SYNC_REQUEST
    session: int = Field(ge=1)
    reason: str = Field(default="boot", max_length=64)


class JobPrint(Body):
    TYPE: ClassVar[MsgType] = MsgType.JOB_PRINT
    job_id: str = _Id
    printer: str = _Name
    data: str = Field(max_length=(MAX_JOB_BYTES * 4) // 3 + 4)  # base64 of the rendered bytes
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    copies: int = Field(default=1, ge=1, le=100)
    priority: int = Field(default=0, ge=-100, le=100)
    order: int = Field(default=0, ge=0)  # the controller's submission sequence: print order within a priority
    #: The job just before this one on the same printer and priority that the agent may not have yet:
    #: the agent holds this job until that one is in its journal (or ``AFTER_GATE_MS`` has passed).
    after: str | None = Field(default=None, max_length=64)
    submitted_at: int
    expires_at: int | None = None
    lease_until: int
    attempt: int = Field(default=1, ge=1)

    def payload(self) -> bytes:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WireError("job payload is not valid base64") from exc
        if hashlib.sha256(raw).hexdigest() != self.sha256:
            raise WireError("job payload does not match its sha256")
        return raw


class JobCancel(Body):
    TYPE: ClassVar[MsgType] = MsgType.JOB_CANCEL
    job_id: str = _Id
    printer: str = _Name


class JobReport(Body):
    TYPE: ClassVar[MsgType] = MsgType.JOB_REPORT
    report_id: str = _Id
    job_id: str = _Id
    printer: str = _Name
    state: JobState
    detail: str | None = Field(default=None, max_length=500)
    copies_done: int = Field(default=0, ge=0)
    attempt: int = Field(default=1, ge=1)
    at: int  # agent's estimate of the controller's clock, ms


class ReportAck(Body):
    TYPE: ClassVar[MsgType] = MsgType.REPORT_ACK
    report_ids: tuple[str, ...] = Field(max_length=1000)


class PrintersConfig(Body):
    TYPE: ClassVar[MsgType] = MsgType.PRINTERS_CONFIG
    version: int = Field(ge=0)
    printers: tuple[PrinterSpec, ...] = Field(max_length=64)


class CommandState(StrEnum):
    """A maintenance command's lifecycle, spelled like the job states."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_COMMAND_STATES


TERMINAL_COMMAND_STATES = frozenset(
    {
        CommandState.SUCCEEDED,
        CommandState.FAILED,
        CommandState.REJECTED,
        CommandState.TIMED_OUT,
        CommandState.CANCELLED,
        CommandState.EXPIRED,
    }
)

#: The maintenance actions an agent runs (an allow-list: anything else is rejected).
COMMAND_ACTIONS = (
    "ping",
    "status",
    "logs",
    "config-get",
    "config-set",
    "restart-agent",
    "reboot",
    "shutdown",
    "printer-selftest",
    "printer-status",
    "open-drawer",
    "update",
)


class CommandRun(Body):
    """Run a maintenance command once (the agent journals ``command_id``)."""

    TYPE: ClassVar[MsgType] = MsgType.CMD_RUN
    command_id: str = _Id
    action: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict)
    requested_by: str = Field(default="", max_length=80)
    expires_at: int | None = None  # delivery expiry: not started after this (controller clock)
    timeout_s: float = Field(default=60.0, gt=0, le=24 * 3600)  # how long it may run once started


class CommandReport(Body):
    TYPE: ClassVar[MsgType] = MsgType.CMD_REPORT
    report_id: str = _Id
    command_id: str = _Id
    state: CommandState
    detail: str | None = Field(default=None, max_length=500)
    result: dict[str, Any] = Field(default_factory=dict)
    at: int


#: Largest agent package (a printfleet wheel) an agent downloads for the ``update`` command.
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
SHA256_RE = r"^[0-9a-f]{64}$"


class UpdateArgs(BaseModel):
    """The ``args`` of an ``update`` command: where the package is and what it must hash to.

    ``url`` is relative (resolved against the controller the agent is configured with) or an
    absolute URL on that controller or over https; ``sha256`` is the authority on the bytes.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    sha256: str = Field(pattern=SHA256_RE)
    #: The package's version as the controller read it (informational; the wheel's own is used).
    version: str | None = Field(default=None, max_length=64)
    #: How long the new version has, once started, to connect and announce itself.
    health_s: float = Field(default=120.0, ge=1, le=3600)


class KeysUpdate(Body):
    """The controller's signing keys a peer must trust from now on (key rotation).

    Signed by a key the peer already trusts; the list replaces the peer's trusted keys, so a key
    left out is retired.
    """

    TYPE: ClassVar[MsgType] = MsgType.KEYS_UPDATE
    public_keys: tuple[str, ...] = Field(min_length=1, max_length=8)


class Refused(Body):
    """A peer refused an instruction (bad signature, replay, expired, misaddressed...).

    Resent until the controller acknowledges ``report_id`` with a ``report.ack``, so the refusal
    reaches the audit log even when the controller was away at the time.
    """

    TYPE: ClassVar[MsgType] = MsgType.REFUSED
    message_id: str = Field(max_length=64)
    reason: str = Field(max_length=200)
    report_id: str | None = Field(default=None, max_length=64)


class ControllerOnline(Body):
    TYPE: ClassVar[MsgType] = MsgType.CONTROLLER_ONLINE
    session: int = Field(ge=1)
    started_at: int


class ControllerOffline(Body):
    TYPE: ClassVar[MsgType] = MsgType.CONTROLLER_OFFLINE
    session: int = Field(ge=1)


class JobClaim(Body):
    """An executor asks for the right to start writing a job's bytes (sent before the first byte).

    Nothing is printed without a granted claim: the controller grants it only while the job is
    still routed to this executor, and never reroutes a job after granting it. That closes the
    race a lease alone leaves open (an executor starts just before its lease lapses and its
    "printing" report is lost with its connection: the job would be printed twice).
    """

    TYPE: ClassVar[MsgType] = MsgType.JOB_CLAIM
    job_id: str = _Id
    printer: str = _Name
    attempt: int = Field(default=1, ge=1)


class JobGrant(Body):
    """The controller's answer to a claim: start now (until ``lease_until``), or let the job go."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_GRANT
    job_id: str = _Id
    granted: bool
    lease_until: int | None = None
    reason: str | None = Field(default=None, max_length=200)


IdentityPolicy = Literal["required", "preferred", "off"]
IdentityOutcome = Literal["verified", "unverified", "skipped"]


class BlePrinter(BaseModel):
    """A printer's BLE side as the controller sends it to a bridge (from the printer's record)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    name: str = _Name
    unique_id: str = Field(min_length=1, max_length=64)
    ble_address: str | None = Field(default=None, max_length=64)
    ble_name: str | None = Field(default=None, max_length=64)
    ble_profile: str | None = Field(default=None, max_length=64)
    public_key: str | None = Field(default=None, max_length=128)
    identity: IdentityPolicy = "preferred"


class BridgeOffer(Body):
    """Connection information and a short-lived grant: connect to this printer for this job.

    The bridge connects, proves the printer's identity per policy and answers ``bridge.ready``
    (or ``bridge.failed``); only then does the controller hand it the job (a ``job.print``).
    """

    TYPE: ClassVar[MsgType] = MsgType.BRIDGE_OFFER
    offer_id: str = _Id
    job_id: str = _Id
    printer: BlePrinter
    bridge: str = _Name
    grant_until: int
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reason: str = Field(default="", max_length=200)


class BridgeReady(Body):
    """The bridge is connected to the right printer (as far as ``identity`` says) and waits for the job."""

    TYPE: ClassVar[MsgType] = MsgType.BRIDGE_READY
    offer_id: str = _Id
    job_id: str = _Id
    identity: IdentityOutcome
    address: str = Field(default="", max_length=64)
    profile: str = Field(default="", max_length=64)


class BridgeFailed(Body):
    """The bridge could not take the job; no byte of it was written."""

    TYPE: ClassVar[MsgType] = MsgType.BRIDGE_FAILED
    offer_id: str = _Id
    job_id: str = _Id
    reason: str = Field(max_length=500)


class JobSubmit(Body):
    """A job a bridge (a user's phone) submits over its own session; its origin is that bridge."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_SUBMIT
    request_id: str = _Id
    printer: str = _Name
    kind: Literal["text", "doc", "raw"] = "text"
    text: str | None = Field(default=None, max_length=MAX_JOB_BYTES)
    document: dict[str, Any] | None = None
    data: str | None = Field(default=None, max_length=(MAX_JOB_BYTES * 4) // 3 + 4)
    copies: int = Field(default=1, ge=1, le=100)
    priority: int = Field(default=0, ge=-100, le=100)
    idempotency_key: str | None = Field(default=None, max_length=128)


class JobAccepted(Body):
    """The answer to a ``job.submit``: the job's id, or why it was refused (nothing was stored)."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_ACCEPTED
    request_id: str = _Id
    job_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=500)


BODY_TYPES: dict[MsgType, type[Body]] = {
    cls.TYPE: cls
    for cls in (
        Birth,
        Will,
        Heartbeat,
        HeartbeatAck,
        HeartbeatEcho,
        SyncRequest,
        JobPrint,
        JobCancel,
        JobReport,
        ReportAck,
        PrintersConfig,
        KeysUpdate,
        CommandRun,
        CommandReport,
        Refused,
        ControllerOnline,
        ControllerOffline,
        JobClaim,
        JobGrant,
        BridgeOffer,
        BridgeReady,
        BridgeFailed,
        JobSubmit,
        JobAccepted,
    )
}

#: Message types a peer may send on its ``up`` / ``presence`` channels; anything else is refused.
UPSTREAM_TYPES = frozenset(
    {
        MsgType.HEARTBEAT,
        MsgType.HEARTBEAT_ECHO,
        MsgType.JOB_REPORT,
        MsgType.SYNC_REQUEST,
        MsgType.REFUSED,
        MsgType.CMD_REPORT,
        MsgType.JOB_CLAIM,
    }
)
#: What a bridge may send besides the above (devices may not).
BRIDGE_UPSTREAM_TYPES = UPSTREAM_TYPES | frozenset(
    {MsgType.BRIDGE_READY, MsgType.BRIDGE_FAILED, MsgType.JOB_SUBMIT}
)
PRESENCE_TYPES = frozenset({MsgType.BIRTH, MsgType.WILL})
#: Message types only the controller sends; a peer verifies their signature before acting.
DOWNSTREAM_TYPES = frozenset(
    {
        MsgType.HEARTBEAT_ACK,
        MsgType.JOB_PRINT,
        MsgType.JOB_CANCEL,
        MsgType.REPORT_ACK,
        MsgType.PRINTERS_CONFIG,
        MsgType.KEYS_UPDATE,
        MsgType.CMD_RUN,
        MsgType.JOB_GRANT,
        MsgType.BRIDGE_OFFER,
        MsgType.JOB_ACCEPTED,
    }
)

B = TypeVar("B", bound=Body)
M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------------
# The envelope.


#: Every MQTT client of the project disables Nagle's algorithm: small QoS 1 messages otherwise wait
#: for delayed ACKs (measured here: 78 ms heartbeat round trips on loopback instead of a few ms).
TCP_NODELAY_OPTION = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    return uuid.uuid4().hex


class Envelope(BaseModel):
    """Every message: who sent it to whom, when, until when it is valid, its body, its signature."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    v: Literal[1] = 1
    type: MsgType
    id: str = _Id
    src: str = Field(max_length=80)
    dst: str = Field(max_length=80)
    seq: int = Field(ge=0)
    ts: int
    exp: int | None = None
    body: dict[str, Any]
    kid: str | None = Field(default=None, max_length=64)
    sig: str | None = Field(default=None, max_length=200)

    @classmethod
    def build(
        cls,
        body: Body,
        *,
        src: Peer | str,
        dst: Peer | str,
        seq: int,
        exp: int | None = None,
        ts: int | None = None,
        msg_id: str | None = None,
    ) -> Envelope:
        return cls(
            type=body.TYPE,
            id=msg_id or new_id(),
            src=str(src),
            dst=str(dst),
            seq=seq,
            ts=now_ms() if ts is None else ts,
            exp=exp,
            body=body.model_dump(mode="json"),
        )

    def parsed(self, body_type: builtins.type[B]) -> B:
        """The body as its model; :class:`WireError` when it does not fit."""
        if body_type.TYPE is not self.type:
            raise WireError(f"expected a {body_type.TYPE} message, got {self.type}")
        return _validate(body_type, self.body, f"{self.type} body")

    def body_model(self) -> Body:
        return _validate(BODY_TYPES[self.type], self.body, f"{self.type} body")

    def signing_bytes(self) -> bytes:
        return _canonical(self.model_dump(mode="json", exclude={"sig"}))

    def encode(self) -> bytes:
        data = _canonical(self.model_dump(mode="json", exclude_none=False))
        if len(data) > MAX_MESSAGE_BYTES:
            raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        return data

    def expired(self, now: int) -> bool:
        return self.exp is not None and now > self.exp

    # -- signatures -------------------------------------------------------------------------

    def signed(self, key: SigningKey) -> Envelope:
        with_kid = self.model_copy(update={"kid": key.kid, "sig": None})
        sig = key.private.sign(with_kid.signing_bytes())
        return with_kid.model_copy(update={"sig": base64.b64encode(sig).decode()})

    def verify(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        """Raise :class:`WireError` unless the envelope carries a valid signature by one of ``keys``."""
        if self.sig is None or self.kid is None:
            raise WireError("unsigned message")
        pub = keys.get(self.kid)
        if pub is None:
            raise WireError(f"message signed by unknown key {self.kid!r}")
        try:
            raw = base64.b64decode(self.sig, validate=True)
            pub.verify(raw, self.signing_bytes())
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise WireError("bad signature") from exc


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _validate(model: type[M], data: Any, what: str) -> M:
    """Validate in pydantic's strict JSON mode (enums from strings, no other coercion)."""
    raw = data if isinstance(data, bytes | bytearray) else _canonical(data)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        raise WireError(f"invalid {what}: {loc}: {first.get('msg', 'invalid')}") from exc


def validate_model(model: type[M], data: Any, what: str) -> M:
    """Validate stored or received data into a wire model; :class:`WireError` with a clear reason."""
    return _validate(model, data, what)


def decode(data: bytes | bytearray) -> Envelope:
    """Parse and validate one envelope; :class:`WireError` with a clear reason otherwise."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    env = _validate(Envelope, bytes(data), "envelope")
    env.body_model()  # the body must fit its type as well
    return env


# ----------------------------------------------------------------------------------------------
# Keys.


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """The controller's Ed25519 signing key with its id (for rotation)."""

    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        priv = Ed25519PrivateKey.generate()
        return cls(kid=key_id(priv.public_key()), private=priv)

    def public_b64(self) -> str:
        return public_key_b64(self.private.public_key())


def public_key_b64(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise WireError("invalid Ed25519 public key") from exc


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(base64.b64decode(public_key_b64(pub))).hexdigest()[:16]


def parse_public_keys(encoded: Mapping[str, str] | list[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id, from a list of base64 keys (the id is derived)."""
    values = list(encoded.values()) if isinstance(encoded, Mapping) else list(encoded)
    out: dict[str, Ed25519PublicKey] = {}
    for text in values:
        pub = public_key_from_b64(text)
        out[key_id(pub)] = pub
    return out


class ReplayGuard:
    """Refuses an envelope sequence number seen before (a replay), allowing for reordering.

    Numbers above ``floor`` are accepted once each. A number more than ``window`` below the highest
    one seen is refused as too old to tell apart from a replay; the default window (15 minutes of
    the controller's microsecond sequence) is longer than an instruction may live (``exp``), so an
    instruction overtaken in transit by later ones is still accepted. ``floor`` is the highest
    number accepted before a restart.
    """

    def __init__(self, floor: int = 0, *, window: int = 900_000_000) -> None:
        self.max_seq = floor
        self._floor = floor
        self._window = window
        self._recent: set[int] = set()

    def accept(self, seq: int) -> bool:
        if seq <= self._floor or seq <= self.max_seq - self._window or seq in self._recent:
            return False
        self._recent.add(seq)
        if seq > self.max_seq:
            self.max_seq = seq
        if len(self._recent) > 4096:
            low = self.max_seq - self._window
            self._recent = {s for s in self._recent if s > low}
        return True


class Sequencer:
    """Monotonic per-sender sequence numbers that stay monotonic across restarts.

    Each number is at least the wall clock in microseconds, so a restarted sender (even one whose
    database was restored from a backup) continues above every number it used before, and the
    numbers stay below 2**53 (exact in JSON everywhere).
    """

    def __init__(self, start: int = 0) -> None:
        self._n = start

    def next(self) -> int:
        self._n = max(self._n + 1, time.time_ns() // 1000)
        return self._n

    @property
    def current(self) -> int:
        return self._n


__all__ = [
    "BODY_TYPES",
    "CONTROLLER_PRESENCE_TOPIC",
    "CONTROLLER_SUBSCRIPTIONS",
    "DOWNSTREAM_TYPES",
    "MAX_JOB_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PACKAGE_BYTES",
    "PRESENCE_TYPES",
    "PROTOCOL_VERSION",
    "TERMINAL_JOB_STATES",
    "UPSTREAM_TYPES",
    "Birth",
    "Body",
    "Channel",
    "ControllerOffline",
    "ControllerOnline",
    "Envelope",
    "Heartbeat",
    "HeartbeatAck",
    "HeartbeatEcho",
    "JobCancel",
    "JobPrint",
    "JobReport",
    "JobState",
    "KeysUpdate",
    "MsgType",
    "Peer",
    "PrinterHealth",
    "PrinterSpec",
    "PrintersConfig",
    "Refused",
    "ReplayGuard",
    "ReportAck",
    "Role",
    "Sequencer",
    "SigningKey",
    "SyncRequest",
    "TopicRule",
    "UpdateArgs",
    "Will",
    "WireError",
    "access_rules",
    "check_name",
    "decode",
    "filter_within",
    "new_id",
    "now_ms",
    "parse_public_keys",
    "parse_topic",
    "public_key_b64",
    "public_key_from_b64",
    "topic_matches",
    "validate_model",
]
