"""The values of a printer link: its lifecycle states, a job's outcome and progress, and its error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from device_agent.errors import PrinterLinkError
from kernel.escpos.status import PrinterStatus


class LinkState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    FAILED = "failed"


#: The allowed lifecycle transitions.
TRANSITIONS: Final[dict[LinkState, frozenset[LinkState]]] = {
    LinkState.CLOSED: frozenset({LinkState.OPEN, LinkState.FAILED}),
    LinkState.OPEN: frozenset({LinkState.CLOSED, LinkState.FAILED}),
    LinkState.FAILED: frozenset({LinkState.CLOSED}),
}


class PrintResult(StrEnum):
    PRINTED = "printed"  # every barrier answered and the status read after it
    PRINTED_UNCONFIRMED = "printed_unconfirmed"  # all bytes written; the printer could not confirm
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class PrintOutcome:
    result: PrintResult
    #: Whether any byte of the job was written: after a failure with ``bytes_started`` the job may
    #: be partly on paper, so the agent reports ``unknown`` rather than retrying.
    bytes_started: bool
    bytes_written: int
    reason: str | None = None
    #: Every distinct reason the job was held for, in order.
    held: tuple[str, ...] = ()
    status: PrinterStatus | None = None
    elapsed: float = 0.0

    @property
    def printed(self) -> bool:
        return self.result is not PrintResult.FAILED


class JobPhase(StrEnum):
    WRITING = "writing"
    HELD = "held"
    RESUMED = "resumed"
    CONFIRMING = "confirming"


@dataclass(frozen=True, kw_only=True)
class JobProgress:
    phase: JobPhase
    bytes_sent: int
    total: int
    reason: str | None = None


ProgressCallback = Callable[[JobProgress], Awaitable[None]]


__all__ = [
    "TRANSITIONS",
    "JobPhase",
    "JobProgress",
    "LinkState",
    "PrintOutcome",
    "PrintResult",
    "PrinterLinkError",
    "ProgressCallback",
]
