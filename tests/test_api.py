"""The HTTP API: auth, bad input refused without side effects, idempotent submission, redelivery."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kernel import wire
from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet


async def _jobs(fleet: Fleet) -> list[dict[str, Any]]:
    resp = await fleet.api("GET", "/v1/jobs")
    assert resp.status_code == 200
    data: list[dict[str, Any]] = resp.json()
    return data


async def test_health_needs_no_token_everything_else_does(embedded_fleet: Fleet) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=embedded_fleet.http) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["broker_link"] == "ok"
        for token in (None, "wrong"):
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            resp = await client.get("/v1/devices", headers=headers)
            assert resp.status_code == 401 and "token" in resp.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"printer": "p1"}, 422, "exactly one"),
        ({"printer": "p1", "text": "a", "raw_base64": "AA=="}, 422, "exactly one"),
        ({"printer": "nope", "text": "a"}, 404, "no printer"),
        ({"printer": "p1", "text": "a", "copies": 0}, 422, "copies"),
        ({"printer": "p1", "text": "a", "bogus": 1}, 422, "bogus"),
        ({"printer": "p1", "raw_base64": "!!!"}, 422, "base64"),
        (
            {
                "printer": "p1",
                "document": {
                    "version": 1,
                    "items": [{"type": "barcode", "symbology": "EAN13", "data": "12"}],
                },
            },
            400,
            "EAN13",
        ),
        ({"printer": "p1", "document": {"version": 1, "items": []}}, 400, ""),
    ],
)
async def test_bad_jobs_are_refused_and_change_nothing(
    embedded_fleet: Fleet, body: dict[str, Any], status: int, message: str
) -> None:
    resp = await embedded_fleet.api("POST", "/v1/devices", json={"name": "p1", "serial_url": "/dev/ttyUSB9"})
    assert resp.status_code == 201
    resp = await embedded_fleet.api("POST", "/v1/jobs", json=body)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    assert await _jobs(embedded_fleet) == []


async def test_oversized_request_is_refused(embedded_fleet: Fleet) -> None:
    raw = base64.b64encode(b"x" * (7 * 1024 * 1024)).decode()
    resp = await embedded_fleet.api("POST", "/v1/jobs", json={"printer": "p1", "raw_base64": raw})
    assert resp.status_code == 413


async def test_idempotency_key(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    await fleet.api("POST", "/v1/devices", json={"name": "p1", "serial_url": "/dev/ttyUSB9"})
    body = {"printer": "p1", "text": "order 42", "idempotency_key": "order-42"}
    first = await fleet.api("POST", "/v1/jobs", json=body)
    again = await fleet.api("POST", "/v1/jobs", json=body)  # e.g. the first answer was lost
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    header = await fleet.api(
        "POST",
        "/v1/jobs",
        json={"printer": "p1", "text": "order 42"},
        headers={"Idempotency-Key": "order-42", "Authorization": f"Bearer {fleet.svc.admin_token}"},
    )
    assert header.status_code == 200 and header.json()["id"] == first.json()["id"]
    clash = await fleet.api("POST", "/v1/jobs", json={**body, "text": "order 43"})
    assert clash.status_code == 409 and "different request" in clash.json()["error"]
    assert len(await _jobs(fleet)) == 1


async def test_redelivered_job_prints_once_even_across_agent_restart(embedded_fleet: Fleet) -> None:
    """QoS 1 is at-least-once: the same job.print delivered again is answered from the journal."""
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        res = await fleet.cli("print", "k1", "--text", "only once", "--wait", "--json")
        job_id = res.json()["id"]
        await printer.wait_for_receipts(1, timeout=5)

        job = await fleet.svc.jobs.get(job_id)
        assert job.payload is not None
        redelivery = wire.JobPrint(
            job_id=job.id,
            printer=job.printer_name,
            data=base64.b64encode(job.payload).decode(),
            sha256=job.payload_sha256,
            order=job.seq,
            submitted_at=job.created_at,
            lease_until=wire.now_ms() + 60_000,
        )
        peer = wire.Peer(role=wire.Role.DEVICE, name="k1")
        assert await fleet.svc.controller.send(peer, redelivery)
        await agent.stop()
        agent2 = await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        assert await fleet.svc.controller.send(peer, redelivery)
        # a marker job after the redeliveries: once it is printed, the agent has handled them all
        res = await fleet.cli("print", "k1", "--text", "marker", "--wait", "--json")
        assert res.json()["state"] == "printed"
        texts = [r.text for r in await printer.wait_for_receipts(2, timeout=5)]
        assert sum("only once" in t for t in texts) == 1
        assert sum("marker" in t for t in texts) == 1
        shown = (await fleet.cli("jobs", "show", job_id, "--json")).json()
        assert shown["state"] == "printed"
        await agent2.stop()
