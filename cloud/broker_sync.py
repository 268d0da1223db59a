"""Keeps an external mosquitto's password and ACL files in step with the registry.

The embedded broker reads credentials live; mosquitto reads files. When devices are added,
disabled, enabled, rotated or removed, the controller rewrites ``passwd`` and ``acl`` in the
mosquitto directory and runs the reload command (e.g. ``systemctl reload mosquitto``). mosquitto
2.0 disconnects a client whose credentials disappeared on reload, so a disabled device is cut off
within the time the reload takes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from broker.acl import render_acl, render_passwd
from cloud.registry import DbCredentials

log = logging.getLogger(__name__)


class MosquittoSync:
    def __init__(self, directory: Path, reload_cmd: str | None, credentials: DbCredentials) -> None:
        self.directory = directory
        self.reload_cmd = reload_cmd
        self._credentials = credentials
        self._lock = asyncio.Lock()

    async def sync(self) -> None:
        async with self._lock:
            creds = await self._credentials.all()
            self.directory.mkdir(parents=True, exist_ok=True)
            _write(self.directory / "passwd", render_passwd(creds), secret=True)
            _write(self.directory / "acl", render_acl(creds), secret=False)
            if self.reload_cmd:
                proc = await asyncio.create_subprocess_shell(
                    self.reload_cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    log.warning("mosquitto reload command timed out: %s", self.reload_cmd)
                    return
                if proc.returncode != 0:
                    log.warning(
                        "mosquitto reload command failed (%s): %s", proc.returncode, err.decode().strip()
                    )


def _write(path: Path, text: str, *, secret: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
