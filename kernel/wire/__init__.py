"""The wire contract between controller, device agents and phone bridges.

Everything that crosses MQTT is defined here and nowhere else (docs/protocol.md is the prose
version), one concept per module:

* :mod:`.topics`: names, peers, the topic layout and the ACL rules both brokers are given;
* :mod:`.states`: job and command states, message types;
* :mod:`.model`: the strict value classes bodies are made of, and :class:`WireError`;
* :mod:`.bodies`, :mod:`.commands`, :mod:`.bridge`: the message bodies (peer session and jobs,
  maintenance commands, the degraded path through a bridge); :mod:`.catalog`: which body each
  message type has and which direction it may travel;
* :mod:`.envelope`: the versioned envelope, its codec and its Ed25519 signature; :mod:`.keys`:
  signing keys; :mod:`.replay`: sequence numbers and the replay guard.

Use it as ``from kernel import wire`` then ``wire.Envelope``, ``wire.JobPrint``...: every public
name is here.

May import: the standard library, cryptography and :mod:`kernel.errors` (no compiled dependency
besides cryptography: hosts and phones install it).
"""

from __future__ import annotations

from kernel.wire.bodies import (
    AFTER_GATE_MS,
    MAX_JOB_BYTES,
    Birth,
    Body,
    ControllerOffline,
    ControllerOnline,
    Heartbeat,
    HeartbeatAck,
    HeartbeatEcho,
    JobCancel,
    JobClaim,
    JobGrant,
    JobPrint,
    JobReport,
    PrinterHealth,
    PrintersConfig,
    PrinterSpec,
    ReportAck,
    SyncRequest,
    Will,
)
from kernel.wire.bridge import (
    BlePrinter,
    BridgeFailed,
    BridgeOffer,
    BridgeReady,
    IdentityOutcome,
    IdentityPolicy,
    JobAccepted,
    JobSubmit,
)
from kernel.wire.catalog import (
    BODY_TYPES,
    BRIDGE_UPSTREAM_TYPES,
    DOWNSTREAM_TYPES,
    PRESENCE_TYPES,
    UPSTREAM_TYPES,
)
from kernel.wire.commands import (
    MAX_PACKAGE_BYTES,
    SHA256_RE,
    CommandReport,
    CommandRun,
    KeysUpdate,
    Refused,
    UpdateArgs,
)
from kernel.wire.envelope import MAX_MESSAGE_BYTES, Envelope, decode, new_id, now_ms
from kernel.wire.keys import (
    SigningKey,
    key_id,
    parse_public_keys,
    public_key_b64,
    public_key_from_b64,
)
from kernel.wire.model import Field, Model, WireError, validate_model
from kernel.wire.replay import ReplayGuard, Sequencer
from kernel.wire.states import (
    COMMAND_ACTIONS,
    TERMINAL_COMMAND_STATES,
    TERMINAL_JOB_STATES,
    CommandState,
    JobState,
    MsgType,
)
from kernel.wire.topics import (
    CONTROLLER_PRESENCE_TOPIC,
    CONTROLLER_SUBSCRIPTIONS,
    ID_PATTERN,
    NAME_RE,
    PROTOCOL_VERSION,
    TCP_NODELAY_OPTION,
    TOPIC_ROOT,
    Channel,
    Peer,
    Role,
    TopicRule,
    access_rules,
    check_name,
    filter_within,
    parse_topic,
    topic_matches,
)

__all__ = [
    "AFTER_GATE_MS",
    "BODY_TYPES",
    "BRIDGE_UPSTREAM_TYPES",
    "COMMAND_ACTIONS",
    "CONTROLLER_PRESENCE_TOPIC",
    "CONTROLLER_SUBSCRIPTIONS",
    "DOWNSTREAM_TYPES",
    "ID_PATTERN",
    "MAX_JOB_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PACKAGE_BYTES",
    "NAME_RE",
    "PRESENCE_TYPES",
    "PROTOCOL_VERSION",
    "SHA256_RE",
    "TCP_NODELAY_OPTION",
    "TERMINAL_COMMAND_STATES",
    "TERMINAL_JOB_STATES",
    "TOPIC_ROOT",
    "UPSTREAM_TYPES",
    "Birth",
    "BlePrinter",
    "Body",
    "BridgeFailed",
    "BridgeOffer",
    "BridgeReady",
    "Channel",
    "CommandReport",
    "CommandRun",
    "CommandState",
    "ControllerOffline",
    "ControllerOnline",
    "Envelope",
    "Field",
    "Heartbeat",
    "HeartbeatAck",
    "HeartbeatEcho",
    "IdentityOutcome",
    "IdentityPolicy",
    "JobAccepted",
    "JobCancel",
    "JobClaim",
    "JobGrant",
    "JobPrint",
    "JobReport",
    "JobState",
    "JobSubmit",
    "KeysUpdate",
    "Model",
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
    "key_id",
    "new_id",
    "now_ms",
    "parse_public_keys",
    "parse_topic",
    "public_key_b64",
    "public_key_from_b64",
    "topic_matches",
    "validate_model",
]
