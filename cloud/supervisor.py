"""The supervisor of a process's long-running tasks.

Each task has a name. None is expected to end while the process runs: the first that does (an
error, or a plain return) is logged with its traceback, the supervisor turns unhealthy at once
(``/healthz`` answers 503), and :meth:`Supervisor.wait` raises :class:`TaskDied`, which ends the
service's ``run()`` with an error: the process exits non-zero and systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from cloud.errors import ControllerError

log = logging.getLogger(__name__)


class TaskDied(ControllerError):
    """A supervised task ended while the service was running."""

    def __init__(self, task: str, reason: str) -> None:
        super().__init__(f"the {task} task stopped: {reason}", status=503)
        self.task = task
        self.reason = reason


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._failure: TaskDied | None = None
        self._failed = asyncio.Event()
        self._stopping = False

    @property
    def failure(self) -> TaskDied | None:
        """The first task that died, if any."""
        return self._failure

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if name in self._tasks:
            coro.close()
            raise ValueError(f"a task named {name!r} is already supervised")
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._ended)
        return task

    def status(self) -> dict[str, str]:
        """Each task's state: ``running``, or how it ended."""
        out = {}
        for name, task in self._tasks.items():
            if not task.done():
                out[name] = "running"
            elif task.cancelled():
                out[name] = "cancelled"
            elif task.exception() is not None:
                out[name] = f"died: {task.exception()!r}"
            else:
                out[name] = "returned"
        return out

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        name = task.get_name()
        if exc is None:
            log.error("supervised task %s returned while the service runs", name)
            died = TaskDied(name, "it returned")
        else:
            log.error("supervised task %s died", name, exc_info=exc)
            died = TaskDied(name, repr(exc))
            died.__cause__ = exc
        if self._failure is None:
            self._failure = died
        self._failed.set()

    async def wait(self) -> None:
        """Return never: raise :class:`TaskDied` once a supervised task has died."""
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    async def stop(self, grace: Mapping[str, float] | None = None) -> None:
        """Stop every task, the newest first; a task named in ``grace`` gets that long to end itself."""
        self._stopping = True
        grace = grace or {}
        tasks = list(self._tasks.items())
        for name, task in reversed(tasks):
            if name in grace and not task.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), timeout=grace[name])
            task.cancel()
        await asyncio.gather(*(task for _, task in tasks), return_exceptions=True)
        self._tasks.clear()
