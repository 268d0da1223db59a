"""In-process fan-out of record changes (jobs, commands) to long-polls and watchers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

R = TypeVar("R")


class Feed:
    """Each subscriber gets every event published while it listens (bounded per subscriber)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, event: dict[str, Any]) -> None:
        for q in list(self._queues):
            if q.qsize() < 10_000:
                q.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.add(q)
        try:
            yield q
        finally:
            self._queues.discard(q)

    async def wait_until(
        self,
        load: Callable[[], Awaitable[R]],
        done: Callable[[R], bool],
        *,
        key: str,
        record_id: str,
        timeout: float,
    ) -> R:
        """Long-poll: the record once ``done`` holds, or as it is when ``timeout`` runs out.

        Subscribes before the first read, so a change between the read and the wait is not missed.
        """
        async with self.subscribe() as q:
            record = await load()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not done(record):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(q.get(), timeout=remaining)
                except TimeoutError:
                    break
                if event.get(key) == record_id:
                    record = await load()
            return record
