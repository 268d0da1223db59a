"""Phased rollouts: the engine's rules on a real database, and a rollout over 50 real agents in one
process of which 10 % cannot install the update."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud import db
from cloud.commands import CommandStore
from cloud.errors import ControllerError
from cloud.rollouts import Rollouts, RolloutState, failures_allowed
from device_agent.update import versions_dir
from kernel import __version__, wire
from tests.fleet import Fleet
from tests.inproc import host_state_dir, in_process_hosts
from tests.wheels import sha256_of, tiny_wheel

C = wire.CommandState
#: Devices started per minute in the 50-agent rollout: one every 200 ms.
RATE = 300
#: The hosts that cannot install (10 %). The third one is the 13th device started: the abort must
#: land before the 50th starts, so a failure's round trip (command, download, refusal, report) has
#: 37 starts (7.4 s) to come back, which holds on a loaded 2-core machine.
BAD = (2, 7, 12, 30, 44)


async def _wait_done(api: httpx.AsyncClient, rollout_id: str, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    view: dict[str, Any] = (await api.get(f"/v1/rollouts/{rollout_id}")).json()
    while not view["done"]:
        assert loop.time() < deadline, f"rollout not done within {timeout} s: {view['counts']}"
        resp = await api.get(
            f"/v1/rollouts/{rollout_id}/wait", params={"known": view["progress"], "timeout": 10}, timeout=20
        )
        view = resp.json()
    return view


@pytest.mark.slow  # about 20 s: fifty agents registered, updated, restarted and resumed in one process
async def test_a_rollout_over_50_agents_aborts_at_the_threshold_and_names_the_failures(
    embedded_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = embedded_fleet
    names = [f"h{i:02d}" for i in range(50)]
    bad = [names[i] for i in BAD]  # 10 %: a file sits where their installs belong
    for name in bad:
        host_state_dir(fleet, name).mkdir(parents=True)
        versions_dir(host_state_dir(fleet, name)).write_text("not a directory")
    wheel = tiny_wheel(tmp_path, "0.2.0")
    sha = sha256_of(wheel)
    headers = {"Authorization": f"Bearer {fleet.svc.admin_token}"}
    async with (
        httpx.AsyncClient(base_url=fleet.http, headers=headers, timeout=30) as api,
        in_process_hosts(fleet, api, names, tags=("fleet",)) as hosts,
    ):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while sum(d["online"] for d in (await api.get("/v1/devices")).json()) < 50:
            assert loop.time() < deadline, "the 50 agents did not come online"
            await asyncio.sleep(0.2)  # observer polling, bounded
        upload = await api.put(f"/v1/packages/{sha}", content=wheel.read_bytes())
        assert upload.status_code == 201 and upload.json()["version"] == "0.2.0"

        started = time.monotonic()
        resp = await api.post(
            "/v1/updates",
            json={
                "target": "tag:fleet",
                "sha256": sha,
                "rate_per_min": RATE,
                "abort_above": 5,  # 2 failures of 50 are tolerated; the 3rd aborts
                "health_s": 30,
                "timeout": 60,
            },
        )
        assert resp.status_code == 201, resp.text
        rollout = resp.json()["rollout"]
        assert rollout["state"] == "running" and rollout["total"] == 50 and rollout["failures_allowed"] == 2
        view = await _wait_done(api, rollout["id"], timeout=90)
        took = time.monotonic() - started

        assert view["state"] == "aborted"
        by_state: dict[str, list[dict[str, Any]]] = {}
        for d in view["devices"]:
            by_state.setdefault(d["state"], []).append(d)
        failed = [d["device"] for d in by_state["failed"]]
        assert failed[:3] == bad[:3] and set(failed) <= set(bad)
        # aborted at the threshold: as soon as the third failure (the first over 5 %) was recorded; the
        # report names the hosts that had failed by then (one landing in the same instant counts too)
        commands = (await api.get("/v1/commands", params={"rollout": rollout["id"], "limit": 100})).json()
        aborted_at = view["finished_at"]
        third = sorted(c["finished_at"] for c in commands if c["state"] == "failed")[2]
        assert third <= aborted_at < third + 3000, (third, aborted_at)
        by_then = sorted(
            c["device"] for c in commands if c["state"] == "failed" and c["finished_at"] <= aborted_at
        )
        assert by_then[:3] == bad[:3]
        assert view["detail"].startswith(
            f"aborted: {len(by_then)} of 50 devices failed ({2 * len(by_then)}.0 %, over the 5 % threshold):"
            f" {', '.join(by_then)};"
        ), view["detail"]
        assert all(c["created_at"] <= view["finished_at"] for c in commands)  # nothing started after
        for d in by_state["failed"]:
            assert d["detail"].startswith("install failed: cannot store the package"), d
            assert d["old_version"] == __version__ and d["new_version"] is None  # nothing was installed
        succeeded = by_state["succeeded"]
        assert succeeded
        assert all(d["old_version"] == __version__ and d["new_version"] == "0.2.0" for d in succeeded)
        skipped = [d["device"] for d in by_state["skipped"]]
        assert "h49" in skipped
        # devices were started in the rollout's order, and the rest were skipped
        assert sorted(c["device"] for c in commands) == names[: len(commands)]
        sent = [
            c for c in commands if c["state"] != "cancelled"
        ]  # cancelled: queued, never sent, at the abort
        assert len(sent) + len(skipped) == 50 and view["counts"]["running"] == 0
        # what runs is what the rollout says: the registry agrees (once each new agent's birth,
        # sent before its report but on another topic, has been handled too)
        deadline = loop.time() + 10
        while True:
            devices = {d["name"]: d["agent_version"] for d in (await api.get("/v1/devices")).json()}
            if all(devices[d["device"]] == "0.2.0" for d in succeeded) or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)  # observer polling, bounded
        assert all(devices[d["device"]] == "0.2.0" for d in succeeded), devices
        assert all(devices[name] == __version__ for name in skipped + failed), (
            {name: devices[name] for name in skipped + failed},
            {c["device"]: c["state"] for c in commands},
        )
        hosts_by_name = {h.name: h for h in hosts}
        assert hosts_by_name["h00"].started == [__version__, "0.2.0"]  # restarted once, into 0.2.0
        assert hosts_by_name[bad[0]].started == [__version__]  # never restarted
        print(
            f"\n[rollout] 50 agents, {RATE}/min, abort above 5 %: aborted after {len(commands)} starts"
            f" ({len(succeeded)} updated, {len(failed)} failed, {len(skipped)} skipped) in {took:.1f} s;"
            f" abort {aborted_at - third} ms after the third failure was recorded"
        )

        # the report, as an operator reads it
        shown = await fleet.cli("cmd", "rollout", "show", rollout["id"])
        assert f"rollout {rollout['id']} aborted" in shown.stdout
        assert (
            bad[0] in shown.stdout and f"{__version__} -> 0.2.0" in shown.stdout and "skipped" in shown.stdout
        )

        # resumed: the skipped devices are started; the earlier failures no longer count
        started = time.monotonic()
        resumed = await fleet.cli(
            "cmd", "rollout", "resume", rollout["id"], "--json", check=False, timeout=90
        )
        final = resumed.json()
        assert resumed.code == 1  # it completed, with failures
        assert final["state"] == "completed", final["detail"]
        assert final["counts"] == {"pending": 0, "running": 0, "succeeded": 45, "failed": 5, "skipped": 0}
        assert sorted(d["device"] for d in final["devices"] if d["state"] == "failed") == bad
        print(f"[rollout] resumed: {len(skipped)} skipped devices done in {time.monotonic() - started:.1f} s")
        listed = (await fleet.cli("cmd", "rollout", "list", "--json")).json()
        assert [r["id"] for r in listed] == [rollout["id"]] and "devices" not in listed[0]


# -- the engine's rules, step by step on a real database -------------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> Any:
    url = db.sqlite_url(tmp_path / "c.db")
    await asyncio.to_thread(db.migrate, url)
    eng = db.make_engine(url)
    commands = CommandStore(db.make_sessionmaker(eng))
    woken: list[int] = []
    rollouts = Rollouts(
        db.make_sessionmaker(eng),
        commands,
        command_args=lambda spec, until: {**spec, "until": until},
        wake_outbox=lambda: woken.append(1),
    )
    yield rollouts, commands, eng
    await eng.dispose()


async def _create(rollouts: Rollouts, n: int, *, rate: float, abort_above: float) -> str:
    rollout = await rollouts.create(
        devices=[f"d{i}" for i in range(n)],
        action="update",
        args={"sha256": "a" * 64},
        target="tag:t",
        rate_per_min=rate,
        abort_above_pct=abort_above,
        requested_by="api:test",
        expires_s=3600,
        timeout_s=600,
    )
    return rollout.id


async def _by_device(commands: CommandStore, rollout_id: str) -> dict[str, Any]:
    """Each device's command in the rollout (after a resume: the one that replaced a cancelled one)."""
    out: dict[str, Any] = {}
    for cmd in await commands.list(rollout=rollout_id):
        if cmd.device_name not in out or out[cmd.device_name].state == C.CANCELLED.value:
            out[cmd.device_name] = cmd
    return out


async def test_devices_start_at_the_rate_and_the_rollout_completes(engine: Any) -> None:
    rollouts, commands, _ = engine
    rid = await _create(rollouts, 3, rate=60, abort_above=0)  # one a second
    t0 = (await rollouts.get(rid)).next_start_at
    assert await rollouts.step(t0) == pytest.approx(1.0)
    assert set(await _by_device(commands, rid)) == {"d0"}
    await rollouts.step(t0 + 999)
    assert set(await _by_device(commands, rid)) == {"d0"}  # not yet
    await rollouts.step(t0 + 1000)
    await rollouts.step(t0 + 1500)
    await rollouts.step(t0 + 2000)
    cmds = await _by_device(commands, rid)
    assert set(cmds) == {"d0", "d1", "d2"} and cmds["d0"].args["until"] > t0
    for cmd in cmds.values():
        await commands.transition(cmd.id, C.SUCCEEDED, detail=None, source="t", result={"new_version": "2"})
    await rollouts.step(t0 + 2100)
    view = await rollouts.view(rid)
    assert view["state"] == "completed" and view["done"] and view["detail"] == "3 succeeded"


async def test_after_a_stall_the_rate_does_not_burst(engine: Any) -> None:
    rollouts, commands, _ = engine
    rid = await _create(rollouts, 5, rate=60, abort_above=100)
    t0 = (await rollouts.get(rid)).next_start_at
    await rollouts.step(t0)
    await rollouts.step(t0 + 3_600_000)  # the controller was down for an hour
    await rollouts.step(t0 + 3_600_001)
    assert set(await _by_device(commands, rid)) == {"d0", "d1"}  # one more, not a catch-up burst


async def test_abort_cancels_unsent_commands_skips_the_rest_and_resume_continues(engine: Any) -> None:
    rollouts, commands, _ = engine
    rid = await _create(rollouts, 10, rate=6000, abort_above=10)  # 1 failure of 10 tolerated
    now = (await rollouts.get(rid)).next_start_at
    for i in range(4):
        await rollouts.step(now + i * 10)
    cmds = await _by_device(commands, rid)
    assert set(cmds) == {"d0", "d1", "d2", "d3"}
    await commands.mark_sent(cmds["d0"].id, attempt=1, next_attempt_at=now)
    await commands.transition(cmds["d0"].id, C.FAILED, detail="install failed: x", source="t")
    await rollouts.step(now + 40)
    assert (await rollouts.get(rid)).state == "running"  # one failure is within the threshold
    await commands.transition(cmds["d1"].id, C.REJECTED, detail="bad", source="t")
    await rollouts.step(now + 50)
    view = await rollouts.view(rid)
    assert view["state"] == "aborted"
    assert view["detail"] == (
        "aborted: 2 of 10 devices failed (20.0 %, over the 10 % threshold): d0, d1; 5 not started"
    )
    states = {d["device"]: d["state"] for d in view["devices"]}
    assert states == {
        "d0": "failed", "d1": "failed", "d2": "skipped", "d3": "skipped", "d4": "skipped",
        **{f"d{i}": "skipped" for i in range(5, 10)},
    }  # fmt: skip
    assert (await commands.get(cmds["d2"].id)).state == "cancelled"  # queued, never sent: cancelled
    await rollouts.step(now + 10_000)
    started = {"d0", "d1", "d2", "d3", "d4"}  # d4 was started at +40 ms, before the second failure
    assert set(await _by_device(commands, rid)) == started  # and nothing after the abort

    running = await _create(rollouts, 1, rate=60, abort_above=0)
    with pytest.raises(ControllerError, match="only an aborted rollout can be resumed"):
        await rollouts.resume(running)
    resumed = await rollouts.resume(rid)
    assert resumed.state == RolloutState.RUNNING and resumed.failure_base == 2
    t1 = resumed.next_start_at
    assert t1 is not None
    for i in range(8):
        await rollouts.step(t1 + i * 10)
    latest = await _by_device(commands, rid)
    assert set(latest) == {f"d{i}" for i in range(10)}
    assert latest["d2"].state == "queued" and latest["d0"].state == "failed"  # failures are not retried


def test_failures_allowed() -> None:
    assert [failures_allowed(50, p) for p in (0, 5, 10, 100)] == [0, 2, 5, 50]
    assert failures_allowed(10, 10) == 1 and failures_allowed(3, 50) == 1


async def test_a_rollout_carries_on_after_a_controller_restart(engine: Any) -> None:
    """Everything a rollout needs is stored: a new engine on the same database (a restarted
    controller) starts the next device, and no device twice."""
    rollouts, commands, eng = engine
    rid = await _create(rollouts, 3, rate=60, abort_above=0)
    t0 = (await rollouts.get(rid)).next_start_at
    await rollouts.step(t0)
    after_restart = Rollouts(
        db.make_sessionmaker(eng),
        commands,
        command_args=lambda spec, until: dict(spec),
        wake_outbox=lambda: None,
    )
    await after_restart.step(t0 + 500)
    assert set(await _by_device(commands, rid)) == {"d0"}  # not due yet: the stored start time holds
    await after_restart.step(t0 + 1000)
    assert set(await _by_device(commands, rid)) == {"d0", "d1"}
    assert len(await commands.list(rollout=rid)) == 2


async def test_a_command_is_recorded_sent_before_it_goes_out_so_an_abort_never_cancels_a_sent_one(
    engine: Any,
) -> None:
    """The outbox records a send before publishing: a command cancelled while queued is refused
    the send, and one already recorded as sent is not cancelled as "never sent" (found as a host
    that ran 0.2.0 while its rollout called it skipped)."""
    rollouts, commands, _ = engine
    rid = await _create(rollouts, 2, rate=6000, abort_above=100)
    now = (await rollouts.get(rid)).next_start_at
    await rollouts.step(now)
    await rollouts.step(now + 10)
    cmds = await _by_device(commands, rid)
    abort_only_unsent = frozenset({C.QUEUED})
    # d0: the abort wins the race; the outbox must then not send it
    assert await commands.transition(
        cmds["d0"].id, C.CANCELLED, detail="rollout aborted", source="controller", only_from=abort_only_unsent
    )
    assert await commands.mark_sent(cmds["d0"].id, attempt=1, next_attempt_at=now) is False
    assert (await commands.get(cmds["d0"].id)).state == "cancelled"
    # d1: the send is recorded first; the abort's cancel of unsent commands then leaves it alone
    assert await commands.mark_sent(cmds["d1"].id, attempt=1, next_attempt_at=now) is True
    assert not await commands.transition(
        cmds["d1"].id, C.CANCELLED, detail="rollout aborted", source="controller", only_from=abort_only_unsent
    )
    assert (await commands.get(cmds["d1"].id)).state == "sent"
