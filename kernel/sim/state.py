"""The values a simulated printer is configured with and reports: what it does when its buffer
overflows, the faults set on it, and the receipts it printed; the code pages and barcode names it
decodes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from kernel.escpos.status import ErrorKind

#: ESC t n -> Python codec, for the tables the simulator knows.
CODE_PAGES: Final = {
    0: "cp437",
    2: "cp850",
    3: "cp860",
    4: "cp863",
    5: "cp865",
    16: "cp1252",
    17: "cp866",
    18: "cp852",
    19: "cp858",
}

BARCODE_NAMES: Final = {
    0: "UPC-A", 1: "UPC-E", 2: "EAN13", 3: "EAN8", 4: "CODE39", 5: "ITF", 6: "CODABAR",
    65: "UPC-A", 66: "UPC-E", 67: "EAN13", 68: "EAN8", 69: "CODE39", 70: "ITF", 71: "CODABAR",
    72: "CODE93", 73: "CODE128", 74: "GS1-128", 75: "GS1-DATABAR-OMNI", 76: "GS1-DATABAR-TRUNCATED",
    77: "GS1-DATABAR-LIMITED", 78: "GS1-DATABAR-EXPANDED", 79: "CODE128-AUTO",
}  # fmt: skip

#: Commands a link adds to a job to learn its progress or status; left out of ``payload_printed``.


class Overflow(StrEnum):
    DROP = "drop"  # bytes beyond the buffer are lost and counted (real printers)
    BLOCK = "block"  # nothing is dropped; the transport stops reading while the buffer is full


class Keep(Enum):
    """A ``set_fault`` argument's default: leave that condition as it is."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True, kw_only=True)
class Faults:
    """The conditions set on a simulated printer."""

    paper_out: bool = False
    paper_near_end: bool = False
    cover_open: bool = False
    offline: bool = False
    error: ErrorKind | None = None

    @property
    def holding(self) -> bool:
        """True when the printer stops processing its buffer."""
        return self.paper_out or self.cover_open or self.offline or self.error is not None


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """What was printed up to a cut, decoded to text lines."""

    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
