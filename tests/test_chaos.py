"""Every job prints exactly once: the seeded chaos run (tests/chaos.py) on both brokers, and its checker.

The chaos run SIGKILLs the agent, the controller and the broker at random and takes the printer's
paper out, while a few hundred jobs are submitted; then every job must be terminal and paper must
agree with the job states. The seed comes from ``PRINTFLEET_CHAOS_SEED``::

    PRINTFLEET_CHAOS_SEED=7 .venv/bin/python -m pytest -s -m "slow or full" tests/test_chaos.py

``make test`` runs it small (60 jobs, denser chaos); ``make test-all`` also at the full 200 jobs.

The checker tests below feed :func:`tests.chaos.check` synthetic outcomes that break each rule, so a
chaos run that passes is one in which the rules were actually applied.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest

from device_agent.journal import Journal
from kernel import wire
from tests.chaos import (
    ChaosConfig,
    JobOutcome,
    check,
    journal_in_write,
    marker,
    out_of_order,
    run_chaos,
    seed_from_env,
)
from tests.conftest import BROKERS, require_mosquitto

# -- the checker on synthetic data ---------------------------------------------------------------


def _job(
    seq: int, state: str | None = "printed", *, copies: int = 1, detail: str | None = None
) -> JobOutcome:
    return JobOutcome(
        seq=seq,
        marker=marker(seq, f"{seq:08x}"),
        copies=copies,
        job_id=f"id{seq}",
        state=state,
        detail=detail,
    )


def _paper(*jobs: JobOutcome, times: int = 1) -> str:
    return "\n".join(f"{j.marker}\nchaos job {j.seq}\nline 00 ====" for j in jobs for _ in range(times))


def test_checker_accepts_a_clean_run() -> None:
    jobs = [_job(0), _job(1, copies=2), _job(2, "unknown"), _job(3, "unknown"), _job(4, "failed", detail="x")]
    # job 2 reached paper before the kill, job 3 did not: both are fine as unknown
    paper = _paper(jobs[0]) + "\n" + _paper(jobs[1], times=2) + "\n" + _paper(jobs[2])
    v = check(jobs, paper, in_write_ids={"id2", "id3"})
    assert v.ok, v.violations
    assert (v.duplicates, v.lost, v.states["printed"], v.states["unknown"]) == (0, 0, 2, 2)


def test_checker_catches_a_duplicated_marker() -> None:
    jobs = [_job(0), _job(1)]
    v = check(jobs, _paper(jobs[0]) + "\n" + _paper(jobs[1], times=2), in_write_ids=())
    assert not v.ok and v.duplicates == 1
    assert any("on paper 2 times" in m for m in v.violations)


def test_checker_catches_a_duplicate_inside_one_receipt_and_of_an_unknown_job() -> None:
    jobs = [_job(0, "unknown")]
    # the tail of a job cut by a kill and its reprint can share one receipt: count occurrences
    v = check(jobs, f"{jobs[0].marker} {jobs[0].marker}", in_write_ids={"id0"})
    assert not v.ok and v.duplicates == 1


def test_checker_catches_extra_and_missing_copies() -> None:
    jobs = [_job(0, copies=2), _job(1, copies=2)]
    v = check(jobs, _paper(jobs[0], times=3) + "\n" + _paper(jobs[1], times=1), in_write_ids=())
    assert (v.duplicates, v.lost) == (1, 1)


def test_checker_catches_a_printed_job_missing_from_paper() -> None:
    jobs = [_job(0), _job(1)]
    v = check(jobs, _paper(jobs[0]), in_write_ids=())
    assert not v.ok and v.lost == 1
    assert any("printed but on paper 0 of 1" in m for m in v.violations)


def test_checker_catches_jobs_left_open_or_never_accepted() -> None:
    never = JobOutcome(seq=2, marker=marker(2, "00000002"), copies=1, job_id=None, state=None)
    jobs = [_job(0, "held"), _job(1, "dispatched"), never]
    v = check(jobs, "", in_write_ids=())
    assert v.lost == 3
    assert sum("not terminal" in m for m in v.violations) == 2
    assert any("never accepted" in m for m in v.violations)


def test_checker_catches_an_unexplained_unknown_and_a_silent_reprint() -> None:
    jobs = [_job(0, "unknown"), _job(1)]
    # job 0 ended unknown without a kill inside its write; job 1 was being written at a kill yet
    # ended printed (it was printed again after the crash instead of becoming unknown)
    v = check(jobs, _paper(jobs[1]), in_write_ids={"id1"})
    assert any("no kill landed while it was written" in m for m in v.violations)
    assert any("was being written at a kill but" in m for m in v.violations)


def test_checker_catches_bad_failures_and_unrequested_states() -> None:
    jobs = [_job(0, "failed"), _job(1, "failed", detail="printer error"), _job(2, "cancelled")]
    v = check(jobs, _paper(jobs[1]), in_write_ids=())
    assert any("failed without a reason" in m for m in v.violations)
    assert any("failed but is on paper" in m for m in v.violations)
    assert any("ended cancelled" in m for m in v.violations)


def test_checker_catches_stray_markers_and_shared_ids() -> None:
    a, b = _job(0), _job(1)
    b = JobOutcome(seq=1, marker=b.marker, copies=1, job_id=a.job_id, state="printed")
    v = check([a, b], _paper(a, b) + "\n" + marker(99, "deadbeef"), in_write_ids=())
    assert v.stray_markers == 1
    assert any("share job id" in m for m in v.violations)


def test_out_of_order_counts_jobs_printed_after_a_later_one() -> None:
    a, b, c, d = (_job(i) for i in range(4))
    order = {j.marker: j.seq for j in (a, b, c, d)}
    assert out_of_order(_paper(a, b, c, d), order) == 0
    assert out_of_order(_paper(a, c, b, d), order) == 1
    assert out_of_order(_paper(d, a, b, c), order) == 3
    # a job cut by a kill says nothing about order; a second copy is not a new position
    assert out_of_order(_paper(a, c, b, d), order, skip=[c.marker]) == 0
    assert out_of_order(_paper(a, b, a, c), order) == 0


async def test_journal_reader_sees_a_job_started_but_not_finished(tmp_path: Path) -> None:
    """The harness reads the agent's journal schema directly: keep it honest against the real one."""
    journal = Journal(tmp_path / "journal.db")
    await journal.open()
    try:
        for job_id in ("a" * 32, "b" * 32):
            data = b"hello"
            job = wire.JobPrint(
                job_id=job_id,
                printer="p1",
                data=base64.b64encode(data).decode(),
                sha256=hashlib.sha256(data).hexdigest(),
                submitted_at=wire.now_ms(),
                lease_until=wire.now_ms() + 60_000,
            )
            await journal.accept(job, data, wire.now_ms())
        now = wire.now_ms()
        await journal.transition("a" * 32, wire.JobState.PRINTING, now=now, ctl_now=now, started=True)
        await journal.transition("b" * 32, wire.JobState.PRINTING, now=now, ctl_now=now, started=True)
        await journal.transition("b" * 32, wire.JobState.PRINTED, now=now, ctl_now=now)
        assert journal_in_write(tmp_path / "journal.db") == {"a" * 32}
    finally:
        await journal.close()


# -- the chaos run -------------------------------------------------------------------------------


#: The chaos run of ``make test``: fewer jobs, denser chaos (a kill every 1.5 s on average, each part
#: killed at least once, paper out every 3 s). The full-size run below is in ``make test-all``.
SMALL = {"jobs": 60, "kill_every_s": 1.5, "paper_out_every_s": 3.0, "every_target_first": True}


async def _every_job_prints_exactly_once(config: ChaosConfig) -> None:
    # bounded inside the test's own timeout, so that a hang still stops every process it started
    async with asyncio.timeout(380):
        report = await run_chaos(config)
    print("\n" + report.line())
    details = report.details()
    assert report.ok, details
    assert report.drained, details
    v = report.verdict
    assert v.duplicates == 0 and v.lost == 0, details
    assert v.states["printed"] + v.states["unknown"] + v.states["failed"] == config.jobs, details
    assert v.states["unknown"] <= report.kills_in_write, details
    # the chaos was not vacuous
    assert report.kills["agent"] >= 1 and report.kills["controller"] >= 1, details
    assert report.paper_out_episodes >= 1, details


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("broker", BROKERS)
async def test_chaos_small_every_job_prints_exactly_once(broker: str, tmp_path: Path) -> None:
    if broker == "mosquitto":
        require_mosquitto()
    config = ChaosConfig(workdir=tmp_path / "chaos", broker=broker, seed=seed_from_env(), **SMALL)  # type: ignore[arg-type]
    await _every_job_prints_exactly_once(config)


@pytest.mark.full
@pytest.mark.timeout(420)
@pytest.mark.parametrize("broker", BROKERS)
async def test_chaos_every_job_prints_exactly_once(broker: str, tmp_path: Path) -> None:
    if broker == "mosquitto":
        require_mosquitto()
    config = ChaosConfig(workdir=tmp_path / "chaos", broker=broker, seed=seed_from_env(), jobs=200)  # type: ignore[arg-type]
    await _every_job_prints_exactly_once(config)


# -- regressions: defects the chaos run found ------------------------------------------------------


def test_an_instruction_overtaken_by_a_later_one_is_not_a_replay() -> None:
    """Seen in the chaos runs on the embedded broker: after an agent restart, amqtt delivered the
    messages queued for its session after newer ones, and the replay guard refused them."""
    seq = wire.Sequencer()
    earlier = seq.next()
    later = earlier + 2_000  # what the controller's Sequencer returns 2 ms later
    guard = wire.ReplayGuard()
    assert guard.accept(later)
    assert guard.accept(earlier), "a first delivery, never seen before, was refused as replayed or too old"
    assert not guard.accept(earlier), "a real replay must still be refused"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_chaos_run_fails_when_the_agent_forgets_its_journal(tmp_path: Path) -> None:
    """Sabotage: the agent's journal is deleted at every kill. Jobs it had acknowledged are then
    neither printed nor ended, and the same run's checker must say so."""
    config = ChaosConfig(
        workdir=tmp_path / "chaos",
        broker="embedded",
        seed=5,
        jobs=40,
        weights={"agent": 1.0},
        kill_every_s=2.0,
        chaos_tail_s=3.0,
        drain_timeout_s=20.0,
        wipe_journal_on_kill=True,
    )
    async with asyncio.timeout(260):
        report = await run_chaos(config)
    print("\n" + report.line())
    assert not report.ok, report.details()
    assert report.verdict.lost > 0 or report.verdict.duplicates > 0, report.details()


async def test_a_job_printed_while_its_dispatch_is_recorded_stays_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from cloud import db
    from cloud.jobs import Intake, JobFeed, JobStore, Submission
    from cloud.registry import PrinterInput, Registry

    url = f"sqlite+aiosqlite:///{tmp_path / 'ctl.db'}"
    await asyncio.to_thread(db.migrate, url)
    engine = db.make_engine(url)
    try:
        sessions = db.make_sessionmaker(engine)
        await Registry(sessions).add_device("kiosk-1", PrinterInput(name="kiosk-1", serial_url="loop://"))
        jobs = JobStore(sessions, JobFeed())
        job, _ = await Intake(jobs).submit(Submission(printer="kiosk-1", kind="text", content="hello"))

        # The outbox has published job.print and records the dispatch; the agent is fast and its
        # reports are applied while that record is being written (the order the bench logged).
        read_done, reports_applied = asyncio.Event(), asyncio.Event()
        real_get = AsyncSession.get

        async def get_then_wait(self: AsyncSession, *args: object, **kw: object) -> object:
            found = await real_get(self, *args, **kw)  # type: ignore[arg-type]
            if not read_done.is_set():
                read_done.set()
                await reports_applied.wait()
            return found

        monkeypatch.setattr(AsyncSession, "get", get_then_wait)
        now = wire.now_ms()
        dispatch = asyncio.create_task(
            jobs.mark_dispatched(
                job.id, attempt=1, next_attempt_at=now + 2000, lease_until=now + 60_000, executor="x", at=now
            )
        )
        await asyncio.wait_for(read_done.wait(), 10)
        monkeypatch.setattr(AsyncSession, "get", real_get)
        for state in (wire.JobState.DELIVERED, wire.JobState.PRINTING, wire.JobState.PRINTED):
            assert await jobs.transition(job.id, state, detail=None, source="dev-kiosk-1")
        reports_applied.set()
        await asyncio.wait_for(dispatch, 10)
        assert (await jobs.get(job.id)).state == "printed", "a terminal state changed"
    finally:
        await engine.dispose()
