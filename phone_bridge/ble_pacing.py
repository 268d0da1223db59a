"""How the BLE printer side paces a job (pure: no I/O, no clock of its own).

:class:`Pacing` is the policy, :func:`plan_chunks` splits a job into chunks and barriers,
:class:`Pacer` says how long to wait before the next chunk, :class:`Backoff` spaces connect
retries, :class:`WriteResult` reports a completed write. :mod:`phone_bridge.ble` does the I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

#: GATT values are at most 512 bytes, whatever ``max_write_without_response_size`` says (BlueZ says 514).
MAX_CHUNK: Final = 512
#: The default pacing ceiling, bytes/s: what BLE printing apps achieve on BlueZ (about 4 kB/s), well
#: below the 115 200-baud UART (11.5 kB/s) behind a typical printer's BLE module.
DEFAULT_BYTES_PER_S: Final = 4000.0


@dataclass(frozen=True, kw_only=True)
class Pacing:
    """How fast :meth:`~phone_bridge.ble.PrinterConnection.write` sends.

    ``bytes_per_s``: the sustained ceiling (chunk *k* starts no earlier than the bytes before it
    divided by this rate after the first; a late chunk earns no credit); ``None``: no ceiling.
    ``barrier_every``: a write with response every this many chunks (and always the last one);
    ``None``: only the last. ``gap_s``: at least this long between the end of one chunk and the next.
    """

    bytes_per_s: float | None = DEFAULT_BYTES_PER_S
    barrier_every: int | None = 4
    gap_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes_per_s is not None and not (self.bytes_per_s > 0 and math.isfinite(self.bytes_per_s)):
            raise ValueError("bytes_per_s must be a positive number (or None: no ceiling)")
        if self.barrier_every is not None and self.barrier_every < 1:
            raise ValueError("barrier_every must be at least 1 (or None: only the last chunk)")
        if not (self.gap_s >= 0 and math.isfinite(self.gap_s)):
            raise ValueError("gap_s must not be negative")


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delay before retry *n* (1-based): ``min(max_s, initial_s * factor**(n-1))``, of which the
    fraction ``jitter`` is drawn at random (so bridges retrying together spread out)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 8.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.initial_s <= self.max_s:
            raise ValueError("need 0 <= initial_s <= max_s")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, retry - 1))
        return base * (1 - self.jitter * (rng or random).random())


@dataclass(frozen=True, kw_only=True)
class WriteResult:
    """A completed :meth:`~phone_bridge.ble.PrinterConnection.write`: every byte acknowledged."""

    bytes_written: int
    chunks: int
    barriers: int
    elapsed_s: float

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_written / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class Chunk:
    """One write of a job: ``data[start:end]``; ``barrier``: confirmed before the next one goes."""

    start: int
    end: int
    barrier: bool


def plan_chunks(size: int, chunk_size: int, barrier_every: int | None) -> list[Chunk]:
    """Split a job of ``size`` bytes: a barrier every ``barrier_every`` chunks and on the last."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    starts = range(0, size, chunk_size)
    last = len(starts)
    return [
        Chunk(
            start,
            min(start + chunk_size, size),
            n == last or (barrier_every is not None and n % barrier_every == 0),
        )
        for n, start in enumerate(starts, 1)
    ]


class Pacer:
    """The pacing schedule as a pure state machine (times in seconds of any monotonic clock)."""

    def __init__(self, pacing: Pacing) -> None:
        self._pacing = pacing
        self._ready_at: float | None = None
        self._last_end: float | None = None

    def delay(self, now: float) -> float:
        """How long to wait before the next chunk may start."""
        waits = [0.0]
        if self._ready_at is not None:
            waits.append(self._ready_at - now)
        if self._last_end is not None and self._pacing.gap_s:
            waits.append(self._last_end + self._pacing.gap_s - now)
        return max(waits)

    def sent(self, nbytes: int, *, started: float, ended: float) -> None:
        rate = self._pacing.bytes_per_s
        if rate is not None:
            base = started if self._ready_at is None else max(self._ready_at, started)
            self._ready_at = base + nbytes / rate
        self._last_end = ended


__all__ = [
    "DEFAULT_BYTES_PER_S",
    "MAX_CHUNK",
    "Backoff",
    "Chunk",
    "Pacer",
    "Pacing",
    "WriteResult",
    "plan_chunks",
]
