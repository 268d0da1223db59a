"""Long-running tasks are supervised: when one dies, it is logged with its traceback, /healthz says
so at once, and the service's ``run()`` raises (the process exits non-zero; systemd restarts it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

import pytest

from cloud.supervisor import Supervisor, TaskDied
from tests.fleet import Fleet


async def test_a_dead_controller_loop_makes_the_service_unhealthy_and_run_raise(
    embedded_fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = embedded_fleet
    assert (await fleet.api("GET", "/healthz")).status_code == 200
    # A real fault under a running loop: the jobs table disappears from the database, so the next
    # housekeeping pass (expiry, every second) fails with the driver's error.
    db_path = fleet.svc.config.data_dir.db_path
    assert fleet.svc.config.db_url.endswith(str(db_path))
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("ALTER TABLE jobs RENAME TO jobs_moved_away")
    with caplog.at_level(logging.ERROR, logger="cloud.supervisor"), pytest.raises(TaskDied) as died:
        await asyncio.wait_for(fleet.svc.run(), timeout=20)
    assert died.value.task == "controller"
    assert "jobs" in str(died.value)
    [record] = [r for r in caplog.records if r.name == "cloud.supervisor"]
    assert record.exc_info is not None and "supervised task controller died" in record.getMessage()
    health = await fleet.api("GET", "/healthz")
    assert health.status_code == 503
    body = health.json()
    assert body["status"] != "ok" and body["tasks"].startswith("error: the controller task stopped")
    with contextlib.closing(
        sqlite3.connect(db_path)
    ) as conn:  # put it back, so the fixture's teardown is ordinary
        conn.execute("ALTER TABLE jobs_moved_away RENAME TO jobs")


async def test_the_supervisor_reports_a_task_that_returns_or_raises_and_stops_the_rest() -> None:
    sup = Supervisor()
    forever = sup.start("forever", asyncio.Event().wait())

    async def fails() -> None:
        await asyncio.sleep(0)
        raise OSError("disk gone")

    sup.start("fails", fails())
    with pytest.raises(TaskDied, match="the fails task stopped: OSError") as died:
        await asyncio.wait_for(sup.wait(), timeout=5)
    assert isinstance(died.value.__cause__, OSError)
    assert sup.status() == {"forever": "running", "fails": "died: OSError('disk gone')"}
    with pytest.raises(ValueError, match="already supervised"):
        sup.start("forever", asyncio.sleep(0))
    await sup.stop()
    assert forever.cancelled()

    quits = Supervisor()
    quits.start("quits", asyncio.sleep(0))
    with pytest.raises(TaskDied, match="it returned"):
        await asyncio.wait_for(quits.wait(), timeout=5)
    await quits.stop()
