"""Every message type's body class, and which direction each type may travel."""

from __future__ import annotations

from kernel.wire.bodies import (
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
    PrintersConfig,
    ReportAck,
    SyncRequest,
    Will,
)
from kernel.wire.bridge import BridgeFailed, BridgeOffer, BridgeReady, JobAccepted, JobSubmit
from kernel.wire.commands import CommandReport, CommandRun, KeysUpdate, Refused
from kernel.wire.states import MsgType

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
