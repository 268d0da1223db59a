"""Graceful shutdown: one place that turns SIGINT/SIGTERM into an awaitable."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_signal() -> str:
    """Resolve on SIGINT or SIGTERM (graceful shutdown)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()

    def received(sig: signal.Signals) -> None:
        if not fut.done():
            fut.set_result(sig.name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, received, sig)
    try:
        return await fut
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
