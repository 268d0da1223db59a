"""SQLAlchemy 2 models of the controller's registry and job store.

Times are integer milliseconds of the controller's clock (``kernel.wire.now_ms``): they sort,
they compare with the expiry and lease fields that travel on the wire, and they need no timezone.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Device(Base):
    """A printer host running the device agent."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # presence
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    session: Mapped[int] = mapped_column(BigInteger, default=0)
    boot_id: Mapped[str | None] = mapped_column(String(64), default=None)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    online_since: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_seen_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_heartbeat_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    latency_ms: Mapped[float | None] = mapped_column(default=None)
    offline_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    config_version: Mapped[int] = mapped_column(Integer, default=0)
    keepalive: Mapped[int] = mapped_column(Integer, default=10)
    trusted_kids: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: ``device`` (a printer host running the agent) or ``bridge`` (a phone bridge).
    kind: Mapped[str] = mapped_column(String(8), default="device", server_default="device")
    #: For a bridge: the printers it can reach over BLE (``bridge register --near``).
    near: Mapped[list[str] | None] = mapped_column(JSON, default=None)

    printers: Mapped[list[Printer]] = relationship(back_populates="device", cascade="all, delete-orphan")


class Printer(Base):
    """One printer attached to a device; addressed fleet-wide by its unique name."""

    __tablename__ = "printers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    serial_url: Mapped[str] = mapped_column(String(512))
    baud: Mapped[int] = mapped_column(Integer, default=19200)
    profile: Mapped[str] = mapped_column(String(64), default="generic-80")
    flow_control: Mapped[str] = mapped_column(String(16), default="none")
    created_at: Mapped[int] = mapped_column(BigInteger)
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    health_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # the BLE side, for the degraded path through a phone bridge
    unique_id: Mapped[str | None] = mapped_column(String(64), default=None)
    ble_address: Mapped[str | None] = mapped_column(String(64), default=None)
    ble_name: Mapped[str | None] = mapped_column(String(64), default=None)
    ble_profile: Mapped[str | None] = mapped_column(String(64), default=None)
    public_key: Mapped[str | None] = mapped_column(String(128), default=None)
    identity: Mapped[str] = mapped_column(String(16), default="preferred", server_default="preferred")
    latency_threshold_ms: Mapped[int | None] = mapped_column(Integer, default=None)

    device: Mapped[Device] = relationship(back_populates="printers")


class Job(Base):
    """A print job. Stored before anything is sent; its payload is purged after retention."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    printer_id: Mapped[int | None] = mapped_column(ForeignKey("printers.id", ondelete="SET NULL"))
    printer_name: Mapped[str] = mapped_column(String(63))
    device_name: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload_size: Mapped[int] = mapped_column(Integer)
    copies: Mapped[int] = mapped_column(Integer, default=1)
    copies_done: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    purged_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    client: Mapped[str] = mapped_column(String(64), default="admin")
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # outbox
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    acked: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_until: Mapped[int | None] = mapped_column(BigInteger, default=None)
    executor: Mapped[str | None] = mapped_column(String(80), default=None)
    reprint_of: Mapped[str | None] = mapped_column(String(32), default=None)
    cancel_requested_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # routing: the bridge a job came from, the path it takes, and the right to print
    origin: Mapped[str | None] = mapped_column(String(63), default=None)
    route: Mapped[str] = mapped_column(String(8), default="agent", server_default="agent")
    #: When the executor was given the right to start writing (``job.grant``): never rerouted after.
    claimed_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    offer_id: Mapped[str | None] = mapped_column(String(32), default=None)
    offer_until: Mapped[int | None] = mapped_column(BigInteger, default=None)
    tried_bridges: Mapped[list[str] | None] = mapped_column(JSON, default=None)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobEvent.id"
    )

    __table_args__ = (
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_printer_state", "printer_name", "state"),
        Index("ix_jobs_idem", "client", "idempotency_key", unique=True),
    )


class JobEvent(Base):
    """One transition (or notable fact) in a job's history."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    source: Mapped[str] = mapped_column(String(80))

    job: Mapped[Job] = relationship(back_populates="events")


class ApiToken(Base):
    """An operator credential for the HTTP API (stored hashed)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, default=None)


class Setting(Base):
    """Small controller facts that survive restarts (controller session number, counters)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AuditEvent(Base):
    """Who asked for what, and every security-relevant refusal (`printfleet audit`)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(120), default=None)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, default=None)


class EnrollmentToken(Base):
    """A one-time token a host exchanges for its own credentials (`printfleet agent enroll`)."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    device_name: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger, default=None)


class Command(Base):
    """A maintenance command for one device, stored before anything is sent."""

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_name: Mapped[str] = mapped_column(String(63), index=True)
    action: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    timeout_s: Mapped[float] = mapped_column(default=60.0)
    started_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    acked: Mapped[bool] = mapped_column(Boolean, default=False)
    rollout_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)

    events: Mapped[list[CommandEvent]] = relationship(
        back_populates="command", cascade="all, delete-orphan", order_by="CommandEvent.id"
    )


class CommandEvent(Base):
    __tablename__ = "command_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    command_id: Mapped[str] = mapped_column(ForeignKey("commands.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    source: Mapped[str] = mapped_column(String(80))

    command: Mapped[Command] = relationship(back_populates="events")


class Rollout(Base):
    """A phased fleet-wide command (an update): devices are started at a rate, and the rollout stops
    by itself once failures pass a threshold. Its commands carry its id (``Command.rollout_id``)."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target: Mapped[str] = mapped_column(String(80))
    #: The devices in the order they are started.
    devices: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), index=True)
    rate_per_min: Mapped[float] = mapped_column()
    abort_above_pct: Mapped[float] = mapped_column()
    #: Failures that happened before the last resume (they do not count against the threshold again).
    failure_base: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(80))
    expires_s: Mapped[float] = mapped_column()
    timeout_s: Mapped[float] = mapped_column()
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    next_start_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
