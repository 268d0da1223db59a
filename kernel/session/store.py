"""Where a peer session keeps what must survive a restart: its replay floors (the highest sequence
number acted on, per sender), its session counter, and whatever else its owner files there.

:class:`SessionStore` is the extension point. The device agent plugs in its SQLite journal (which
has these three methods); the phone bridge a :class:`FileStore` in its state directory; tests and
short-lived tools a :class:`MemoryStore`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Protocol

from kernel.errors import PrintfleetError
from kernel.wire import now_ms


class SessionStore(Protocol):
    async def get_kv(self, key: str) -> str | None: ...

    async def set_kv(self, key: str, value: str) -> None: ...

    async def next_session(self) -> int:
        """A session number above every one this store gave before (at least the wall clock in
        ms, so a lost store still gives a newer one)."""
        ...


class StoreError(PrintfleetError):
    """A session store that cannot be read or written (the message names the file)."""


class MemoryStore:
    """A store that lasts as long as the object (tests, one-shot tools)."""

    def __init__(self) -> None:
        self._kv: dict[str, str] = {}

    async def get_kv(self, key: str) -> str | None:
        return self._kv.get(key)

    async def set_kv(self, key: str, value: str) -> None:
        self._kv[key] = value

    async def next_session(self) -> int:
        value = max(int(self._kv.get("session", "0")) + 1, now_ms())
        self._kv["session"] = str(value)
        return value


class FileStore:
    """A small JSON file, replaced atomically (written beside it, synced, renamed) on every change.

    The file is read once, on first use; one process owns it. Disk I/O runs in a worker thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._kv: dict[str, str] | None = None
        self._lock = asyncio.Lock()

    async def _data(self) -> dict[str, str]:
        if self._kv is None:
            self._kv = await asyncio.to_thread(self._read)
        return self._kv

    def _read(self) -> dict[str, str]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read the session store {self.path}: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"the session store {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise StoreError(f"the session store {self.path} is not a table of strings")
        return {str(k): v for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StoreError(f"cannot write the session store {self.path}: {exc}") from exc

    async def get_kv(self, key: str) -> str | None:
        return (await self._data()).get(key)

    async def set_kv(self, key: str, value: str) -> None:
        async with self._lock:
            data = dict(await self._data())
            data[key] = value
            await asyncio.to_thread(self._write, data)
            self._kv = data

    async def next_session(self) -> int:
        async with self._lock:
            data = dict(await self._data())
            value = max(int(data.get("session", "0")) + 1, now_ms())
            data["session"] = str(value)
            await asyncio.to_thread(self._write, data)
            self._kv = data
        return value
