"""The degraded path through a phone bridge: the printer's BLE record, the offer, the bridge's
answer, and jobs a bridge submits over its own session."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from kernel.wire.bodies import ID_FIELD, MAX_JOB_BYTES, NAME_FIELD, Body
from kernel.wire.model import Field, Model
from kernel.wire.states import MsgType

IdentityPolicy = Literal["required", "preferred", "off"]
IdentityOutcome = Literal["verified", "unverified", "skipped"]


class BlePrinter(Model):
    """A printer's BLE side as the controller sends it to a bridge (from the printer's record)."""

    name: str = NAME_FIELD
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
    offer_id: str = ID_FIELD
    job_id: str = ID_FIELD
    printer: BlePrinter
    bridge: str = NAME_FIELD
    grant_until: int
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reason: str = Field(default="", max_length=200)


class BridgeReady(Body):
    """The bridge is connected to the right printer (as far as ``identity`` says) and waits for the job."""

    TYPE: ClassVar[MsgType] = MsgType.BRIDGE_READY
    offer_id: str = ID_FIELD
    job_id: str = ID_FIELD
    identity: IdentityOutcome
    address: str = Field(default="", max_length=64)
    profile: str = Field(default="", max_length=64)


class BridgeFailed(Body):
    """The bridge could not take the job; no byte of it was written."""

    TYPE: ClassVar[MsgType] = MsgType.BRIDGE_FAILED
    offer_id: str = ID_FIELD
    job_id: str = ID_FIELD
    reason: str = Field(max_length=500)


class JobSubmit(Body):
    """A job a bridge (a user's phone) submits over its own session; its origin is that bridge."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_SUBMIT
    request_id: str = ID_FIELD
    printer: str = NAME_FIELD
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
    request_id: str = ID_FIELD
    job_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=500)
