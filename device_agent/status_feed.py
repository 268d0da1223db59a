"""Automatic Status Back on a printer link: the latest status block the printer sent by itself,
subscribers that each get the latest change (changes in between are merged, never queued), and
waiters woken by any change (a held job resumes without polling)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from kernel.escpos.status import PrinterStatus

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _StatusSubscriber:
    """One :meth:`StatusFeed.changes` iterator: the latest change not yet taken (latest wins)."""

    event: asyncio.Event
    latest: PrinterStatus | None = None
    ended: bool = False


class StatusFeed:
    """The ASB side of one printer link (``name`` is the printer's, for the log)."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: The latest block, if the printer sends them.
        self.last: PrinterStatus | None = None
        #: How many blocks arrived (ASB is active once one did).
        self.blocks = 0
        self._subscribers: set[_StatusSubscriber] = set()
        self._waiters: list[asyncio.Future[None]] = []

    def on_block(self, status: PrinterStatus) -> None:
        previous, self.last = self.last, status
        self.blocks += 1
        if status == previous:
            return
        log.debug("printer %s: ASB %s", self.name, ", ".join(status.faults()) or "ready")
        for sub in self._subscribers:
            sub.latest = status
            sub.event.set()
        self._wake_waiters()

    def end(self) -> None:
        """The link closed or broke: every subscriber ends, every waiter wakes."""
        self._wake_waiters()
        for sub in self._subscribers:
            sub.ended = True
            sub.event.set()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_or(self, barrier: asyncio.Future[int] | None, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``barrier`` (if any) or an ASB status change; True if ASB woke us."""
        asb: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(asb)
        try:
            waitables: set[asyncio.Future[Any]] = {asb} if barrier is None else {asb, barrier}
            await asyncio.wait(waitables, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
            return asb.done()
        finally:
            if not asb.done():
                asb.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(asb)

    async def changes(self) -> AsyncGenerator[PrinterStatus, None]:
        """The status already reported, then each change, until :meth:`end`."""
        # a subscriber first learns the status already reported (it may have arrived before it
        # subscribed, e.g. the block the printer sends when ASB is enabled), then each change
        sub = _StatusSubscriber(event=asyncio.Event(), latest=self.last)
        self._subscribers.add(sub)
        try:
            while True:
                sub.event.clear()
                if sub.latest is not None:
                    status, sub.latest = sub.latest, None
                    yield status
                    continue
                if sub.ended:
                    break
                await sub.event.wait()
        finally:
            self._subscribers.discard(sub)
