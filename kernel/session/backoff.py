"""Reconnect delays: exponential, capped, with jitter (so a fleet does not reconnect in step)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """``delay(n)`` is ``initial * factor**n`` capped at ``maximum``, times a random factor in
    ``[1 - jitter, 1 + jitter]``. ``n`` counts the failed rounds since the last good connection."""

    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff: need 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff: factor must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff: jitter must be in [0, 1)")

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.initial * self.factor ** min(attempt, 64), self.maximum)
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)
