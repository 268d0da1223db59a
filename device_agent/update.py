"""The ``update`` maintenance command on the agent: download, verify, install beside, restart, settle.

1. The package URL must lead to the controller this agent is configured with (a relative URL is
   resolved against it) or use https; anything else is refused before a byte is fetched.
2. The download is bounded (size, time, no redirects) and hashed as it arrives; a sha256 other than
   the one in the signed command fails the update and nothing is installed.
3. The wheel is checked (a pure-Python printfleet wheel whose files match its RECORD) and unpacked
   into a new directory beside the running version (:mod:`device_agent.versions`); the running
   version is not touched.
4. The new install goes on trial and the agent restarts; the launcher starts the trial install.
5. Once the new agent is connected and has announced itself (birth), it confirms the trial and
   reports the command ``succeeded`` (old and new versions). If it never gets there, the launcher
   goes back to the previous version, which reports ``failed`` with "rolled back: <reason>".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from device_agent.errors import UpdateFailed, UpdateRefused, VersionError
from device_agent.versions import VersionStore
from kernel import wire
from kernel.wheel import WheelError, read_wheel

log = logging.getLogger(__name__)
C = wire.CommandState

CHUNK = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Settled:
    """How an update that restarted the agent ended, as its command should report it."""

    state: wire.CommandState
    detail: str | None
    result: dict[str, Any]


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def trusted_url(url: str, controller_http: str) -> str:
    """The absolute URL to fetch: relative URLs resolve against the controller; absolute ones must
    point at that controller or use https. :class:`UpdateRefused` otherwise."""
    try:
        full = urljoin(controller_http, url)
        parts = urlsplit(full)
        origin = _origin(full)
    except ValueError as exc:
        raise UpdateRefused(f"invalid package URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpdateRefused(f"refusing package URL {_shown(full)}: not http(s)")
    if parts.username or parts.password:
        raise UpdateRefused("refusing package URL with credentials in it")
    if parts.scheme != "https" and origin != _origin(controller_http):
        raise UpdateRefused(
            f"refusing package URL {_shown(full)}: not on this agent's controller"
            f" ({_shown(controller_http)}) and not https"
        )
    return full


def _shown(url: str) -> str:
    """A URL for messages and logs: without its query (which may carry a download grant)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Updater:
    """Runs ``update`` commands for one agent (see the module docstring)."""

    def __init__(
        self,
        store: VersionStore,
        *,
        controller_http: str,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = wire.MAX_PACKAGE_BYTES,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.controller_http = controller_http
        self._transport = transport
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def start(
        self, args: dict[str, Any], *, command_id: str, running_version: str, now_ms: int
    ) -> dict[str, Any] | None:
        """Fetch, check and install the package, and put it on trial.

        Returns the result at once when there is nothing to restart for (that version already
        runs); ``None`` when the agent must restart into the trial install.
        """
        try:
            spec = wire.validate_model(wire.UpdateArgs, args, "update arguments")
        except wire.WireError as exc:
            raise UpdateRefused(str(exc)) from exc
        url = trusted_url(spec.url, self.controller_http)
        install = await asyncio.to_thread(self.store.find, spec.sha256)
        if install is None:
            wheel = await self._download(url, spec.sha256)
            try:
                try:
                    info = await asyncio.to_thread(read_wheel, wheel)
                except WheelError as exc:
                    raise UpdateFailed(f"bad package: {exc}; nothing installed") from exc
                if info.version == running_version:
                    return {"old_version": running_version, "new_version": info.version, "unchanged": True}
                try:
                    install = await asyncio.to_thread(
                        self.store.install_wheel, wheel, spec.sha256, now_ms=now_ms
                    )
                except (VersionError, OSError) as exc:
                    raise UpdateFailed(f"install failed: {exc}") from exc
            finally:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(wheel.unlink)
        elif install.version == running_version:
            return {"old_version": running_version, "new_version": install.version, "unchanged": True}
        try:
            await asyncio.to_thread(
                self.store.begin_trial,
                install,
                previous_version=running_version,
                command_id=command_id,
                health_s=spec.health_s,
            )
        except (VersionError, OSError) as exc:
            raise UpdateFailed(f"cannot select the new version: {exc}") from exc
        log.info("update %s: version %s installed; restarting into it", command_id, install.version)
        return None

    async def _download(self, url: str, sha256: str) -> Path:
        """The package, in a file beside the installs, whose bytes hash to ``sha256``."""
        data = bytearray()
        digest = hashlib.sha256()
        timeout = httpx.Timeout(self.read_timeout_s, connect=10.0)
        try:
            async with (
                httpx.AsyncClient(
                    transport=self._transport,
                    timeout=timeout,
                    follow_redirects=False,
                    # certificates matter for https only; loading the CA bundle for a plain-http
                    # client costs ~20 ms of CPU for nothing (the sha256 is the authority anyway)
                    verify=url.startswith("https://"),
                ) as client,
                client.stream("GET", url) as resp,
            ):
                if resp.status_code != 200:
                    raise UpdateFailed(f"download of {_shown(url)} failed: HTTP {resp.status_code}")
                length = resp.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise UpdateFailed(f"package of {length} bytes is over the {self.max_bytes}-byte limit")
                async for chunk in resp.aiter_bytes(CHUNK):
                    data.extend(chunk)
                    if len(data) > self.max_bytes:
                        raise UpdateFailed(f"package is over the {self.max_bytes}-byte limit")
                    digest.update(chunk)
        except httpx.HTTPError as exc:
            raise UpdateFailed(f"download of {_shown(url)} failed: {type(exc).__name__}: {exc}") from exc
        actual = digest.hexdigest()
        if actual != sha256:
            raise UpdateFailed(f"package sha256 mismatch: expected {sha256}, got {actual}; nothing installed")
        path = self.store.root / ".downloads" / f"{sha256}.whl"
        try:
            await asyncio.to_thread(_write, path, bytes(data))
        except OSError as exc:
            raise UpdateFailed(f"install failed: cannot store the package: {exc}") from exc
        return path

    async def settle(self, command_id: str, *, running_version: str, now_ms: int) -> Settled | None:
        """Once connected after the restart: the command's outcome, or ``None`` while undecided."""
        outcome = await asyncio.to_thread(self.store.outcome, command_id)
        if outcome is None:
            outcome = await asyncio.to_thread(
                self.store.confirm, command_id=command_id, version=running_version, now_ms=now_ms
            )
            if outcome is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.store.prune)
        if outcome is None:
            trial = await asyncio.to_thread(self.store.trial)
            if trial is not None and trial.command_id == command_id:
                return None  # still on trial, and this is not the trial's version
            return Settled(
                state=C.FAILED, detail="the agent stopped before the update was put on trial", result={}
            )
        if outcome.confirmed:
            return Settled(
                state=C.SUCCEEDED,
                detail=f"{outcome.old_version} -> {outcome.new_version}",
                result={
                    "old_version": outcome.old_version,
                    "new_version": outcome.new_version,
                    "install": outcome.install,
                },
            )
        return Settled(
            state=C.FAILED,
            detail=f"rolled back: {outcome.reason}"[:500],
            result={
                "old_version": outcome.old_version,
                "new_version": outcome.old_version,
                "attempted_version": outcome.new_version,
            },
        )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def versions_dir(state_dir: Path) -> Path:
    """Where an agent keeps its installs (see :mod:`device_agent.versions`)."""
    return state_dir / "versions"


def updater_for(state_dir: Path, controller_http: str) -> Updater:
    """The updater of an agent with this state directory and controller."""
    return Updater(VersionStore(versions_dir(state_dir)), controller_http=controller_http)
