"""Sequence numbers: a sender's that stay monotonic across restarts, and a receiver's guard
that refuses a number seen before (a replay)."""

from __future__ import annotations

import time


class ReplayGuard:
    """Refuses an envelope sequence number seen before (a replay), allowing for reordering.

    Numbers above ``floor`` are accepted once each. A number more than ``window`` below the highest
    one seen is refused as too old to tell apart from a replay; the default window (15 minutes of
    the controller's microsecond sequence) is longer than an instruction may live (``exp``), so an
    instruction overtaken in transit by later ones is still accepted. ``floor`` is the highest
    number accepted before a restart.
    """

    def __init__(self, floor: int = 0, *, window: int = 900_000_000) -> None:
        self.max_seq = floor
        self._floor = floor
        self._window = window
        self._recent: set[int] = set()

    def accept(self, seq: int) -> bool:
        if seq <= self._floor or seq <= self.max_seq - self._window or seq in self._recent:
            return False
        self._recent.add(seq)
        if seq > self.max_seq:
            self.max_seq = seq
        if len(self._recent) > 4096:
            low = self.max_seq - self._window
            self._recent = {s for s in self._recent if s > low}
        return True


class Sequencer:
    """Monotonic per-sender sequence numbers that stay monotonic across restarts.

    Each number is at least the wall clock in microseconds, so a restarted sender (even one whose
    database was restored from a backup) continues above every number it used before, and the
    numbers stay below 2**53 (exact in JSON everywhere).
    """

    def __init__(self, start: int = 0) -> None:
        self._n = start

    def next(self) -> int:
        self._n = max(self._n + 1, time.time_ns() // 1000)
        return self._n

    @property
    def current(self) -> int:
        return self._n
