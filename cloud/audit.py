"""The controller's audit log: who asked for what, and every refusal that matters for security."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.models import AuditEvent
from kernel import wire

log = logging.getLogger(__name__)


class Audit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        *,
        outcome: str = "ok",
        detail: str | None = None,
    ) -> None:
        if outcome != "ok":
            log.warning("audit: %s %s %s -> %s (%s)", actor, action, target or "-", outcome, detail or "")
        async with self._sessions.begin() as s:
            s.add(
                AuditEvent(
                    at=wire.now_ms(),
                    actor=actor[:80],
                    action=action[:64],
                    target=None if target is None else target[:120],
                    outcome=outcome[:16],
                    detail=None if detail is None else detail[:2000],
                )
            )

    async def list(
        self,
        *,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> Sequence[AuditEvent]:
        async with self._sessions() as s:
            q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 1000)))
            if actor:
                q = q.where(AuditEvent.actor == actor)
            if action:
                q = q.where(AuditEvent.action == action)
            if outcome:
                q = q.where(AuditEvent.outcome == outcome)
            return (await s.scalars(q)).all()


def audit_view(e: AuditEvent) -> dict[str, Any]:
    return {
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "detail": e.detail,
    }
