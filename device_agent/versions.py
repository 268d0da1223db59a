"""Installed agent versions side by side, which one the launcher starts, and the trial of a new one.

Layout of ``STATE_DIR/versions``::

    state.json                 which install runs (``current``; none = the base environment),
                               the trial of a new install, and the outcome of recent updates
    0.2.0-1a2b3c4d5e6f/        one directory per install (version and the start of the package's
                               sha256), the wheel's contents, put first on the agent's sys.path
    .lock                      serialises changes between the launcher and the agent

A new install is never made ``current`` before it proved healthy: it runs as a *trial* (the
launcher starts it instead of ``current``) until the agent running it confirms it, or the trial
fails (the process exits, it was started too often, or its health deadline passed) and the
launcher goes back to ``current``, which was never changed. The previous install stays on disk
and can be selected again (:meth:`VersionStore.use`).

Blocking file I/O: call these methods with ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from device_agent.errors import VersionError
from kernel.wheel import WheelError, read_wheel

log = logging.getLogger(__name__)

#: How many times the launcher starts a trial install before giving up on it.
MAX_TRIAL_STARTS = 3
#: Installs kept besides the current one and a trial (the newest first).
KEEP_PREVIOUS = 2
STATE_FILE = "state.json"
INSTALL_FILE = ".printfleet-install.json"


@dataclass(frozen=True, kw_only=True)
class Install:
    """One unpacked printfleet wheel."""

    name: str
    version: str
    sha256: str
    installed_at: int
    path: Path


@dataclass(frozen=True, kw_only=True)
class Trial:
    """A new install on probation, started by the launcher instead of the current one."""

    install: str
    version: str
    previous_version: str
    command_id: str
    health_s: float
    started_at: int | None = None
    deadline: int | None = None
    starts: int = 0


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How an update ended on this host: confirmed healthy, or rolled back (with the reason)."""

    command_id: str
    confirmed: bool
    old_version: str
    new_version: str
    install: str
    at: int
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Boot:
    """What the launcher starts: an install (``None``: the base environment), maybe as a trial."""

    install: Install | None
    trial: Trial | None = None

    @property
    def version(self) -> str | None:
        return None if self.install is None else self.install.version


@dataclass(frozen=True, kw_only=True)
class _State:
    current: str | None = None
    trial: Trial | None = None
    outcomes: tuple[Outcome, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "current": self.current,
                "trial": None if self.trial is None else asdict(self.trial),
                "outcomes": [asdict(o) for o in self.outcomes],
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> _State:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        trial = data.get("trial")
        return cls(
            current=data.get("current"),
            trial=None if trial is None else Trial(**trial),
            outcomes=tuple(Outcome(**o) for o in data.get("outcomes", [])),
        )


class VersionStore:
    """The agent's installs and the launcher's choice among them (see the module docstring)."""

    def __init__(self, root: Path, *, max_trial_starts: int = MAX_TRIAL_STARTS) -> None:
        self.root = root
        self.max_trial_starts = max_trial_starts

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def exists(self) -> bool:
        """True once an update was installed here: from then on the launcher chooses what runs."""
        return self.state_path.exists()

    # -- installs -----------------------------------------------------------------------------

    def installs(self) -> list[Install]:
        found: list[Install] = []
        if not self.root.is_dir():
            return found
        for marker in self.root.glob(f"*/{INSTALL_FILE}"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                data = json.loads(marker.read_text())
                found.append(Install(path=marker.parent, name=marker.parent.name, **data))
        return sorted(found, key=lambda i: (i.installed_at, i.name), reverse=True)

    def get(self, name: str) -> Install | None:
        return next((i for i in self.installs() if i.name == name), None)

    def find(self, sha256: str) -> Install | None:
        return next((i for i in self.installs() if i.sha256 == sha256), None)

    def install_wheel(self, wheel: Path, sha256: str, *, now_ms: int) -> Install:
        """Unpack a checked wheel into a fresh directory (an existing install of it is reused)."""
        existing = self.find(sha256)
        if existing is not None:
            return existing
        try:
            info = read_wheel(wheel)
        except WheelError as exc:
            raise VersionError(str(exc)) from exc
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{info.version}-{sha256[:12]}"
        tmp = self.root / f".unpack-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member, target in info.files.items():
                    dest = tmp / target
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
            marker = {"version": info.version, "sha256": sha256, "installed_at": now_ms}
            (tmp / INSTALL_FILE).write_text(json.dumps(marker))
            _fsync_dir(tmp)
            final = self.root / name
            if final.exists():  # a leftover of an interrupted install of the same package
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("installed printfleet %s into %s", info.version, final)
        return Install(name=name, path=final, **marker)  # type: ignore[arg-type]

    def prune(self) -> list[str]:
        """Remove old installs, keeping the current one, a trial, and the newest others."""
        with self._locked():
            state = self._read()
            keep = {state.current, state.trial.install if state.trial else None}
            others = [i for i in self.installs() if i.name not in keep]
            removed = [i.name for i in others[KEEP_PREVIOUS:]]
            for name in removed:
                shutil.rmtree(self.root / name, ignore_errors=True)
        return removed

    # -- the launcher's choice ----------------------------------------------------------------

    def current(self) -> Install | None:
        state = self._read()
        return None if state.current is None else self.get(state.current)

    def trial(self) -> Trial | None:
        return self._read().trial

    def begin_trial(
        self, install: Install, *, previous_version: str, command_id: str, health_s: float
    ) -> None:
        """The next start runs ``install`` on probation; ``current`` is left as it is."""
        with self._locked():
            state = self._read()
            if state.trial is not None and state.trial.command_id != command_id:
                raise VersionError(
                    f"another update ({state.trial.command_id}, version {state.trial.version}) is on trial"
                )
            trial = Trial(
                install=install.name,
                version=install.version,
                previous_version=previous_version,
                command_id=command_id,
                health_s=health_s,
            )
            self._write(replace(state, trial=trial))

    def boot(self, now_ms: int) -> Boot:
        """Decide what the launcher starts now; a trial past its deadline or its starts is rolled back."""
        with self._locked():
            try:
                state = self._read()
            except VersionError as exc:
                log.error("%s; starting the base environment", exc)
                return Boot(install=None)
            trial = state.trial
            if trial is not None:
                reason = None
                if trial.deadline is not None and now_ms > trial.deadline:
                    reason = f"version {trial.version} did not report healthy within {trial.health_s:g} s"
                elif trial.starts >= self.max_trial_starts:
                    reason = (
                        f"version {trial.version} was started {trial.starts} times without reporting healthy"
                    )
                elif self.get(trial.install) is None:
                    reason = f"the install {trial.install} is missing"
                if reason is not None:
                    state = self._roll_back(state, reason, now_ms)
                else:
                    started = trial.started_at if trial.started_at is not None else now_ms
                    trial = replace(
                        trial,
                        starts=trial.starts + 1,
                        started_at=started,
                        deadline=started + int(trial.health_s * 1000),
                    )
                    self._write(replace(state, trial=trial))
                    return Boot(install=self.get(trial.install), trial=trial)
            install = None if state.current is None else self.get(state.current)
            if state.current is not None and install is None:
                log.error("the selected install %s is missing; starting the base environment", state.current)
            return Boot(install=install)

    def confirm(self, *, command_id: str, version: str, now_ms: int) -> Outcome | None:
        """The trial's agent is up and announced itself: make its install current."""
        with self._locked():
            state = self._read()
            trial = state.trial
            if trial is None or trial.command_id != command_id or trial.version != version:
                return None
            outcome = Outcome(
                command_id=command_id,
                confirmed=True,
                old_version=trial.previous_version,
                new_version=trial.version,
                install=trial.install,
                at=now_ms,
            )
            self._write(_State(current=trial.install, trial=None, outcomes=_recent(state, outcome)))
        log.info("version %s confirmed healthy (update %s)", trial.version, command_id)
        return outcome

    def fail_trial(self, reason: str, now_ms: int) -> Outcome | None:
        """The trial failed (its process exited, or did not come up): go back to ``current``."""
        with self._locked():
            state = self._read()
            if state.trial is None:
                return None
            state = self._roll_back(state, reason, now_ms)
        return state.outcomes[-1]

    def outcome(self, command_id: str) -> Outcome | None:
        return next((o for o in reversed(self._read().outcomes) if o.command_id == command_id), None)

    def use(self, name: str | None) -> None:
        """Select an install (``None``: the base environment) by hand; any trial is dropped."""
        with self._locked():
            state = self._read()
            if name is not None and self.get(name) is None:
                raise VersionError(f"no install named {name!r} in {self.root}")
            self._write(replace(state, current=name, trial=None))

    def describe(self, running: str) -> dict[str, Any]:
        """The store as plain data (for `printfleet agent versions`)."""
        state = self._read()
        return {
            "running": running,
            "current": state.current,
            "trial": None if state.trial is None else asdict(state.trial),
            "installs": [
                {"name": i.name, "version": i.version, "sha256": i.sha256, "installed_at": i.installed_at}
                for i in self.installs()
            ],
            "outcomes": [asdict(o) for o in state.outcomes[-5:]],
        }

    # -- state file ---------------------------------------------------------------------------

    def _roll_back(self, state: _State, reason: str, now_ms: int) -> _State:
        assert state.trial is not None
        trial = state.trial
        outcome = Outcome(
            command_id=trial.command_id,
            confirmed=False,
            old_version=trial.previous_version,
            new_version=trial.version,
            install=trial.install,
            at=now_ms,
            reason=reason,
        )
        new = _State(current=state.current, trial=None, outcomes=_recent(state, outcome))
        self._write(new)
        log.warning("update %s rolled back: %s", trial.command_id, reason)
        return new

    def _read(self) -> _State:
        try:
            text = self.state_path.read_text()
        except FileNotFoundError:
            return _State()
        try:
            return _State.from_json(text)
        except (ValueError, TypeError) as exc:
            raise VersionError(f"{self.state_path} is unreadable: {exc}") from exc

    def _write(self, state: _State) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(state.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _recent(state: _State, outcome: Outcome, keep: int = 20) -> tuple[Outcome, ...]:
    return (*state.outcomes, outcome)[-keep:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
