"""Identity and access: enrolment, disable/enable/rotate, scoped tokens, signed instructions, replay,
and an attacker holding one stolen device credential."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import aiomqtt
import httpx
import pytest

from device_agent.config import load_config
from kernel import wire
from kernel.sim.printer import PtyPrinter
from tests.fleet import Fleet


async def _audit(fleet: Fleet, **params: Any) -> list[dict[str, Any]]:
    resp = await fleet.api("GET", "/v1/audit", params=params)
    assert resp.status_code == 200
    events: list[dict[str, Any]] = resp.json()
    return events


async def _wait_audit(fleet: Fleet, predicate: Any, timeout: float = 10) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for event in await _audit(fleet, limit=200):
            if predicate(event):
                return event
        if loop.time() > deadline:
            raise AssertionError(f"no matching audit event: {await _audit(fleet, limit=20)}")
        await asyncio.sleep(0.05)  # observer polling, bounded


async def test_enrolment_token_works_once_and_expires(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        res = await fleet.cli("devices", "add", "k1", "--serial", printer.url, "--enroll")
        token = res.stdout.splitlines()[1].strip()
        assert token.startswith("pfe_")
        cfg = fleet.root / "enrolled.toml"
        await fleet.cli(
            "agent", "enroll", "--server", fleet.http, "--enrollment-token", token, "--out", str(cfg)
        )
        again = await fleet.cli(
            "agent",
            "enroll",
            "--server",
            fleet.http,
            "--enrollment-token",
            token,
            "--out",
            str(fleet.root / "again.toml"),
            check=False,
        )
        assert again.code == 1 and again.stderr.strip() == "error: enrolment token already used"
        bad = await fleet.cli(
            "agent",
            "enroll",
            "--server",
            fleet.http,
            "--enrollment-token",
            "pfe_guess" * 3,
            "--out",
            str(fleet.root / "bad.toml"),
            check=False,
        )
        assert bad.code == 1 and "unknown enrolment token" in bad.stderr
        import tomllib

        from device_agent.config import write_config

        data = tomllib.loads(cfg.read_text())
        data["agent"] = {"state_dir": "k1-state"}
        write_config(cfg, data)
        await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        job = (await fleet.cli("print", "k1", "--text", "enrolled", "--wait", "--json")).json()
        assert job["state"] == "printed"

        # an expired token is refused
        resp = await fleet.api("POST", "/v1/devices/k1/enrollment", params={"ttl": 60})
        expired_token = resp.json()["enrollment_token"]
        from sqlalchemy import update

        from cloud.models import EnrollmentToken

        async with fleet.svc.registry._sessions.begin() as s:  # age the token in the database
            await s.execute(update(EnrollmentToken).values(expires_at=wire.now_ms() - 1))
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{fleet.http}/v1/enroll", json={"token": expired_token})
        assert resp.status_code == 403 and resp.json()["error"] == "enrolment token expired"
        denied = await _wait_audit(
            fleet, lambda e: e["action"] == "POST /v1/enroll" and e["outcome"] == "denied"
        )
        assert denied["actor"] == "api:anonymous"


async def test_disable_keeps_work_and_enable_delivers_it(fleet: Fleet) -> None:
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url, keepalive=4)
        await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        await fleet.cli("devices", "disable", "k1")
        dev = await fleet.device("k1")
        assert dev["online"] is False and dev["enabled"] is False
        job = (await fleet.cli("print", "k1", "--text", "while disabled", "--json")).json()
        await asyncio.sleep(3)  # a disabled device must receive nothing during this time
        assert (await fleet.cli("jobs", "show", job["id"], "--json")).json()["state"] == "queued"
        assert printer.model.receipts == []
        cfg_data = load_config(cfg)
        port = (
            fleet.mosquitto.port if fleet.mosquitto is not None else fleet.svc.broker.bound_addresses[0][1]  # type: ignore[union-attr]
        )
        # both brokers refuse the disabled credential (mosquitto once the controller made it reload)
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                identifier=cfg_data.username,
                username=cfg_data.username,
                password=cfg_data.password,
            ):
                pass
        await fleet.cli("devices", "enable", "k1")
        res = await fleet.api("GET", f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}, timeout=70)
        assert res.json()["state"] == "printed"
        assert "while disabled" in (await printer.wait_for_receipts(1, timeout=5))[0].text


async def test_rotate_credentials_keeps_queued_work(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url)
        agent = await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        await agent.stop()
        job = (await fleet.cli("print", "k1", "--text", "queued across rotation", "--json")).json()
        new_cfg = fleet.root / "k1-rotated.toml"
        await fleet.cli("devices", "rotate", "k1", "--out", str(new_cfg))
        old = load_config(cfg)
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1",
                fleet.svc.broker.bound_addresses[0][1],  # type: ignore[union-attr]
                identifier=old.username,
                username=old.username,
                password=old.password,
            ):
                pass
        import tomllib

        from device_agent.config import write_config

        data = tomllib.loads(new_cfg.read_text())
        data["agent"] = {"state_dir": "k1-state"}
        write_config(new_cfg, data)
        await fleet.start_agent(new_cfg)
        res = await fleet.api("GET", f"/v1/jobs/{job['id']}/wait", params={"timeout": 60}, timeout=70)
        assert res.json()["state"] == "printed"


async def test_scoped_tokens(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    await fleet.cli("devices", "add", "k1", "--serial", "/dev/ttyUSB9", "--out", str(fleet.root / "k1.toml"))
    tokens = {}
    for scope in ("print", "read"):
        out = (await fleet.cli("tokens", "create", f"app-{scope}", "--scope", scope)).stdout
        tokens[scope] = out.splitlines()[1].strip()
    listed = (await fleet.cli("tokens", "list", "--json")).json()
    scopes = {t["name"]: t["scope"] for t in listed}
    assert (
        scopes["app-print"] == "print" and scopes["app-read"] == "read" and scopes["local-admin"] == "admin"
    )
    assert "token" not in json.dumps(listed).replace('"token', "")  # values never listed

    async with httpx.AsyncClient(base_url=fleet.http) as c:

        def h(scope: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[scope]}"}

        ok = await c.post("/v1/jobs", json={"printer": "k1", "text": "x"}, headers=h("print"))
        assert ok.status_code == 201
        assert (await c.get("/v1/jobs", headers=h("read"))).status_code == 200
        no = await c.post("/v1/jobs", json={"printer": "k1", "text": "x"}, headers=h("read"))
        assert no.status_code == 403 and "needs print" in no.json()["error"]
        no = await c.post("/v1/devices", json={"name": "k2", "serial_url": "/dev/x"}, headers=h("print"))
        assert no.status_code == 403
        assert (await c.get("/v1/audit", headers=h("print"))).status_code == 403
        await fleet.cli("tokens", "revoke", "app-print")
        gone = await c.post("/v1/jobs", json={"printer": "k1", "text": "x"}, headers=h("print"))
        assert gone.status_code == 401
    events = await _audit(fleet, limit=100)
    assert any(
        e["actor"] == "api:app-print" and e["action"] == "POST /v1/jobs" and e["outcome"] == "ok"
        for e in events
    )
    assert any(e["actor"] == "api:app-read" and e["outcome"] == "denied" for e in events)
    assert any(
        e["actor"] == "api:local-admin" and e["action"] == "DELETE /v1/tokens/app-print" for e in events
    )


def _job_body(text: str) -> tuple[bytes, str]:
    data = b"\x1b@" + text.encode() + b"\n\x1dV\x00"
    return data, hashlib.sha256(data).hexdigest()


async def test_forged_expired_misaddressed_and_replayed_instructions_are_refused(
    embedded_fleet: Fleet,
) -> None:
    """Only a fresh instruction signed by the controller, for this device, is executed, and only once."""
    fleet = embedded_fleet
    async with PtyPrinter() as printer:
        cfg = await fleet.add_device("k1", printer.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        ctl = wire.Peer(role=wire.Role.CONTROLLER, name="main")
        dev = wire.Peer(role=wire.Role.DEVICE, name="k1")
        secret = fleet.svc.config.data_dir.controller_secret_path.read_text().strip()
        now = wire.now_ms()

        def job(job_id: str, text: str) -> wire.JobPrint:
            data, digest = _job_body(text)
            return wire.JobPrint(
                job_id=job_id,
                printer="k1",
                data=base64.b64encode(data).decode(),
                sha256=digest,
                submitted_at=now,
                lease_until=now + 60_000,
            )

        controller = fleet.svc.controller
        # The genuine instruction carries a job the controller knows: an agent prints nothing
        # without the controller's grant for that job id (job.claim / job.grant).
        real = (await fleet.api("POST", "/v1/jobs", json={"printer": "k1", "text": "GENUINE"})).json()
        stored = await fleet.svc.jobs.get(real["id"])
        assert stored.payload is not None
        good = controller.instruction(
            wire.JobPrint(
                job_id=stored.id,
                printer="k1",
                data=base64.b64encode(stored.payload).decode(),
                sha256=stored.payload_sha256,
                submitted_at=now,
                lease_until=now + 60_000,
            ),
            dev,
        )
        forged = wire.Envelope.build(
            job("j-forged", "FORGED"), src=ctl, dst=dev, seq=good.seq + 1, exp=now + 60_000
        ).signed(wire.SigningKey.generate())
        expired = controller.instruction(job("j-expired", "EXPIRED"), dev, exp=now - 1)
        other = wire.Peer(role=wire.Role.DEVICE, name="k2")
        misaddressed = controller.instruction(job("j-mis", "MISADDRESSED"), other)
        port = fleet.svc.broker.bound_addresses[0][1]  # type: ignore[union-attr]
        # Publishing as the controller takes its session over for a moment (it reconnects by itself).
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=ctl.client_id, username=ctl.client_id, password=secret
        ) as c:
            for env in (good, forged, expired, misaddressed, good):  # the last one is a replay
                await c.publish(dev.topic(wire.Channel.DOWN), env.encode(), qos=1)
        receipts = await printer.wait_for_receipts(1, timeout=10)
        for reason in ("unknown key", "expired instruction", "addressed to dev-k2", "replayed instruction"):
            await _wait_audit(
                fleet, lambda e, r=reason: e["action"] == "instruction.refused" and r in (e["detail"] or "")
            )
        marker = (await fleet.cli("print", "k1", "--text", "MARKER", "--wait", "--json")).json()
        assert marker["state"] == "printed"
        texts = [r.text for r in await printer.wait_for_receipts(2, timeout=5)]
        assert sum("GENUINE" in t for t in texts) == 1
        assert not any(word in t for t in texts for word in ("FORGED", "EXPIRED", "MISADDRESSED"))
        assert len(receipts) >= 1


async def test_attacker_with_one_stolen_device_credential(embedded_fleet: Fleet) -> None:
    """dev-a's credentials cannot make dev-b print, read dev-b's traffic or pose as dev-b; it is audited."""
    fleet = embedded_fleet
    async with PtyPrinter() as printer_a, PtyPrinter() as printer_b:
        cfg_a = await fleet.add_device("a", printer_a.url)
        cfg_b = await fleet.add_device("b", printer_b.url)
        # dev-a's own agent stays offline: its credential is in the attacker's hands
        await fleet.start_agent(cfg_b)
        await fleet.wait_device("b", lambda d: d["online"], timeout=20)
        job_b = (await fleet.cli("print", "b", "--text", "b's own job", "--wait", "--json")).json()
        stolen = load_config(cfg_a)
        peer_b = wire.Peer(role=wire.Role.DEVICE, name="b")
        port = fleet.svc.broker.bound_addresses[0][1]  # type: ignore[union-attr]

        # 1. pose as dev-b with dev-a's password: refused
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="dev-b", username="dev-b", password=stolen.password
            ):
                pass
        # 2-4. as dev-a: eavesdrop on everything, inject a print job for b, forge a report about b's job
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=stolen.username, username=stolen.username, password=stolen.password
        ) as c:
            await c.subscribe("#", qos=1)
            await c.subscribe(peer_b.topic(wire.Channel.DOWN), qos=1)
            data, digest = _job_body("INJECTED")
            fake = wire.JobPrint(
                job_id="evil",
                printer="b",
                data=base64.b64encode(data).decode(),
                sha256=digest,
                submitted_at=1,
                lease_until=wire.now_ms() + 60_000,
            )
            env = wire.Envelope.build(fake, src="ctl-main", dst=peer_b, seq=2**62, exp=wire.now_ms() + 60_000)
            await c.publish(peer_b.topic(wire.Channel.DOWN), env.encode(), qos=1)
            forged = wire.JobReport(
                report_id="r-evil",
                job_id=job_b["id"],
                printer="b",
                state=wire.JobState.FAILED,
                at=wire.now_ms(),
            )
            peer_a = wire.Peer(role=wire.Role.DEVICE, name="a")
            await c.publish(
                peer_a.topic(wire.Channel.UP),
                wire.Envelope.build(forged, src=peer_a, dst="ctl-main", seq=1).encode(),
                qos=1,
            )
            await c.publish(
                peer_b.topic(wire.Channel.UP),
                wire.Envelope.build(forged, src=peer_b, dst="ctl-main", seq=1).encode(),
                qos=1,
            )
            # a marker through b's genuine path proves b's traffic flowed meanwhile
            marker = (await fleet.cli("print", "b", "--text", "MARKER", "--wait", "--json")).json()
            assert marker["state"] == "printed"
            leaked = []
            with __import__("contextlib").suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for m in c.messages:
                        leaked.append(str(m.topic))
            assert not [t for t in leaked if "/b/" in t], leaked
        texts = [r.text for r in printer_b.model.receipts]
        assert not any("INJECTED" in t for t in texts)
        assert (await fleet.cli("jobs", "show", job_b["id"], "--json")).json()["state"] == "printed"
        event = await _wait_audit(fleet, lambda e: e["action"] == "report.forged")
        assert event["actor"] == "dev-a" and event["target"] == job_b["id"]
        await _wait_audit(fleet, lambda e: e["actor"] == "dev-a" and e["action"].startswith("broker."))


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"printer": 5, "text": "x"}',
        b'{"printer": "k1", "text": "x", "copies": "2"}',
    ],
)
async def test_bad_http_bodies(embedded_fleet: Fleet, body: bytes) -> None:
    resp = await embedded_fleet.api(
        "POST",
        "/v1/jobs",
        content=body,
        headers={
            "Authorization": f"Bearer {embedded_fleet.svc.admin_token}",
            "Content-Type": "application/json",
        },
    )
    assert resp.status_code == 422
    assert "error" in resp.json()


async def test_signing_key_rotation_cuts_nobody_off(embedded_fleet: Fleet) -> None:
    """Rotate while one agent is online and one offline: both keep printing; the old key retires."""
    fleet = embedded_fleet
    async with PtyPrinter() as p1, PtyPrinter() as p2:
        cfg1 = await fleet.add_device("on", p1.url, keepalive=4)
        cfg2 = await fleet.add_device("off", p2.url, keepalive=4)
        await fleet.start_agent(cfg1)
        agent2 = await fleet.start_agent(cfg2)
        await fleet.wait_device("off", lambda d: d["online"] and d["last_heartbeat_at"], timeout=20)
        await fleet.wait_device("on", lambda d: d["online"] and d["last_heartbeat_at"], timeout=20)
        old = (await fleet.cli("keys", "list", "--json")).json()[0]["kid"]
        await agent2.stop()
        await fleet.cli("keys", "rotate")
        keys = (await fleet.cli("keys", "list", "--json")).json()
        new = keys[0]["kid"]
        assert keys[0]["active"] and new != old and keys[1]["kid"] == old

        job = (await fleet.cli("print", "on", "--text", "after rotation", "--wait", "--json")).json()
        assert job["state"] == "printed"
        await fleet.start_agent(cfg2)  # it only trusts the old key: it must not be cut off
        await fleet.wait_device("off", lambda d: d["online"], timeout=20)
        job = (await fleet.cli("print", "off", "--text", "back after rotation", "--wait", "--json")).json()
        assert job["state"] == "printed"

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:  # both devices report trusting the new key (from their heartbeats)
            keys = (await fleet.cli("keys", "list", "--json")).json()
            if sorted(keys[0]["devices_trusting"]) == ["off", "on"]:
                break
            assert loop.time() < deadline, keys
            await asyncio.sleep(0.2)  # observer polling, bounded
        await fleet.cli("keys", "retire", old)
        assert [k["kid"] for k in (await fleet.cli("keys", "list", "--json")).json()] == [new]
        for name in ("on", "off"):
            job = (
                await fleet.cli("print", name, "--text", f"{name} after retirement", "--wait", "--json")
            ).json()
            assert job["state"] == "printed"
        refusals = [e for e in await _audit(fleet, limit=200) if e["action"] == "instruction.refused"]
        assert refusals == []
