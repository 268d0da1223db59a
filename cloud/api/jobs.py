"""``/v1/jobs``: submit (through :class:`~cloud.jobs.intake.Intake`), list, wait, cancel, reprint;
``/v1/events``: job transitions as they happen."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.context import ApiContext
from cloud.api.deps import Ctx, PrintScope, Read
from cloud.errors import ControllerError
from cloud.jobs.intake import Intake, Kind, Submission, content_of
from cloud.jobs.views import job_view
from kernel import wire

router = APIRouter()


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    printer: str
    #: The bridge (a user's phone) the job comes from: tried first if the printer's path is degraded.
    origin: str | None = Field(default=None, alias="from", max_length=63)
    text: str | None = None
    document: dict[str, Any] | None = None
    raw_base64: str | None = None
    copies: int = Field(default=1, ge=1, le=100)
    priority: int = Field(default=0, ge=-100, le=100)
    ttl: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


_KINDS: dict[str, Kind] = {"text": "text", "document": "doc", "raw_base64": "raw"}


def intake(ctx: ApiContext) -> Intake:
    return ctx.intake or Intake(ctx.jobs)


@router.post("/v1/jobs", status_code=201)
async def submit_job(
    body: JobIn, tok: PrintScope, ctx: Ctx, idempotency_key: Annotated[str | None, Header()] = None
) -> JSONResponse:
    given = [k for k in _KINDS if getattr(body, k) is not None]
    if len(given) != 1:
        raise ControllerError("give exactly one of text, document, raw_base64", status=422)
    kind = _KINDS[given[0]]
    content = content_of(
        kind, text=body.text, document=body.document, raw_base64=body.raw_base64, field="raw_base64"
    )
    job, created = await intake(ctx).submit(
        Submission(
            printer=body.printer,
            kind=kind,
            content=content,
            copies=body.copies,
            priority=body.priority,
            ttl_s=body.ttl,
            idempotency_key=body.idempotency_key or idempotency_key,
            client=tok.name,
            origin=body.origin,
        )
    )
    if created:
        ctx.controller.wake_outbox()
    return JSONResponse(job_view(job, events=True), status_code=201 if created else 200)


@router.get("/v1/jobs")
async def list_jobs(
    _t: Read,
    ctx: Ctx,
    printer: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return [job_view(j) for j in await ctx.jobs.list(printer=printer, state=state, limit=limit)]


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    return job_view(await ctx.jobs.get(job_id), events=True)


@router.get("/v1/jobs/{job_id}/wait")
async def wait_job(
    job_id: str, _t: Read, ctx: Ctx, timeout: Annotated[float, Query(gt=0, le=300)] = 30.0
) -> dict[str, Any]:
    """Long-poll: answer when the job is terminal, or with its current state at the timeout."""
    job = await ctx.jobs.feed.wait_until(
        lambda: ctx.jobs.get(job_id),
        lambda j: wire.JobState(j.state).terminal,
        key="job",
        record_id=job_id,
        timeout=timeout,
    )
    return job_view(job, events=True)


@router.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, tok: PrintScope, ctx: Ctx) -> dict[str, Any]:
    return await ctx.controller.cancel_job(job_id, f"api:{tok.name}")


@router.post("/v1/jobs/{job_id}/reprint", status_code=201)
async def reprint_job(job_id: str, tok: PrintScope, ctx: Ctx) -> dict[str, Any]:
    job = await intake(ctx).reprint(job_id, tok.name)
    ctx.controller.wake_outbox()
    return job_view(job, events=True)


@router.get("/v1/events")
async def events(_t: Read, ctx: Ctx, printer: str | None = None) -> StreamingResponse:
    """Job transitions as they happen, one JSON object per line."""

    async def stream() -> AsyncIterator[bytes]:
        async with ctx.jobs.feed.subscribe() as q:
            yield b'{"type":"hello"}\n'
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), timeout=15)
                except TimeoutError:
                    yield b'{"type":"keepalive"}\n'
                    continue
                if printer is None or event["printer"] == printer:
                    yield (json.dumps({"type": "job", **event}) + "\n").encode()

    return StreamingResponse(stream(), media_type="application/x-ndjson")
