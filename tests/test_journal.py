"""The agent's journal: dedup by job id across restarts, and the unknown rule after a crash."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from device_agent.journal import Journal
from kernel import wire

S = wire.JobState


def job(job_id: str, *, order: int = 1, priority: int = 0, data: bytes = b"receipt\n") -> wire.JobPrint:
    return wire.JobPrint(
        job_id=job_id,
        printer="p1",
        data=base64.b64encode(data).decode(),
        sha256=hashlib.sha256(data).hexdigest(),
        order=order,
        priority=priority,
        submitted_at=1,
        lease_until=10**13,
    )


async def test_job_id_is_remembered_across_restart(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    await j.open()
    rec, new = await j.accept(job("a"), b"receipt\n", now=1)
    assert new and rec.state == S.DELIVERED
    await j.transition("a", S.PRINTING, now=2, ctl_now=2, started=True)
    await j.transition("a", S.PRINTED, now=3, ctl_now=3, copies_done=1)
    await j.close()

    j2 = Journal(tmp_path / "journal.db")
    await j2.open()
    rec2, new2 = await j2.accept(job("a"), b"receipt\n", now=4)
    assert not new2 and rec2.state == S.PRINTED  # answered from the record, not printed again
    report = await j2.report_current("a", now=5, ctl_now=5)
    assert report is not None and report.state == S.PRINTED and report.copies_done == 1
    assert await j2.next_waiting("p1") is None
    await j2.close()


async def test_crash_while_printing_ends_unknown_not_reprinted(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    await j.open()
    await j.accept(job("started"), b"x", now=1)
    await j.accept(job("waiting", order=2), b"y", now=1)
    await j.transition("started", S.PRINTING, now=2, ctl_now=2, started=True)
    await j.close()  # the process dies here, between the first byte and the confirmation

    j2 = Journal(tmp_path / "journal.db")
    await j2.open()
    reports = await j2.recover_after_restart(now=3, ctl_now=3)
    assert [(r.job_id, r.state) for r in reports] == [("started", S.UNKNOWN)]
    nxt = await j2.next_waiting("p1")
    assert nxt is not None and nxt.job_id == "waiting"  # never-started work prints normally
    rec, new = await j2.accept(job("started"), b"x", now=4)
    assert not new and rec.state == S.UNKNOWN
    await j2.close()


async def test_queue_order_is_priority_then_submission(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    await j.open()
    await j.accept(job("late-low", order=3), b"x", now=1)
    await j.accept(job("early-low", order=1), b"x", now=1)
    await j.accept(job("urgent", order=5, priority=10), b"x", now=1)
    order = []
    while (nxt := await j.next_waiting("p1")) is not None:
        order.append(nxt.job_id)
        await j.transition(nxt.job_id, S.PRINTED, now=2, ctl_now=2)
    assert order == ["urgent", "early-low", "late-low"]
    await j.close()


async def test_reports_stay_until_acknowledged_and_payload_is_dropped(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    await j.open()
    await j.accept(job("a"), b"secret receipt", now=1)
    r1 = await j.transition("a", S.DELIVERED, now=1, ctl_now=1)
    r2 = await j.transition("a", S.PRINTED, now=2, ctl_now=2)
    pending = await j.pending_reports()
    assert [r.report_id for r in pending] == [r1.report_id, r2.report_id]
    await j.ack_reports([r1.report_id])
    assert [r.report_id for r in await j.pending_reports()] == [r2.report_id]
    rec = await j.get("a")
    assert rec is not None and rec.payload is not None  # a report is still owed
    await j.ack_reports([r2.report_id])
    rec = await j.get("a")
    assert rec is not None and rec.payload is None and rec.state == S.PRINTED
    await j.close()


async def test_cancel_tombstone_blocks_a_later_delivery(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    await j.open()
    assert await j.tombstone("c", "p1", S.CANCELLED, "cancelled before arrival", now=1)
    rec, new = await j.accept(job("c"), b"x", now=2)
    assert not new and rec.state == S.CANCELLED
    assert await j.next_waiting("p1") is None
    await j.close()
