"""Job intake: what a client asks to print, checked, rendered for its printer and stored.

Written once for every way a job arrives: the HTTP API (``POST /v1/jobs``, reprints) and a phone
bridge's ``job.submit`` over MQTT. Bad input gets a :class:`~cloud.errors.ControllerError` and
changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cloud.errors import ControllerError, NotFound
from cloud.jobs.store import JobStore, NewJob, check_repeat
from cloud.models import Device, Job, Printer
from cloud.render.document import DocumentError, parse_document, text_document
from cloud.render.escpos import render, render_raw
from kernel import wire
from kernel.escpos.profiles import get_profile

S = wire.JobState
Kind = Literal["text", "doc", "raw"]


@dataclass(frozen=True, kw_only=True)
class Submission:
    printer: str
    kind: Kind
    content: Any  # str for text, a JSON object for doc, bytes for raw
    copies: int = 1
    priority: int = 0
    ttl_s: float | None = None
    idempotency_key: str | None = None
    client: str = "admin"
    #: The bridge (a user's device) the job came from: tried first when the path is degraded.
    origin: str | None = None

    def request_hash(self) -> str:
        content = self.content
        if isinstance(content, bytes):
            content = base64.b64encode(content).decode()
        blob = json.dumps(
            [self.printer, self.kind, content, self.copies, self.priority, self.ttl_s],
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def validated(self) -> Submission:
        if not 1 <= self.copies <= 100:
            raise ControllerError("copies must be between 1 and 100")
        if not -100 <= self.priority <= 100:
            raise ControllerError("priority must be between -100 and 100")
        if self.ttl_s is not None and not 0 < self.ttl_s <= 30 * 24 * 3600:
            raise ControllerError("ttl must be between 1 second and 30 days")
        if self.idempotency_key is not None and not 1 <= len(self.idempotency_key) <= 128:
            raise ControllerError("idempotency key must be 1 to 128 characters")
        return self


def decode_raw(data: str | None, field: str) -> bytes:
    """Raw job bytes from their base64 form (``field`` names it in the error)."""
    try:
        return base64.b64decode(data or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ControllerError(f"{field} is not valid base64", status=422) from exc


def content_of(kind: Kind, *, text: str | None, document: Any, raw_base64: str | None, field: str) -> Any:
    """The content of a job of ``kind`` from the fields a request carries."""
    match kind:
        case "text":
            return text
        case "doc":
            return document
        case "raw":
            return decode_raw(raw_base64, field)


def render_submission(sub: Submission, profile_name: str) -> bytes:
    try:
        profile = get_profile(profile_name)
        match sub.kind:
            case "text":
                if not isinstance(sub.content, str) or not sub.content:
                    raise ControllerError("text must be a non-empty string")
                return render(text_document(sub.content), profile)
            case "doc":
                return render(parse_document(sub.content), profile)
            case "raw":
                if not isinstance(sub.content, bytes):
                    raise ControllerError("raw content must be bytes")
                return render_raw(sub.content)
    except DocumentError as exc:
        raise ControllerError(str(exc)) from exc
    raise ControllerError(f"unknown job kind {sub.kind!r}")


class NotNear(ControllerError):
    """A bridge submitted to a printer it is not registered near."""

    def __init__(self, bridge: str, printer: str) -> None:
        super().__init__(f"bridge {bridge} is not registered near printer {printer!r}", status=403)
        self.bridge = bridge
        self.printer = printer


class Intake:
    """Checks and stores new jobs; the store writes them."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    async def submit(self, sub: Submission) -> tuple[Job, bool]:
        """Store a new job (state queued); returns (job, created). A repeated key returns the original."""
        sub = sub.validated()
        req_hash = sub.request_hash()
        if sub.idempotency_key is not None:
            existing = await self._store.by_idempotency(sub.client, sub.idempotency_key)
            if existing is not None:
                return check_repeat(existing, req_hash), False
        async with self._store.sessions() as s:
            printer = await s.scalar(
                select(Printer).where(Printer.name == sub.printer).options(selectinload(Printer.device))
            )
            if printer is None:
                raise NotFound(f"no printer named {sub.printer!r}")
            if sub.origin is not None:
                bridge = await s.scalar(
                    select(Device).where(Device.name == sub.origin, Device.kind == "bridge")
                )
                if bridge is None:
                    raise NotFound(f"no bridge named {sub.origin!r}")
            device_name = printer.device.name
        data = render_submission(sub, printer.profile)
        if len(data) > wire.MAX_JOB_BYTES:
            raise ControllerError(
                f"the job renders to {len(data)} bytes, over the {wire.MAX_JOB_BYTES}-byte limit"
            )
        now = wire.now_ms()
        return await self._store.create(
            NewJob(
                printer_id=printer.id,
                printer_name=printer.name,
                device_name=device_name,
                kind=sub.kind,
                payload=data,
                payload_sha256=hashlib.sha256(data).hexdigest(),
                copies=sub.copies,
                priority=sub.priority,
                client=sub.client,
                expires_at=None if sub.ttl_s is None else now + int(sub.ttl_s * 1000),
                idempotency_key=sub.idempotency_key,
                request_hash=req_hash,
                origin=sub.origin,
                detail=None if sub.origin is None else f"from bridge {sub.origin}",
            ),
            source=f"api:{sub.client}",
        )

    async def submit_from_bridge(self, bridge: Device, peer: wire.Peer, sub: wire.JobSubmit) -> Job:
        """A bridge's ``job.submit``: only to the printers it is registered near (a stolen bridge
        credential must not become a print token for the whole fleet)."""
        if sub.printer not in (bridge.near or ()):
            raise NotNear(bridge.name, sub.printer)
        job, _created = await self.submit(
            Submission(
                printer=sub.printer,
                kind=sub.kind,
                content=content_of(
                    sub.kind, text=sub.text, document=sub.document, raw_base64=sub.data, field="data"
                ),
                copies=sub.copies,
                priority=sub.priority,
                idempotency_key=sub.idempotency_key,
                client=peer.client_id,
                origin=peer.name,
            )
        )
        return job

    async def reprint(self, job_id: str, client: str) -> Job:
        """A new job with the same payload, linked to the original (for jobs ended unknown or failed)."""
        original = await self._store.get(job_id)
        if not S(original.state).terminal:
            raise ControllerError(
                f"job {job_id} is still {original.state}; only finished jobs can be reprinted"
            )
        if original.payload is None:
            raise ControllerError(f"job {job_id}'s payload was purged; submit it again")
        job, _ = await self._store.create(
            NewJob(
                printer_id=original.printer_id,
                printer_name=original.printer_name,
                device_name=original.device_name,
                kind=original.kind,
                payload=original.payload,
                payload_sha256=original.payload_sha256,
                copies=original.copies,
                priority=original.priority,
                client=client,
                reprint_of=original.id,
                detail=f"reprint of {original.id}",
            ),
            source=f"api:{client}",
        )
        return job
