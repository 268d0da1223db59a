"""The agent's journal: every job it received, every report it owes the controller, its session counter.

A SQLite file with ``synchronous=FULL``: a job is marked ``printing`` durably *before* its first byte
goes to the printer, so after a crash the agent knows which jobs may have printed (they become
``unknown``) and which certainly did not (they print normally). A job id seen once is answered from
the journal forever after (at-most-once printing across redeliveries and restarts).

All calls run on one worker thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kernel import wire

T = TypeVar("T")
S = wire.JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    printer TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    ord INTEGER NOT NULL DEFAULT 0,
    payload BLOB,
    copies INTEGER NOT NULL DEFAULT 1,
    copies_done INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    lease_until INTEGER,
    after TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    received_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    detail TEXT,
    released_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (printer, state, priority, ord);
CREATE TABLE IF NOT EXISTS reports (
    report_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS reports_pending ON reports (acked, created_at);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    args TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    result TEXT,
    received_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    boot_id TEXT,
    expires_at INTEGER,
    timeout_s REAL NOT NULL DEFAULT 60
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    command_id TEXT NOT NULL,
    action TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_u BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_d BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

#: Journal states in which a job waits to be printed.
WAITING = (S.DELIVERED.value, S.HELD.value)


@dataclass(frozen=True, kw_only=True)
class JournalJob:
    job_id: str
    printer: str
    state: wire.JobState
    priority: int
    order: int
    payload: bytes | None
    copies: int
    copies_done: int
    expires_at: int | None
    lease_until: int | None
    attempt: int
    started_at: int | None
    detail: str | None
    after: str | None = None
    received_at: int = 0

    @property
    def started(self) -> bool:
        return self.started_at is not None


def _row_command(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["args"] = json.loads(row["args"])
    out["result"] = json.loads(row["result"]) if row["result"] else None
    out["state"] = wire.CommandState(row["state"])
    return out


def _row_job(row: sqlite3.Row) -> JournalJob:
    return JournalJob(
        job_id=row["job_id"],
        printer=row["printer"],
        state=S(row["state"]),
        priority=row["priority"],
        order=row["ord"],
        payload=row["payload"],
        copies=row["copies"],
        copies_done=row["copies_done"],
        expires_at=row["expires_at"],
        lease_until=row["lease_until"],
        attempt=row["attempt"],
        started_at=row["started_at"],
        detail=row["detail"],
        after=row["after"],
        received_at=row["received_at"],
    )


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._db: sqlite3.Connection | None = None

    # -- plumbing -----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "journal not open"
        return self._db

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
        if "after" not in columns:  # journals written before the ordering gate existed
            db.execute("ALTER TABLE jobs ADD COLUMN after TEXT")
        if "released_at" not in columns:  # journals written before claims existed
            db.execute("ALTER TABLE jobs ADD COLUMN released_at INTEGER")
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- key/value ----------------------------------------------------------------------------

    async def next_counter(self, key: str) -> int:
        def run() -> int:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
                value = (int(row["value"]) if row else 0) + 1
                db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, str(value)))
            return value

        return await self._run(run)

    async def next_session(self) -> int:
        """The next MQTT session number: above every earlier one, even if this journal was lost.

        It is at least the wall clock in milliseconds, so a host whose journal was wiped (or
        re-flashed) still announces a session newer than any the controller has seen.
        """

        def run() -> int:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT value FROM kv WHERE key='session'").fetchone()
                value = max((int(row["value"]) if row else 0) + 1, wire.now_ms())
                db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('session', ?)", (str(value),))
            return value

        return await self._run(run)

    async def get_kv(self, key: str) -> str | None:
        def run() -> str | None:
            row = self._conn().execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row["value"])

        return await self._run(run)

    async def set_kv(self, key: str, value: str) -> None:
        def run() -> None:
            self._conn().execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

        await self._run(run)

    # -- jobs ---------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JournalJob | None:
        def run() -> JournalJob | None:
            row = self._conn().execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            return None if row is None else _row_job(row)

        return await self._run(run)

    async def accept(self, job: wire.JobPrint, payload: bytes, now: int) -> tuple[JournalJob, bool]:
        """Record a received job (state delivered) unless its id is known; return (job, is_new)."""

        def run() -> tuple[JournalJob, bool]:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT * FROM jobs WHERE job_id=?", (job.job_id,)).fetchone()
                if row is not None:
                    existing = _row_job(row)
                    if row["released_at"] is not None and existing.state.value in WAITING:
                        # the controller routed it back here after taking it away: wait for it again
                        db.execute(
                            "UPDATE jobs SET released_at=NULL, lease_until=?, attempt=max(attempt, ?)"
                            " WHERE job_id=?",
                            (job.lease_until, job.attempt, job.job_id),
                        )
                        return _row_job(
                            db.execute("SELECT * FROM jobs WHERE job_id=?", (job.job_id,)).fetchone()
                        ), False
                    if existing.state.value in WAITING and not existing.started and job.lease_until:
                        db.execute(
                            "UPDATE jobs SET lease_until=max(coalesce(lease_until,0), ?) WHERE job_id=?",
                            (job.lease_until, job.job_id),
                        )
                    return existing, False
                db.execute(
                    "INSERT INTO jobs (job_id, printer, state, priority, ord, payload, copies, expires_at,"
                    " lease_until, attempt, received_at, after) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job.job_id,
                        job.printer,
                        S.DELIVERED.value,
                        job.priority,
                        job.order,
                        payload,
                        job.copies,
                        job.expires_at,
                        job.lease_until,
                        job.attempt,
                        now,
                        job.after,
                    ),
                )
                new = db.execute("SELECT * FROM jobs WHERE job_id=?", (job.job_id,)).fetchone()
                return _row_job(new), True

        return await self._run(run)

    async def release(self, job_id: str, now: int, reason: str) -> bool:
        """The controller refused this agent's claim (the job went to another executor): keep the id,
        never print it unless the controller sends it here again."""

        def run() -> bool:
            cur = self._conn().execute(
                "UPDATE jobs SET released_at=?, detail=? WHERE job_id=? AND started_at IS NULL"
                " AND released_at IS NULL",
                (now, f"released: {reason}"[:500], job_id),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def tombstone(self, job_id: str, printer: str, state: wire.JobState, detail: str, now: int) -> bool:
        """Record a job id the agent must never print (cancelled or refused before it arrived)."""

        def run() -> bool:
            cur = self._conn().execute(
                "INSERT OR IGNORE INTO jobs (job_id, printer, state, received_at, finished_at, detail)"
                " VALUES (?,?,?,?,?,?)",
                (job_id, printer, state.value, now, now, detail),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def next_waiting(self, printer: str, *, now: int | None = None) -> JournalJob | None:
        """The next job to print on a printer: highest priority first, then submission order.

        A job whose predecessor (``after``) has not reached this journal yet waits for it, up to
        ``wire.AFTER_GATE_MS``: redelivery after a reconnect can bring jobs out of order.
        """
        now = wire.now_ms() if now is None else now

        def run() -> JournalJob | None:
            db = self._conn()
            rows = db.execute(
                "SELECT * FROM jobs WHERE printer=? AND state IN (?, ?) AND started_at IS NULL"
                " AND released_at IS NULL ORDER BY priority DESC, ord ASC LIMIT 1",
                (printer, *WAITING),
            ).fetchall()
            if not rows:
                return None
            job = _row_job(rows[0])  # only the head may print: everything behind it keeps its place
            if job.after is None or now - job.received_at > wire.AFTER_GATE_MS:
                return job
            if db.execute("SELECT 1 FROM jobs WHERE job_id=?", (job.after,)).fetchone() is not None:
                return job
            return None

        return await self._run(run)

    async def waiting_printers(self) -> list[str]:
        def run() -> list[str]:
            rows = self._conn().execute(
                "SELECT DISTINCT printer FROM jobs WHERE state IN (?, ?) AND started_at IS NULL"
                " AND released_at IS NULL",
                WAITING,
            )
            return [r["printer"] for r in rows]

        return await self._run(run)

    async def transition(
        self,
        job_id: str,
        state: wire.JobState,
        *,
        now: int,
        ctl_now: int,
        detail: str | None = None,
        copies_done: int | None = None,
        started: bool = False,
        printer: str | None = None,
        attempt: int = 1,
    ) -> wire.JobReport:
        """Change a job's state and queue the report to the controller, atomically and durably."""
        report = wire.JobReport(
            report_id=uuid.uuid4().hex,
            job_id=job_id,
            printer=printer or "unknown",
            state=state,
            detail=detail,
            copies_done=copies_done or 0,
            attempt=attempt,
            at=ctl_now,
        )

        def run() -> wire.JobReport:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                current = _row_job(row)
                sets = ["state=?", "detail=?"]
                args: list[Any] = [state.value, detail]
                if copies_done is not None:
                    sets.append("copies_done=?")
                    args.append(copies_done)
                if started and current.started_at is None:
                    sets.append("started_at=?")
                    args.append(now)
                if state.terminal:
                    sets.append("finished_at=?")
                    args.append(now)
                db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE job_id=?", (*args, job_id))
                full = report.model_copy(
                    update={
                        "printer": current.printer,
                        "copies_done": current.copies_done if copies_done is None else copies_done,
                        "attempt": current.attempt,
                    }
                )
                db.execute(
                    "INSERT INTO reports (report_id, job_id, body, created_at) VALUES (?,?,?,?)",
                    (full.report_id, job_id, full.model_dump_json(), now),
                )
                return full

        return await self._run(run)

    async def report_current(self, job_id: str, *, now: int, ctl_now: int) -> wire.JobReport | None:
        """Queue a fresh report of a job's recorded state (answer to a redelivered message)."""
        job = await self.get(job_id)
        if job is None:
            return None
        return await self.transition(
            job_id, job.state, now=now, ctl_now=ctl_now, detail=job.detail, copies_done=job.copies_done
        )

    async def recover_after_restart(self, *, now: int, ctl_now: int) -> list[wire.JobReport]:
        """Jobs whose bytes may have reached the printer before a crash end ``unknown``; never reprinted."""

        def run() -> list[str]:
            rows = self._conn().execute(
                "SELECT job_id FROM jobs WHERE started_at IS NOT NULL AND finished_at IS NULL"
            )
            return [r["job_id"] for r in rows]

        reports = []
        for job_id in await self._run(run):
            job = await self.get(job_id)
            assert job is not None
            detail = (
                f"the agent stopped while printing copy {job.copies_done + 1} of {job.copies};"
                " it may or may not have printed"
            )
            reports.append(await self.transition(job_id, S.UNKNOWN, now=now, ctl_now=ctl_now, detail=detail))
        return reports

    async def drop_payload(self, job_id: str) -> None:
        def run() -> None:
            self._conn().execute("UPDATE jobs SET payload=NULL WHERE job_id=?", (job_id,))

        await self._run(run)

    # -- maintenance commands -----------------------------------------------------------------

    async def command(self, command_id: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            row = self._conn().execute("SELECT * FROM commands WHERE command_id=?", (command_id,)).fetchone()
            return None if row is None else _row_command(row)

        return await self._run(run)

    async def accept_command(self, cmd: wire.CommandRun, now: int) -> tuple[dict[str, Any], bool]:
        """Journal a command id once; (record, is_new). A known id is answered from its record."""

        def run() -> tuple[dict[str, Any], bool]:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT * FROM commands WHERE command_id=?", (cmd.command_id,)).fetchone()
                if row is not None:
                    return _row_command(row), False
                db.execute(
                    "INSERT INTO commands (command_id, action, args, requested_by, state, received_at,"
                    " expires_at, timeout_s) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        cmd.command_id,
                        cmd.action,
                        json.dumps(cmd.args),
                        cmd.requested_by,
                        wire.CommandState.DELIVERED.value,
                        now,
                        cmd.expires_at,
                        cmd.timeout_s,
                    ),
                )
                new = db.execute("SELECT * FROM commands WHERE command_id=?", (cmd.command_id,)).fetchone()
                return _row_command(new), True

        return await self._run(run)

    async def command_transition(
        self,
        command_id: str,
        state: wire.CommandState,
        *,
        now: int,
        ctl_now: int,
        detail: str | None = None,
        result: dict[str, Any] | None = None,
        boot_id: str | None = None,
    ) -> wire.CommandReport:
        """Record a command's state (and, when it ends, an audit line) and queue its report."""
        report = wire.CommandReport(
            report_id=uuid.uuid4().hex,
            command_id=command_id,
            state=state,
            detail=detail,
            result=result or {},
            at=ctl_now,
        )

        def run() -> wire.CommandReport:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT * FROM commands WHERE command_id=?", (command_id,)).fetchone()
                if row is None:
                    raise KeyError(command_id)
                sets = ["state=?", "detail=?"]
                args: list[Any] = [state.value, detail]
                if result is not None:
                    sets.append("result=?")
                    args.append(json.dumps(result))
                if state is wire.CommandState.IN_PROGRESS:
                    sets += ["started_at=?", "boot_id=?"]
                    args += [now, boot_id]
                if state.terminal:
                    sets.append("finished_at=?")
                    args.append(now)
                    db.execute(
                        "INSERT INTO audit (at, command_id, action, requested_by, outcome, detail)"
                        " VALUES (?,?,?,?,?,?)",
                        (now, command_id, row["action"], row["requested_by"], state.value, detail),
                    )
                db.execute(f"UPDATE commands SET {', '.join(sets)} WHERE command_id=?", (*args, command_id))
                db.execute(
                    "INSERT INTO reports (report_id, job_id, body, created_at) VALUES (?,?,?,?)",
                    (report.report_id, "cmd:" + command_id, report.model_dump_json(), now),
                )
                return report

        return await self._run(run)

    async def commands_in(self, states: Sequence[wire.CommandState]) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            marks = ",".join("?" for _ in states)
            rows = self._conn().execute(
                f"SELECT * FROM commands WHERE state IN ({marks}) ORDER BY received_at",
                [s.value for s in states],
            )
            return [_row_command(r) for r in rows]

        return await self._run(run)

    async def audit_tail(self, limit: int = 20) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            rows = self._conn().execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
            return [dict(r) for r in rows]

        return await self._run(run)

    # -- reports ------------------------------------------------------------------------------

    async def pending_reports(self, limit: int = 200) -> Sequence[wire.JobReport | wire.CommandReport]:
        def run() -> list[wire.JobReport | wire.CommandReport]:
            rows = self._conn().execute(
                "SELECT job_id, body FROM reports WHERE acked=0 ORDER BY created_at, rowid LIMIT ?", (limit,)
            )
            return [
                wire.CommandReport.model_validate_json(r["body"])
                if r["job_id"].startswith("cmd:")
                else wire.JobReport.model_validate_json(r["body"])
                for r in rows
            ]

        return await self._run(run)

    async def pending_report_count(self) -> int:
        def run() -> int:
            return int(self._conn().execute("SELECT count(*) FROM reports WHERE acked=0").fetchone()[0])

        return await self._run(run)

    async def ack_reports(self, report_ids: Sequence[str]) -> None:
        def run() -> None:
            db = self._conn()
            with db:
                db.executemany("UPDATE reports SET acked=1 WHERE report_id=?", [(r,) for r in report_ids])
                # a terminal job whose every report is acknowledged no longer needs its payload
                db.execute(
                    "UPDATE jobs SET payload=NULL WHERE finished_at IS NOT NULL AND payload IS NOT NULL"
                    " AND job_id NOT IN (SELECT job_id FROM reports WHERE acked=0)"
                )

        await self._run(run)

    async def jobs_in_state(self, state: wire.JobState) -> list[JournalJob]:
        def run() -> list[JournalJob]:
            rows = self._conn().execute("SELECT * FROM jobs WHERE state=?", (state.value,))
            return [_row_job(r) for r in rows]

        return await self._run(run)
