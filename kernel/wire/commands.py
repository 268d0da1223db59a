"""Maintenance commands on the wire: running one, its report, the ``update`` action's arguments,
signing-key rotation, and a peer's refusal of an instruction."""

from __future__ import annotations

from typing import Any, ClassVar

from kernel.wire.bodies import ID_FIELD, Body
from kernel.wire.model import Field, Model
from kernel.wire.states import CommandState, MsgType


class CommandRun(Body):
    """Run a maintenance command once (the agent journals ``command_id``)."""

    TYPE: ClassVar[MsgType] = MsgType.CMD_RUN
    command_id: str = ID_FIELD
    action: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict)
    requested_by: str = Field(default="", max_length=80)
    expires_at: int | None = None  # delivery expiry: not started after this (controller clock)
    timeout_s: float = Field(default=60.0, gt=0, le=24 * 3600)  # how long it may run once started


class CommandReport(Body):
    TYPE: ClassVar[MsgType] = MsgType.CMD_REPORT
    report_id: str = ID_FIELD
    command_id: str = ID_FIELD
    state: CommandState
    detail: str | None = Field(default=None, max_length=500)
    result: dict[str, Any] = Field(default_factory=dict)
    at: int


#: Largest agent package (a printfleet wheel) an agent downloads for the ``update`` command.
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
SHA256_RE = r"^[0-9a-f]{64}$"


class UpdateArgs(Model, extra="forbid"):
    """The ``args`` of an ``update`` command: where the package is and what it must hash to.

    ``url`` is relative (resolved against the controller the agent is configured with) or an
    absolute URL on that controller or over https; ``sha256`` is the authority on the bytes.
    """

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
