"""How a job looks in API answers."""

from __future__ import annotations

from typing import Any

from cloud.models import Job


def job_view(job: Job, *, events: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "printer": job.printer_name,
        "device": job.device_name,
        "state": job.state,
        "kind": job.kind,
        "copies": job.copies,
        "copies_done": job.copies_done,
        "priority": job.priority,
        "size": job.payload_size,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "expires_at": job.expires_at,
        "finished_at": job.finished_at,
        "detail": job.detail,
        "attempts": job.attempt,
        "executor": job.executor,
        "route": job.route,
        "origin": job.origin,
        "reprint_of": job.reprint_of,
        "payload_purged": job.purged_at is not None,
        "idempotency_key": job.idempotency_key,
    }
    if events:
        out["events"] = [
            {"at": e.at, "state": e.state, "detail": e.detail, "source": e.source} for e in job.events
        ]
    return out
