"""A seeded delivery chaos run: every part a real OS process, SIGKILLed at random, a printer that runs
out of paper, and a checker that compares the controller's job states with what reached paper.

Used by ``tests/test_chaos.py`` (a few hundred jobs, on the embedded broker and on mosquitto) and by
``bench/chaos.py`` (the same run with thousands of jobs, timed).

What runs:

* the controller: ``python -m printfleet up`` on fixed ports chosen once (so agent configs stay valid
  across restarts). On the embedded broker the broker lives in that process, so a controller kill is
  also a broker kill. On mosquitto: a :class:`broker.testing.MosquittoProcess` plus
  ``printfleet up --broker mqtt://...``;
* one device agent: ``python -m printfleet agent run --config ...``;
* one simulated ESC/POS printer (:class:`PtyPrinter`) in this process, so it survives every kill and
  its pty path never changes.

A submitter posts N text jobs through the HTTP API, each carrying a unique marker
(``CHAOS-<seq>-<key>``) and an idempotency key; it retries with the same key on connection errors and
5xx, so every accepted job is known by id. A chaos monkey, driven by ``random.Random`` seeded from the
run's seed, SIGKILLs and restarts the agent, the controller and (mosquitto) the broker, and takes the
printer's paper out for a while. Right after each agent kill, before the restart, it opens the agent's
journal read-only and records every job that was marked ``printing`` (``started_at``) but not finished:
those kills landed inside a write, and only those jobs may end ``unknown``.

At the end every part is up, the paper is in, and the run waits (bounded) until every job is
terminal, then :func:`check` applies the rules (see its docstring) and :class:`Verdict` renders the
report line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from broker.testing import MosquittoProcess, free_port
from device_agent.config import load_config, write_config
from kernel.sim.printer import PtyPrinter

BrokerKind = Literal["embedded", "mosquitto"]
DEVICE = "chaos-1"
MARKER_RE = re.compile(r"CHAOS-\d{6}-[0-9a-f]{8}")
TERMINAL = frozenset({"printed", "failed", "expired", "cancelled", "unknown"})
OPEN_STATES = ("queued", "dispatched", "delivered", "printing", "held")
DEFAULT_SEED = 20240611


def seed_from_env(default: int = DEFAULT_SEED) -> int:
    raw = os.environ.get("PRINTFLEET_CHAOS_SEED", "").strip()
    return int(raw) if raw else default


def marker(seq: int, key: str) -> str:
    return f"CHAOS-{seq:06d}-{key}"


# -- the checker (pure: tested on synthetic data) ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JobOutcome:
    """One submitted job as the controller sees it at the end (``job_id`` None: never accepted)."""

    seq: int
    marker: str
    copies: int
    job_id: str | None
    state: str | None
    detail: str | None = None


@dataclass(kw_only=True)
class Verdict:
    jobs: int
    states: Counter[str]
    duplicates: int
    lost: int
    violations: list[str]
    unknown_ids: set[str]
    in_write_ids: set[str]
    stray_markers: int

    @property
    def ok(self) -> bool:
        return not self.violations


def check(
    outcomes: Sequence[JobOutcome],
    paper_text: str,
    in_write_ids: Iterable[str],
) -> Verdict:
    """Compare the controller's final job states with what reached paper.

    ``paper_text`` is everything the printer printed (cut receipts and the pending lines); a job's
    marker counts once per occurrence on paper. ``in_write_ids`` are the jobs found started but not
    finished in the agent's journal right after a kill. The rules, each a violation when broken:

    * every submitted job was accepted and got its own id (same key twice is one job, two keys two);
    * every job is terminal, and its state is ``printed``, ``unknown`` or ``failed`` with a reason
      (the run neither cancels nor sets a TTL, so ``cancelled``/``expired`` are unexplained);
    * ``printed``: its marker is on paper exactly ``copies`` times (missing copies are *lost*);
    * ``unknown``: on paper at most ``copies`` times (may or may not have printed, never twice);
    * ``failed``: not on paper at all (failed means nothing was printed);
    * no marker is on paper more than ``copies`` times (*duplicates* count the extra copies), and no
      marker on paper belongs to no job;
    * a job ends ``unknown`` only if a kill landed while it was being written (its id is in
      ``in_write_ids``), and every such job ends ``unknown`` (it is never silently reprinted).
    """
    in_write = set(in_write_ids)
    violations: list[str] = []
    states: Counter[str] = Counter()
    on_paper = Counter(MARKER_RE.findall(paper_text))
    known = {o.marker for o in outcomes}
    duplicates = 0
    lost = 0
    unknown_ids: set[str] = set()
    ids: dict[str, int] = {}

    for o in outcomes:
        n = on_paper.get(o.marker, 0)
        if n > o.copies:
            duplicates += n - o.copies
            violations.append(f"{o.marker} ({o.job_id}, {o.state}) is on paper {n} times, copies={o.copies}")
        if o.job_id is None:
            lost += 1
            violations.append(f"{o.marker} was never accepted by the API")
            continue
        if o.job_id in ids:
            violations.append(f"{o.marker} and seq {ids[o.job_id]} share job id {o.job_id}")
        ids[o.job_id] = o.seq
        state = o.state or "missing"
        states[state] += 1
        match state:
            case "printed":
                if n < o.copies:
                    lost += o.copies - n
                    violations.append(
                        f"{o.marker} ({o.job_id}) is printed but on paper {n} of {o.copies} times"
                    )
            case "unknown":
                unknown_ids.add(o.job_id)
                if o.job_id not in in_write:
                    violations.append(
                        f"{o.marker} ({o.job_id}) ended unknown but no kill landed while it was written"
                        f" ({o.detail})"
                    )
            case "failed":
                if not o.detail:
                    violations.append(f"{o.marker} ({o.job_id}) failed without a reason")
                if n:
                    violations.append(f"{o.marker} ({o.job_id}) failed but is on paper {n} times")
            case s if s in TERMINAL:
                violations.append(f"{o.marker} ({o.job_id}) ended {s} ({o.detail}): nothing asked for it")
            case s:
                lost += 1
                violations.append(f"{o.marker} ({o.job_id}) is not terminal: {s}")
    for job_id in sorted(in_write - unknown_ids):
        seq = ids.get(job_id)
        what = next((f"{o.marker} ended {o.state}" for o in outcomes if o.job_id == job_id), "not ours")
        violations.append(f"job {job_id} (seq {seq}) was being written at a kill but {what}, not unknown")
    stray = sum(c for m, c in on_paper.items() if m not in known)
    if stray:
        violations.append(
            f"{stray} marker(s) on paper belong to no job: "
            + ", ".join(sorted(m for m in on_paper if m not in known)[:5])
        )
    return Verdict(
        jobs=len(outcomes),
        states=states,
        duplicates=duplicates,
        lost=lost,
        violations=violations,
        unknown_ids=unknown_ids,
        in_write_ids=in_write,
        stray_markers=stray,
    )


def out_of_order(paper_text: str, order: Mapping[str, int], skip: Iterable[str] = ()) -> int:
    """Jobs printed after a job submitted later than them (first copies, ``order``: marker -> seq).

    Informational: with one priority the controller's submission order is the print order the
    agent aims for, but the ordering gate is bounded in time, so this is reported, not asserted.
    ``skip`` are markers whose paper position says nothing (jobs cut by a kill).
    """
    skipped = set(skip)
    seen: set[str] = set()
    highest = -1
    late = 0
    for m in MARKER_RE.findall(paper_text):
        if m in seen or m in skipped or m not in order:
            continue
        seen.add(m)
        if order[m] < highest:
            late += 1
        highest = max(highest, order[m])
    return late


# -- configuration and report --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    workdir: Path
    broker: BrokerKind = "embedded"
    seed: int = DEFAULT_SEED
    jobs: int = 200
    #: Submission pace in jobs per second (None: as fast as ``submitters`` parallel clients go).
    submit_rate: float | None = 5.0
    submitters: int = 4
    #: Fraction of jobs with two copies (the rest have one).
    two_copies: float = 0.1
    #: Mean seconds between kills (exponential), and between paper-out episodes.
    kill_every_s: float = 3.0
    paper_out_every_s: float = 6.0
    paper_out_s: tuple[float, float] = (0.3, 3.0)
    #: How long a killed part stays down before it is started again.
    down_s: tuple[float, float] = (0.0, 1.5)
    #: Relative weights of kill targets (broker only counts on mosquitto).
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"agent": 0.5, "controller": 0.3, "broker": 0.2}
    )
    #: Probability that a kill takes a second part down at the same time.
    double_kill: float = 0.15
    #: The first kills take each target once (in a seeded order) before the random choice starts, so
    #: a short run still kills every part (the small chaos test of ``make test``).
    every_target_first: bool = False
    #: After the last submission, chaos goes on until the fleet drains or this many seconds pass.
    chaos_tail_s: float = 10.0
    #: Bound on the final wait for every job to become terminal.
    drain_timeout_s: float = 120.0
    #: Bound on the whole submission phase (a job not accepted by then counts as lost).
    submit_timeout_s: float = 600.0
    #: Stop handing out new jobs after this many seconds (None: submit all ``jobs``). The jobs not
    #: submitted are left out of the check, and the report says how many were.
    submit_for_s: float | None = None
    #: Simulated print speed (bytes/s; None: instant) and lines of filler per job (about 45 bytes
    #: each): the longer a job takes to print, the more kills land inside a write.
    printer_bytes_per_s: float | None = 2000.0
    filler_lines: int = 6
    start_timeout_s: float = 60.0
    #: Sabotage, to prove the checker fails when delivery breaks: delete the agent's journal at every
    #: agent kill (the agent forgets what it printed and what it was printing). Never in a real run.
    wipe_journal_on_kill: bool = False


@dataclass(kw_only=True)
class ChaosReport:
    config: ChaosConfig
    verdict: Verdict
    kills: Counter[str]
    kills_in_write: int
    paper_out_episodes: int
    restarts_failed: Counter[str]
    unexpected_exits: list[str]
    submit_s: float
    drain_s: float
    total_s: float
    drained: bool
    receipts: int
    tracebacks: dict[str, int]
    problems: list[str]
    out_of_order: int | None = None
    submitted_of: int | None = None
    open_at_drain: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.problems

    @property
    def jobs_per_s(self) -> float:
        return self.verdict.jobs / self.total_s if self.total_s > 0 else 0.0

    def line(self) -> str:
        v, c = self.verdict, self.config
        broker_kills = self.kills["controller"] if c.broker == "embedded" else self.kills["broker"]
        states = " ".join(f"{s}={n}" for s, n in sorted(v.states.items()) if s not in ("printed", "unknown"))
        return (
            f"chaos broker={c.broker} seed={c.seed}: jobs={v.jobs}"
            + (f" (of {self.submitted_of} planned)" if self.submitted_of else "")
            + f" printed={v.states['printed']}"
            f" unknown={v.states['unknown']}" + (f" {states}" if states else "") + " failed="
            f"{v.states['failed']} duplicates={v.duplicates} lost={v.lost}"
            f" | kills agent={self.kills['agent']} (in a write: {self.kills_in_write},"
            f" jobs in writes: {len(v.in_write_ids)}) controller={self.kills['controller']}"
            f" broker={broker_kills}{' (same process)' if c.broker == 'embedded' else ''}"
            f" paper-out={self.paper_out_episodes}"
            f" | submit {self.submit_s:.1f} s, drain {self.drain_s:.1f} s"
            f"{'' if self.drained else ' (NOT drained)'}, total {self.total_s:.1f} s,"
            f" {self.jobs_per_s:.1f} jobs/s, receipts={self.receipts}"
            + ("" if self.out_of_order is None else f", printed out of submission order: {self.out_of_order}")
            + (f" | unexpected exits: {len(self.unexpected_exits)}" if self.unexpected_exits else "")
            + (
                " | tracebacks in logs: " + ", ".join(f"{k}={n}" for k, n in self.tracebacks.items())
                if any(self.tracebacks.values())
                else ""
            )
        )

    def details(self, limit: int = 20) -> str:
        out = [self.line()]
        out += [f"problem: {p}" for p in self.problems]
        out += [f"violation: {v}" for v in self.verdict.violations[:limit]]
        if len(self.verdict.violations) > limit:
            out.append(f"... and {len(self.verdict.violations) - limit} more violations")
        out += [f"unexpected exit: {u}" for u in self.unexpected_exits[:limit]]
        if self.open_at_drain:
            out.append("open when the drain began: " + ", ".join(self.open_at_drain[:limit]))
        out.append(f"logs in {self.config.workdir}")
        return "\n".join(out)


# -- processes -----------------------------------------------------------------------------------


class ChildProcess:
    """A child process with its output appended to a log file; SIGKILL is real."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(env)
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with open(self.log, "ab") as fh:  # noqa: ASYNC230 - a local log file handed to the child
            fh.write(f"\n==== start #{self.starts} at {time.strftime('%H:%M:%S')} ====\n".encode())
            fh.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=fh, env=self.env
            )

    async def kill(self) -> int | None:
        """SIGKILL and reap; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback") if self.log.exists() else 0


def journal_in_write(path: Path) -> set[str]:
    """Job ids marked printing but not finished in an agent journal (read-only; the agent is dead)."""
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT job_id FROM jobs WHERE started_at IS NOT NULL AND finished_at IS NULL")
        return {str(r[0]) for r in rows}
    finally:
        db.close()


def wipe_journal(path: Path) -> None:
    """Sabotage only: delete an agent journal (and its WAL files)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- the run -------------------------------------------------------------------------------------


class ChaosRun:
    """One seeded chaos run; ``await ChaosRun(config).run()`` returns a :class:`ChaosReport`."""

    def __init__(self, config: ChaosConfig) -> None:
        self.cfg = config
        self.root = config.workdir
        self.http_port = free_port()
        self.mqtt_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.data_dir = self.root / "controller"
        self.env = dict(os.environ)
        self.env["PRINTFLEET_HOME"] = str(self.data_dir)
        for var in ("PRINTFLEET_SERVER", "PRINTFLEET_TOKEN"):
            self.env.pop(var, None)
        self.mosquitto: MosquittoProcess | None = None
        self.controller: ChildProcess | None = None
        self.agent: ChildProcess | None = None
        self.printer: PtyPrinter | None = None
        self.journal_path: Path | None = None
        self.token = ""
        # what happened
        self.kills: Counter[str] = Counter()
        self.kills_in_write = 0
        self.in_write_ids: set[str] = set()
        self.paper_out_episodes = 0
        self.restarts_failed: Counter[str] = Counter()
        self.unexpected_exits: list[str] = []
        self.problems: list[str] = []
        self.job_ids: dict[int, str] = {}
        self.markers: dict[int, tuple[str, int]] = {}
        self._locks = {name: asyncio.Lock() for name in ("agent", "controller", "broker")}
        self._up: dict[str, bool] = {"agent": False, "controller": False, "broker": False}
        self.open_at_drain: list[str] = []
        self.planned = config.jobs

    # -- setup -----------------------------------------------------------------------------

    def _controller_argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "printfleet",
            "up",
            "--data-dir",
            str(self.data_dir),
            "--mqtt-bind",
            f"127.0.0.1:{self.mqtt_port}",
            "--http-bind",
            f"127.0.0.1:{self.http_port}",
        ]
        if self.cfg.broker == "mosquitto":
            argv += ["--broker", f"mqtt://127.0.0.1:{self.mqtt_port}"]
        return argv

    async def _prepare_mosquitto(self) -> None:
        """The controller's database and credential exist before mosquitto starts (as operators do)."""
        from cloud.config import DataDir
        from tests.fleet import _prepared_registry

        dd = DataDir(root=self.data_dir)
        registry, engine = await _prepared_registry(dd)
        try:
            creds = await self._credentials(registry)
        finally:
            await engine.dispose()
        (self.root / "mosquitto").mkdir(exist_ok=True)
        self.mosquitto = MosquittoProcess(self.root / "mosquitto", creds)
        await self.mosquitto.start()
        self.mqtt_port = self.mosquitto.port  # chosen at the first start, reused by every restart
        self._up["broker"] = True

    @staticmethod
    async def _credentials(registry: Any) -> list[Any]:
        from cloud.registry import DbCredentials

        return list(await DbCredentials(registry, "main").all())

    async def _sync_mosquitto_credentials(self) -> None:
        from cloud import db
        from cloud.registry import Registry

        assert self.mosquitto is not None
        engine = db.make_engine(f"sqlite+aiosqlite:///{self.data_dir / 'printfleet.db'}")
        try:
            creds = await self._credentials(Registry(db.make_sessionmaker(engine)))
        finally:
            await engine.dispose()
        await self.mosquitto.update_credentials(creds)

    async def _wait_http(self, proc: ChildProcess, timeout: float) -> bool:
        """True once the controller answers /healthz (ok, or 503 while its broker link is down)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.http_url, timeout=2) as client:
            while loop.time() < deadline:
                if not proc.running:
                    return False
                with contextlib.suppress(httpx.TransportError):
                    resp = await client.get("/healthz")
                    if resp.status_code == 200:
                        return True
                await asyncio.sleep(0.05)  # polling interval, bounded by the deadline
        return False

    async def _start_controller(self) -> None:
        """Start the controller until it is healthy (a start may fail while mosquitto is down)."""
        assert self.controller is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.start_timeout_s
        while True:
            await self.controller.start()
            if await self._wait_http(self.controller, max(1.0, deadline - loop.time())):
                self._up["controller"] = True
                return
            self.restarts_failed["controller"] += 1
            await self.controller.kill()
            if loop.time() > deadline:
                raise RuntimeError(f"the controller did not become healthy: see {self.controller.log}")

    async def _register_device(self, client: httpx.AsyncClient) -> Path:
        assert self.printer is not None
        resp = await client.post("/v1/devices", json={"name": DEVICE, "serial_url": self.printer.url})
        resp.raise_for_status()
        data = resp.json()["agent_config"]
        data["agent"] = {"state_dir": str(self.root / "agent-state")}
        cfg_path = self.root / f"{DEVICE}.agent.toml"
        write_config(cfg_path, data)
        self.journal_path = load_config(cfg_path).journal_path
        if self.mosquitto is not None:
            await self._sync_mosquitto_credentials()
        return cfg_path

    async def _wait_online(self, client: httpx.AsyncClient, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with contextlib.suppress(httpx.TransportError):
                resp = await client.get(f"/v1/devices/{DEVICE}")
                if resp.status_code == 200 and resp.json().get("online"):
                    return
            await asyncio.sleep(0.1)  # polling interval, bounded by the deadline
        raise RuntimeError(f"device {DEVICE} did not come online within {timeout} s")

    # -- the monkey ------------------------------------------------------------------------

    async def _kill(self, target: str, rng: random.Random) -> None:
        async with self._locks[target]:
            self.kills[target] += 1
            self._up[target] = False
            match target:
                case "agent":
                    assert self.agent is not None and self.journal_path is not None
                    await self.agent.kill()
                    in_write = await asyncio.to_thread(journal_in_write, self.journal_path)
                    if in_write:
                        self.kills_in_write += 1
                        self.in_write_ids |= in_write
                    if self.cfg.wipe_journal_on_kill:
                        await asyncio.to_thread(wipe_journal, self.journal_path)
                case "controller":
                    assert self.controller is not None
                    await self.controller.kill()
                case "broker":
                    assert self.mosquitto is not None
                    await self.mosquitto.kill()
            await asyncio.sleep(rng.uniform(*self.cfg.down_s))  # the chaos: time spent down
            await self._restart(target)

    async def _restart(self, target: str) -> None:
        match target:
            case "agent":
                assert self.agent is not None
                await self.agent.start()
            case "controller":
                await self._start_controller()
            case "broker":
                assert self.mosquitto is not None
                await self.mosquitto.start()
        self._up[target] = True

    async def _watch(self, name: str, proc: ChildProcess) -> None:
        """Record (and restart) a process that exits without being killed by the monkey."""
        while True:
            current = proc.proc
            assert current is not None
            code = await current.wait()
            async with self._locks[name]:
                if self._up[name] and proc.proc is current:
                    self.unexpected_exits.append(f"{name} exited with {code} (see {proc.log})")
                    self._up[name] = False
                    if name == "agent" and self.journal_path is not None:
                        # a crash of the agent leaves the same traces as a kill
                        self.in_write_ids |= await asyncio.to_thread(journal_in_write, self.journal_path)
                    await self._restart(name)
            # the monkey (or the restart above) holds the lock until the new process runs

    def _targets(self) -> dict[str, float]:
        weights = dict(self.cfg.weights)
        if self.cfg.broker == "embedded":
            weights.pop("broker", None)
        return {k: w for k, w in weights.items() if w > 0}

    async def _kill_loop(self, rng: random.Random, stop: asyncio.Event) -> None:
        weights = self._targets()
        if not weights:
            return
        names = sorted(weights)
        first = rng.sample(names, len(names)) if self.cfg.every_target_first else []
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(1 / self.cfg.kill_every_s))
            if stop.is_set():
                return
            if first:
                targets = {first.pop(0)}
            else:
                targets = {rng.choices(names, weights=[weights[n] for n in names])[0]}
                if len(names) > 1 and rng.random() < self.cfg.double_kill:
                    # two parts down at once (e.g. the agent dies while the controller is away)
                    targets.add(rng.choice([n for n in names if n not in targets]))
            await asyncio.gather(*(self._kill(t, random.Random(rng.random())) for t in sorted(targets)))

    async def _paper_loop(self, rng: random.Random, stop: asyncio.Event) -> None:
        assert self.printer is not None
        if self.cfg.paper_out_every_s <= 0:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(1 / self.cfg.paper_out_every_s))
            if stop.is_set():
                return
            self.paper_out_episodes += 1
            self.printer.set_fault(paper_out=True)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.uniform(*self.cfg.paper_out_s))
            finally:
                self.printer.set_fault(paper_out=False)

    # -- the submitter ---------------------------------------------------------------------

    async def _submit_one(self, client: httpx.AsyncClient, seq: int, deadline: float) -> None:
        mark, copies = self.markers[seq]
        body = {
            "printer": DEVICE,
            "text": "\n".join(
                [mark, f"chaos seed {self.cfg.seed} job {seq}"]
                + [f"line {i:02d} " + "=" * 36 for i in range(self.cfg.filler_lines)]
            ),
            "copies": copies,
            "idempotency_key": f"chaos-{self.cfg.seed}-{seq}",
        }
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while True:
            try:
                resp = await client.post("/v1/jobs", json=body)
            except httpx.TransportError:
                resp = None
            if resp is not None and resp.status_code in (200, 201):
                self.job_ids[seq] = resp.json()["id"]
                return
            if resp is not None and resp.status_code < 500:
                self.problems.append(f"job {seq} refused: {resp.status_code} {resp.text[:200]}")
                return
            if loop.time() > deadline:
                return
            await asyncio.sleep(backoff)  # retry pacing while the controller is down
            backoff = min(backoff * 2, 1.0)

    async def _submitter(self, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.submit_timeout_s
        queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=self.cfg.submitters * 2)
        headers = {"Authorization": f"Bearer {self.token}"}

        async def worker() -> None:
            async with httpx.AsyncClient(base_url=self.http_url, headers=headers, timeout=10) as client:
                while (seq := await queue.get()) is not None:
                    await self._submit_one(client, seq, deadline)

        workers = [asyncio.create_task(worker(), name=f"submitter-{i}") for i in range(self.cfg.submitters)]
        try:
            seq = 0
            started = loop.time()
            while seq < self.cfg.jobs:
                if self.cfg.submit_for_s is not None and loop.time() - started > self.cfg.submit_for_s:
                    break
                burst = min(self.cfg.jobs - seq, rng.randint(1, 20))
                for _ in range(burst):
                    await queue.put(seq)
                    seq += 1
                if self.cfg.submit_rate:
                    await asyncio.sleep(rng.expovariate(self.cfg.submit_rate / burst))  # workload pacing
            self.planned = seq
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    # -- observing -------------------------------------------------------------------------

    async def _any_open(self, client: httpx.AsyncClient) -> bool | None:
        """Whether any job is not terminal yet; None if the controller does not answer."""
        try:
            for state in OPEN_STATES:
                resp = await client.get("/v1/jobs", params={"state": state, "limit": 1})
                if resp.status_code != 200:
                    return None
                if resp.json():
                    return True
        except httpx.TransportError:
            return None
        return False

    async def _wait_drained(self, client: httpx.AsyncClient, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self._any_open(client) is False:
                return True
            await asyncio.sleep(0.25)  # polling interval, bounded by the deadline
        return False

    async def _outcomes(self, client: httpx.AsyncClient) -> list[JobOutcome]:
        sem = asyncio.Semaphore(8)

        async def one(seq: int) -> JobOutcome:
            mark, copies = self.markers[seq]
            job_id = self.job_ids.get(seq)
            state = detail = None
            if job_id is not None:
                async with sem:
                    for _ in range(5):
                        with contextlib.suppress(httpx.TransportError):
                            resp = await client.get(f"/v1/jobs/{job_id}")
                            if resp.status_code == 200:
                                job = resp.json()
                                state, detail = job["state"], job["detail"]
                                break
                            state = f"http {resp.status_code}"
            return JobOutcome(seq=seq, marker=mark, copies=copies, job_id=job_id, state=state, detail=detail)

        return list(await asyncio.gather(*(one(s) for s in range(self.planned))))

    # -- everything ------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        cfg = self.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        master = random.Random(cfg.seed)
        rng_jobs = random.Random(f"{cfg.seed}/jobs")
        for seq in range(cfg.jobs):
            key = f"{rng_jobs.getrandbits(32):08x}"
            self.markers[seq] = (marker(seq, key), 2 if rng_jobs.random() < cfg.two_copies else 1)
        loop = asyncio.get_running_loop()
        watchers: list[asyncio.Task[None]] = []
        try:
            async with PtyPrinter(drain_bytes_per_s=cfg.printer_bytes_per_s) as printer:
                self.printer = printer
                if cfg.broker == "mosquitto":
                    await self._prepare_mosquitto()
                self.controller = ChildProcess(
                    "controller", self._controller_argv(), self.root / "controller.log", self.env
                )
                await self._start_controller()
                self.token = (self.data_dir / "admin.token").read_text().strip()
                headers = {"Authorization": f"Bearer {self.token}"}
                async with httpx.AsyncClient(base_url=self.http_url, headers=headers, timeout=10) as client:
                    cfg_path = await self._register_device(client)
                    self.agent = ChildProcess(
                        "agent",
                        [sys.executable, "-m", "printfleet", "agent", "run", "--config", str(cfg_path)],
                        self.root / "agent.log",
                        self.env,
                    )
                    await self.agent.start()
                    self._up["agent"] = True
                    await self._wait_online(client, cfg.start_timeout_s)
                    watchers = [
                        asyncio.create_task(self._watch("agent", self.agent), name="watch-agent"),
                        asyncio.create_task(
                            self._watch("controller", self.controller), name="watch-controller"
                        ),
                    ]

                    stop = asyncio.Event()
                    t0 = loop.time()
                    chaos = [
                        asyncio.create_task(
                            self._kill_loop(random.Random(master.random()), stop), name="chaos-kill"
                        ),
                        asyncio.create_task(
                            self._paper_loop(random.Random(master.random()), stop), name="chaos-paper"
                        ),
                    ]
                    try:
                        await self._submitter(random.Random(master.random()))
                        submit_s = loop.time() - t0
                        tail_end = loop.time() + cfg.chaos_tail_s
                        while loop.time() < tail_end and not any(t.done() for t in chaos):
                            if await self._any_open(client) is False:
                                break
                            await asyncio.sleep(0.5)  # progress polling during the chaos tail
                    finally:
                        stop.set()
                        for t in chaos:
                            with contextlib.suppress(Exception):
                                await asyncio.wait_for(t, cfg.start_timeout_s * 2)
                    for t in chaos:
                        if t.done() and not t.cancelled() and t.exception() is not None:
                            self.problems.append(f"{t.get_name()} failed: {t.exception()!r}")
                    # every part up, paper in: now the fleet must drain by itself
                    printer.set_fault(paper_out=False)
                    for name in ("broker", "controller", "agent"):
                        if name == "broker" and self.mosquitto is None:
                            continue
                        if not self._up[name]:
                            await self._restart(name)
                    self.open_at_drain = await self._open_jobs(client)
                    t_drain = loop.time()
                    drained = await self._wait_drained(client, cfg.drain_timeout_s)
                    drain_s = loop.time() - t_drain
                    total_s = loop.time() - t0
                    with contextlib.suppress(TimeoutError):
                        await printer.wait_until(lambda m: m.buffered == 0, timeout=10)
                    outcomes = await self._outcomes(client)
                    paper = printer.model.text()
                    receipts = len(printer.model.receipts)
                for w in watchers:
                    w.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                watchers = []
                await self._shutdown()
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self._shutdown(force=True)
        verdict = check(outcomes, paper, self.in_write_ids)
        order = self._controller_order()
        by_id = {o.job_id: o.marker for o in outcomes if o.job_id is not None}
        late = out_of_order(
            paper,
            {by_id[i]: seq for i, seq in order.items() if i in by_id},
            skip=[by_id[i] for i in verdict.unknown_ids | verdict.in_write_ids if i in by_id],
        )
        if self.unexpected_exits:
            self.problems.append(f"{len(self.unexpected_exits)} unexpected process exit(s)")
        return ChaosReport(
            config=cfg,
            verdict=verdict,
            kills=self.kills,
            kills_in_write=self.kills_in_write,
            paper_out_episodes=self.paper_out_episodes,
            restarts_failed=self.restarts_failed,
            unexpected_exits=self.unexpected_exits,
            submit_s=submit_s,
            drain_s=drain_s,
            total_s=total_s,
            drained=drained,
            receipts=receipts,
            tracebacks={p.name: p.tracebacks() for p in (self.controller, self.agent) if p is not None},
            problems=self.problems,
            out_of_order=late if order else None,
            open_at_drain=self.open_at_drain,
            submitted_of=cfg.jobs if self.planned < cfg.jobs else None,
        )

    def _controller_order(self) -> dict[str, int]:
        """job id -> the controller's submission sequence (read from its database once it stopped)."""
        path = self.data_dir / "printfleet.db"
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                return {str(i): int(q) for i, q in db.execute("SELECT id, seq FROM jobs")}
            finally:
                db.close()
        except sqlite3.Error:
            return {}

    async def _open_jobs(self, client: httpx.AsyncClient) -> list[str]:
        """Jobs still open when the chaos stopped (``state:id``), for the report."""
        out: list[str] = []
        with contextlib.suppress(httpx.TransportError):
            for state in OPEN_STATES:
                resp = await client.get("/v1/jobs", params={"state": state, "limit": 50})
                if resp.status_code == 200:
                    out += [f"{state}:{j['id'][:8]}" for j in resp.json()]
        return out

    async def _shutdown(self, *, force: bool = False) -> None:
        self._up = dict.fromkeys(self._up, False)
        for proc in (self.agent, self.controller):
            if proc is None:
                continue
            if force:
                await proc.kill()
            else:
                await proc.stop()
        if self.mosquitto is not None:
            await self.mosquitto.stop()


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    return await ChaosRun(config).run()


def report_json(report: ChaosReport) -> str:
    v = report.verdict
    return json.dumps(
        {
            "broker": report.config.broker,
            "seed": report.config.seed,
            "jobs": v.jobs,
            "planned": report.submitted_of or v.jobs,
            "states": dict(v.states),
            "duplicates": v.duplicates,
            "lost": v.lost,
            "kills": dict(report.kills),
            "kills_in_write": report.kills_in_write,
            "jobs_in_writes": len(v.in_write_ids),
            "paper_out_episodes": report.paper_out_episodes,
            "submit_s": round(report.submit_s, 2),
            "drain_s": round(report.drain_s, 2),
            "total_s": round(report.total_s, 2),
            "jobs_per_s": round(report.jobs_per_s, 2),
            "receipts": report.receipts,
            "drained": report.drained,
            "violations": len(v.violations),
            "problems": report.problems,
        },
        sort_keys=True,
    )
