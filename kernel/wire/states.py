"""The lifecycle states and message types, spelled the same everywhere (CLI, API, docs, the wire)."""

from __future__ import annotations

from enum import StrEnum


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
