"""Message bodies of the peer session and of print jobs: presence, heartbeats, jobs, claims, and
the printer records they carry. :class:`Body` is the base of every message body.

Strict models (:mod:`kernel.wire.model`): no silent coercion; unknown fields are ignored so that a
newer controller can add optional fields without breaking older agents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import ClassVar, Literal

from kernel.wire.model import Field, Model, WireError
from kernel.wire.states import JobState, MsgType
from kernel.wire.topics import ID_PATTERN, NAME_RE

#: Largest print payload (rendered ESC/POS) carried inline in a job message.
MAX_JOB_BYTES = 256 * 1024
#: How long an agent holds a job whose predecessor (``JobPrint.after``) never arrived.
AFTER_GATE_MS = 30_000


class Body(Model):
    """A message body; ``TYPE`` is the message type it travels as."""

    TYPE: ClassVar[MsgType]


#: A device, printer or bridge name field.
NAME_FIELD = Field(pattern=NAME_RE.pattern)
#: A message, job, command or report id field.
ID_FIELD = Field(min_length=1, max_length=64, pattern=ID_PATTERN)


class PrinterHealth(Model):
    """A printer's status as read from the printer itself (DLE EOT), in wire form."""

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


class PrinterSpec(Model):
    """One printer as the agent must drive it; pushed by the controller."""

    name: str = NAME_FIELD
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
    boot_id: str = ID_FIELD
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
    job_id: str = ID_FIELD
    printer: str = NAME_FIELD
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
    job_id: str = ID_FIELD
    printer: str = NAME_FIELD


class JobReport(Body):
    TYPE: ClassVar[MsgType] = MsgType.JOB_REPORT
    report_id: str = ID_FIELD
    job_id: str = ID_FIELD
    printer: str = NAME_FIELD
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
    job_id: str = ID_FIELD
    printer: str = NAME_FIELD
    attempt: int = Field(default=1, ge=1)


class JobGrant(Body):
    """The controller's answer to a claim: start now (until ``lease_until``), or let the job go."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_GRANT
    job_id: str = ID_FIELD
    granted: bool
    lease_until: int | None = None
    reason: str | None = Field(default=None, max_length=200)
