"""Adapts :class:`device_agent.printer.PrinterLink` to what a printer worker needs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from device_agent.printer import JobPhase, JobProgress, PrinterLink, PrintOutcome
from kernel import wire
from kernel.escpos.profiles import PROFILE_NAMES, get_profile
from kernel.escpos.status import to_health


class LinkPort:
    """One open printer link, as a :class:`device_agent.worker.PrinterPort`."""

    def __init__(self, link: PrinterLink, *, gs_paren_h: bool) -> None:
        self._link = link
        self._gs_paren_h = gs_paren_h

    async def health(self) -> wire.PrinterHealth:
        return await self._link.health()

    async def status_changes(self) -> AsyncGenerator[wire.PrinterHealth, None]:
        """Status changes the printer reports by itself (ASB), as wire health."""
        async with contextlib.aclosing(self._link.status_changes()) as changes:
            async for status in changes:
                yield to_health(status, wire.now_ms())

    async def print_job(
        self,
        data: bytes,
        *,
        on_held: Callable[[str], Awaitable[None]],
        on_resumed: Callable[[], Awaitable[None]],
    ) -> PrintOutcome:
        async def progress(p: JobProgress) -> None:
            if p.phase is JobPhase.HELD:
                await on_held(p.reason or "printer not ready")
            elif p.phase is JobPhase.RESUMED:
                await on_resumed()

        return await self._link.print_job(data, on_progress=progress, gs_paren_h=self._gs_paren_h)


@asynccontextmanager
async def open_port(spec: wire.PrinterSpec) -> AsyncIterator[LinkPort]:
    gs_paren_h = spec.profile in PROFILE_NAMES and get_profile(spec.profile).gs_paren_h
    async with PrinterLink(spec, asb=spec.asb) as link:
        yield LinkPort(link, gs_paren_h=gs_paren_h)
