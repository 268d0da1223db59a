"""The job store is the one writer of job state: each change one compare-and-set through the state
machine, with one event; routing asks it for every change (real SQLite, no fleet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud import db
from cloud.bridges import Bridges, PrinterBle
from cloud.commands import COMMAND_TRANSITIONS, CommandStore
from cloud.jobs import TRANSITIONS, Cause, Change, Intake, JobFeed, JobStore, Refused, Submission, allowed
from cloud.jobs.routing import Router, RoutingConfig
from cloud.models import Job
from cloud.presence import Presence
from cloud.registry import PrinterInput, Registry
from kernel import wire

S = wire.JobState
C = wire.CommandState


# -- the transitions, as data ------------------------------------------------------------------


def test_release_is_allowed_only_for_a_job_offered_and_not_yet_printing() -> None:
    sources = {cur for (cur, new), causes in TRANSITIONS.items() if Cause.RELEASE in causes}
    assert sources == {S.DISPATCHED, S.DELIVERED}
    assert all(new == S.DISPATCHED for (_, new), causes in TRANSITIONS.items() if Cause.RELEASE in causes)
    for state in (S.QUEUED, S.PRINTING, S.HELD, *wire.TERMINAL_JOB_STATES):
        assert not allowed(state, S.DISPATCHED, Cause.RELEASE)
    # a report can never do what only a release may
    assert not allowed(S.DELIVERED, S.DISPATCHED)


def test_reroute_starts_no_earlier_than_dispatch_and_never_from_printing_or_the_end() -> None:
    sources = {cur for (cur, _), causes in TRANSITIONS.items() if Cause.REROUTE in causes}
    assert sources == {S.QUEUED, S.DISPATCHED, S.DELIVERED, S.HELD}
    assert not allowed(S.PRINTING, S.DISPATCHED, Cause.REROUTE)


def test_every_backward_move_has_a_cause_other_than_progress() -> None:
    from cloud.jobs.states import RANK

    for (cur, new), causes in TRANSITIONS.items():
        assert not cur.terminal
        if RANK[new] <= RANK[cur] and {cur, new} != {S.PRINTING, S.HELD}:
            assert Cause.PROGRESS not in causes, (cur, new)


def test_command_transitions_only_move_forward_but_a_late_result_closes_a_timeout() -> None:
    assert (C.TIMED_OUT, C.SUCCEEDED) in COMMAND_TRANSITIONS
    assert (C.TIMED_OUT, C.CANCELLED) not in COMMAND_TRANSITIONS
    assert (C.SENT, C.QUEUED) not in COMMAND_TRANSITIONS
    assert not any(cur.terminal and cur is not C.TIMED_OUT for cur, _ in COMMAND_TRANSITIONS)


# -- a real store --------------------------------------------------------------------------------


@dataclass
class Stores:
    sessions: Any
    registry: Registry
    jobs: JobStore
    intake: Intake
    commands: CommandStore
    presence: Presence
    bridges: Bridges


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    url = db.sqlite_url(tmp_path / "ctl.db")
    await asyncio.to_thread(db.migrate, url)
    engine = db.make_engine(url)
    try:
        sessions = db.make_sessionmaker(engine)
        registry = Registry(sessions)
        await registry.add_device("kiosk-1", PrinterInput(name="kiosk-1", serial_url="loop://"))
        jobs = JobStore(sessions, JobFeed())
        yield Stores(
            sessions=sessions,
            registry=registry,
            jobs=jobs,
            intake=Intake(jobs),
            commands=CommandStore(sessions),
            presence=Presence(sessions, heartbeat_timeout_s=30),
            bridges=Bridges(sessions),
        )
    finally:
        await engine.dispose()


async def _job(st: Stores, text: str = "hello") -> Job:
    job, created = await st.intake.submit(Submission(printer="kiosk-1", kind="text", content=text))
    assert created
    return job


async def test_two_tasks_racing_the_same_transition_make_one_winner(stores: Stores) -> None:
    """Both read ``dispatched``; each asks for a different end. One write lands, the other is judged
    again on the winner's row and refused: one terminal state, one event, one publication."""
    jobs = [await _job(stores, f"job {i}") for i in range(20)]
    for job in jobs:
        assert await stores.jobs.transition(job.id, S.DISPATCHED, detail=None, source="controller")
    judged: list[tuple[str, str]] = []

    def ending(state: wire.JobState) -> Any:
        def judge(row: Job) -> Change | Refused:
            judged.append((row.id, row.state))
            return Change(state=state, detail=f"ended {state}", source="test")

        return judge

    async with stores.jobs.feed.subscribe() as feed:
        results = await asyncio.gather(
            *(stores.jobs.apply(job.id, ending(end)) for job in jobs for end in (S.PRINTED, S.FAILED))
        )
        published = [feed.get_nowait() for _ in range(feed.qsize())]
    for i, job in enumerate(jobs):
        pair = results[2 * i : 2 * i + 2]
        assert sum(isinstance(r, Change) for r in pair) == 1, pair
        stored = await stores.jobs.get(job.id)
        winner = next(r for r in pair if isinstance(r, Change))
        assert stored.state == winner.state
        terminal_events = [e for e in stored.events if S(e.state).terminal]
        assert len(terminal_events) == 1
        assert [p["state"] for p in published if p["job"] == job.id] == [stored.state]
    # the races happened: in some, both racers read ``dispatched`` before either wrote; the loser's
    # write found the row changed and was judged again on the winner's (terminal) row
    stale = [job.id for job in jobs if judged.count((job.id, "dispatched")) == 2]
    assert stale
    for job_id in stale:
        assert [state for jid, state in judged if jid == job_id][2] in ("printed", "failed")


async def test_a_command_transition_is_a_compare_and_set(stores: Stores) -> None:
    [cmd] = await stores.commands.create(
        ["kiosk-1"], "reboot", {}, requested_by="t", expires_s=60, timeout_s=5
    )
    results = await asyncio.gather(
        stores.commands.transition(cmd.id, C.CANCELLED, detail="cancel", source="api"),
        stores.commands.transition(cmd.id, C.EXPIRED, detail="expired", source="controller"),
        stores.commands.transition(cmd.id, C.SUCCEEDED, detail="done", source="dev-kiosk-1"),
    )
    assert sum(results) == 1
    stored = await stores.commands.get(cmd.id)
    assert sum(1 for e in stored.events if C(e.state).terminal) == 1


async def test_routing_changes_a_job_only_through_the_store(stores: Stores) -> None:
    """The degraded path end to end at the store: offer to a bridge, connect, lapse, release, the next
    bridge, a failure after a grant, a refused release once printing. After every step the job's
    state is the last event of its history and the last thing the feed published: no state
    changed without the store recording it."""
    st = stores
    await st.bridges.set_printer_ble("kiosk-1", PrinterBle(ble_name="PF-kiosk-1"))
    for name in ("phone-1", "phone-2"):
        await st.bridges.add(name, ["kiosk-1"])
        await st.presence.on_birth(
            name,
            wire.Birth(session=1, boot_id="b1", version="t", started_at=wire.now_ms()),
        )
    router = Router(st.jobs, RoutingConfig(offer_s=30))
    job = await _job(st)
    seen: list[str] = []

    async def check() -> Job:
        while not feed.empty():
            event = feed.get_nowait()
            if event["job"] == job.id:
                seen.append(event["state"])
        stored = await st.jobs.get(job.id)
        assert stored.state == stored.events[-1].state == seen[-1]
        return stored

    async with st.jobs.feed.subscribe() as feed:
        now = wire.now_ms()
        [offer] = await router.plan(now)  # the host is offline: rerouted
        assert offer.bridge in ("phone-1", "phone-2")
        first = await check()
        assert (first.state, first.route) == ("dispatched", "bridge")

        ready = wire.BridgeReady(offer_id=offer.offer_id, job_id=job.id, identity="unverified")
        handed, why = await router.bridge_ready(offer.bridge, ready, now)
        assert handed is not None and why is None
        assert (await check()).state == "delivered"

        await router.lapsed(now + 31_000, {"phone-1", "phone-2"})  # never claimed: released
        back = await check()
        assert (back.state, back.route, back.executor) == ("dispatched", "agent", "dev-kiosk-1")

        [second] = await router.plan(wire.now_ms())
        assert second.bridge != offer.bridge
        await check()
        bridge = wire.Peer(role=wire.Role.BRIDGE, name=second.bridge).client_id
        claim = await router.claim(job.id, bridge, wire.now_ms())
        assert claim.granted
        failed = wire.BridgeFailed(offer_id=second.offer_id, job_id=job.id, reason="no BLE")
        assert await router.bridge_failed(second.bridge, failed, wire.now_ms())
        assert (await check()).route == "agent"

        assert await router.plan(wire.now_ms()) == []  # both bridges tried: none left
    assert seen == ["dispatched", "delivered", "dispatched", "dispatched", "dispatched"]


async def test_a_job_its_bridge_started_printing_is_never_released(stores: Stores) -> None:
    st = stores
    await st.bridges.set_printer_ble("kiosk-1", PrinterBle(ble_name="PF-kiosk-1"))
    await st.bridges.add("phone-1", ["kiosk-1"])
    await st.presence.on_birth("phone-1", wire.Birth(session=1, boot_id="b1", version="t", started_at=1))
    router = Router(st.jobs, RoutingConfig())
    job = await _job(st)
    [offer] = await router.plan(wire.now_ms())
    executor = wire.Peer(role=wire.Role.BRIDGE, name="phone-1").client_id
    assert (await router.claim(job.id, executor, wire.now_ms())).granted
    assert await st.jobs.transition(job.id, S.PRINTING, detail=None, source=executor)
    failed = wire.BridgeFailed(offer_id=offer.offer_id, job_id=job.id, reason="late excuse")
    assert not await router.bridge_failed("phone-1", failed, wire.now_ms())
    assert not await router.release(job.id, offer.offer_id, "operator", wire.now_ms(), undo_claim=True)
    stored = await st.jobs.get(job.id)
    assert (stored.state, stored.route, stored.executor) == ("printing", "bridge", executor)
