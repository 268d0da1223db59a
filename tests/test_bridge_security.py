"""Identity and access for phone bridges: enrolment (with mutual TLS), disable/enable/rotate, pair-wise
ACLs between bridges and devices on both brokers, signed instructions to a real bridge, and reports
and claims from a bridge that does not hold the job.

Negative checks use barriers, not sleeps: a permitted message sent after the forbidden one along
the same path has arrived, so the forbidden one would have arrived before it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import update

from broker import EmbeddedBroker, ListenerSpec, StaticCredentials
from broker.testing import (
    Account,
    MessageLog,
    MosquittoProcess,
    connack_code,
    make_account,
    mosquitto_available,
)
from cloud import db
from cloud.models import EnrollmentToken
from device_agent.config import load_config
from kernel import tls, wire
from kernel.sim.printer import PtyPrinter
from kernel.wire import Channel, Peer, Role
from phone_bridge.bridge import open_bridge
from phone_bridge.config import BridgeConfig, load_bridge_config
from tests.bridgekit import ble_printer, ble_rig, running_bridge, wait_bridge_online, wait_job
from tests.fleet import Fleet, running_fleet

DOWN, UP, PRESENCE = Channel.DOWN, Channel.UP, Channel.PRESENCE
CTL = Peer(role=Role.CONTROLLER, name="main")


# ----------------------------------------------------------------------------------------------
# Helpers.


async def _audit(fleet: Fleet, **params: Any) -> list[dict[str, Any]]:
    resp = await fleet.api("GET", "/v1/audit", params={"limit": 500, **params})
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()
    return events


async def _wait_audit(
    fleet: Fleet, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for event in await _audit(fleet):
            if predicate(event):
                return event
        if loop.time() > deadline:
            raise AssertionError(f"no matching audit event: {await _audit(fleet, limit=30)}")
        await asyncio.sleep(0.05)  # observer polling, bounded by the deadline


def _event(actor: str, action: str, detail: str = "") -> Callable[[dict[str, Any]], bool]:
    """An audit event by ``actor`` of ``action`` whose detail contains ``detail``."""

    def matches(e: dict[str, Any]) -> bool:
        return e["actor"] == actor and e["action"] == action and detail in (e["detail"] or "")

    return matches


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll a condition of a component under test; the seconds it took (bounded)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)  # observer polling, bounded by the timeout
    return loop.time() - start


def _broker_port(fleet: Fleet) -> int:
    if fleet.mosquitto is not None:
        return fleet.mosquitto.port
    assert fleet.svc.broker is not None
    return fleet.svc.broker.port


async def _refused(fleet: Fleet, *, username: str, password: str, identifier: str | None = None) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1",
            _broker_port(fleet),
            identifier=identifier or username,
            username=username,
            password=password,
            timeout=5,
        ):
            pass


async def _register_host(fleet: Fleet, name: str = "kiosk-1") -> Path:
    """A printer host whose agent never runs (so its path is degraded: host offline)."""
    cfg = fleet.root / f"{name}.agent.toml"
    await fleet.cli("devices", "add", name, "--serial", "/dev/ttyUSB9", "--out", str(cfg))
    return cfg


async def _register_bridge(fleet: Fleet, name: str, near: str = "kiosk-1") -> BridgeConfig:
    path = fleet.root / f"{name}.bridge.toml"
    await fleet.cli("bridge", "register", name, "--near", near, "--out", str(path))
    config = load_bridge_config(path)
    await fleet.sync_broker_credentials(config.username, config.password)
    return config


def _token(stdout: str) -> str:
    token = stdout.splitlines()[1].strip()
    assert token.startswith("pfe_"), stdout
    return token


async def _age_enrolment_tokens(fleet: Fleet) -> None:
    """Move every enrolment token's expiry into the past, in the controller's database."""
    engine = db.make_engine(fleet.svc.config.db_url)
    try:
        async with db.make_sessionmaker(engine).begin() as s:
            await s.execute(update(EnrollmentToken).values(expires_at=wire.now_ms() - 1))
    finally:
        await engine.dispose()


async def _publish_as_controller(fleet: Fleet, messages: list[tuple[str, bytes]]) -> None:
    """Publish with the controller's credential: the only one that may write a bridge's ``down``.

    Connecting takes the controller's session over; it reconnects by itself and may take it back
    before we are done, so publishing goes on where it stopped (a message whose PUBACK was lost may
    arrive twice: the bridge refuses the second copy as a replay).
    """
    secret = fleet.svc.config.data_dir.controller_secret_path.read_text().strip()
    pending = list(messages)
    for _ in range(20):
        try:
            async with aiomqtt.Client(
                "127.0.0.1",
                _broker_port(fleet),
                identifier=CTL.client_id,
                username=CTL.client_id,
                password=secret,
                timeout=5,
            ) as client:
                while pending:
                    topic, payload = pending[0]
                    await client.publish(topic, payload, qos=1)
                    pending.pop(0)
            return
        except aiomqtt.MqttError:
            continue  # the controller took its session back: publish the rest on a new one
    raise AssertionError(f"could not publish {len(pending)} messages as the controller")


def _job_bytes(text: str) -> tuple[bytes, str]:
    data = b"\x1b@" + text.encode() + b"\n\x1dV\x00"
    return data, hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------
# 1. Enrolment.


async def test_bridge_enrolment_token_works_once_and_expires(embedded_fleet: Fleet) -> None:
    fleet = embedded_fleet
    await _register_host(fleet, "k1")
    res = await fleet.cli("bridge", "register", "phone-1", "--near", "k1", "--enroll")
    token = _token(res.stdout)
    assert "printfleet bridge enroll" in res.stdout

    path = fleet.root / "phone-1.bridge.toml"
    await fleet.cli(
        "bridge", "enroll", "--server", fleet.http, "--enrollment-token", token, "--out", str(path)
    )
    config = load_bridge_config(path)
    assert config.name == "phone-1" and config.username == "brg-phone-1"
    assert path.stat().st_mode & 0o077 == 0  # it holds the bridge's secret

    again = await fleet.cli(
        "bridge", "enroll", "--server", fleet.http, "--enrollment-token", token,
        "--out", str(fleet.root / "again.toml"), check=False,
    )  # fmt: skip
    assert again.code == 1 and again.stderr.strip() == "error: enrolment token already used"
    guess = await fleet.cli(
        "bridge", "enroll", "--server", fleet.http, "--enrollment-token", "pfe_guess" * 3,
        "--out", str(fleet.root / "guess.toml"), check=False,
    )  # fmt: skip
    assert guess.code == 1 and "unknown enrolment token" in guess.stderr
    assert not (fleet.root / "again.toml").exists() and not (fleet.root / "guess.toml").exists()

    # the credentials it obtained are the bridge's own: a real bridge comes online with them
    async with ble_rig() as rig, running_bridge(fleet, rig, "phone-1", ["k1"], register=False):
        listed = (await fleet.cli("bridge", "list", "--json")).json()
        assert [(b["name"], b["online"]) for b in listed] == [("phone-1", True)]

    # an expired token is refused, and the attempt is audited
    resp = await fleet.api("POST", "/v1/bridges/phone-1/enrollment", params={"ttl": 60})
    assert resp.status_code == 201
    expired = resp.json()["enrollment_token"]
    await _age_enrolment_tokens(fleet)
    late = await fleet.cli(
        "bridge", "enroll", "--server", fleet.http, "--enrollment-token", expired,
        "--out", str(fleet.root / "late.toml"), check=False,
    )  # fmt: skip
    assert late.code == 1 and late.stderr.strip() == "error: enrolment token expired"
    denied = await _wait_audit(
        fleet,
        lambda e: e["action"] == "POST /v1/enroll" and e["outcome"] == "denied",
    )
    assert denied["actor"] == "api:anonymous" and denied["detail"] == "HTTP 403"


async def test_a_device_token_never_enrols_a_bridge_nor_the_reverse(embedded_fleet: Fleet) -> None:
    """Using a token with the wrong command fails plainly and spends nothing: the token still works
    with the right command, and the credentials in use are untouched."""
    fleet = embedded_fleet
    host_cfg = await _register_host(fleet, "k1")
    host = load_config(host_cfg)
    bridge = await _register_bridge(fleet, "phone-1", near="k1")
    dev_token = (await fleet.api("POST", "/v1/devices/k1/enrollment", params={"ttl": 600})).json()
    brg_token = (await fleet.api("POST", "/v1/bridges/phone-1/enrollment", params={"ttl": 600})).json()

    wrong = await fleet.cli(
        "bridge", "enroll", "--server", fleet.http, "--enrollment-token", dev_token["enrollment_token"],
        "--out", str(fleet.root / "wrong.bridge.toml"), check=False,
    )  # fmt: skip
    assert wrong.code == 1, wrong
    assert (
        wrong.stderr.strip()
        == "error: this token enrols a printer host, not a bridge: use printfleet agent enroll"
    )
    wrong = await fleet.cli(
        "agent", "enroll", "--server", fleet.http, "--enrollment-token", brg_token["enrollment_token"],
        "--out", str(fleet.root / "wrong.agent.toml"), check=False,
    )  # fmt: skip
    assert wrong.code == 1, wrong
    assert (
        wrong.stderr.strip()
        == "error: this token enrols a bridge, not a printer host: use printfleet bridge enroll"
    )
    assert "Traceback" not in wrong.stderr
    assert not (fleet.root / "wrong.bridge.toml").exists() and not (fleet.root / "wrong.agent.toml").exists()

    # nothing was spent: the credentials in use still work ...
    port = _broker_port(fleet)
    for username, password in ((host.username, host.password), (bridge.username, bridge.password)):
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=username, username=username, password=password, timeout=5
        ):
            pass
    # ... and each token still enrols its own kind, once
    agent_cfg = fleet.root / "k1.enrolled.toml"
    await fleet.cli(
        "agent", "enroll", "--server", fleet.http, "--enrollment-token", dev_token["enrollment_token"],
        "--out", str(agent_cfg),
    )  # fmt: skip
    assert load_config(agent_cfg).username == "dev-k1"
    bridge_cfg = fleet.root / "phone-1.enrolled.toml"
    await fleet.cli(
        "bridge", "enroll", "--server", fleet.http, "--enrollment-token", brg_token["enrollment_token"],
        "--out", str(bridge_cfg),
    )  # fmt: skip
    assert load_bridge_config(bridge_cfg).username == "brg-phone-1"
    # a host's enrolment token is not to be had through the bridges' endpoint
    resp = await fleet.api("POST", "/v1/bridges/k1/enrollment")
    assert resp.status_code == 404 and "no bridge named 'k1'" in resp.json()["error"]


@pytest.mark.slow  # a whole fleet over mutual TLS
async def test_bridge_enrolment_with_mutual_tls(tmp_path: Path) -> None:
    """Under --mtls the enrolled bridge gets a client certificate for brg-NAME from the fleet's CA;
    the embedded broker admits it for the bridge and for nobody else."""
    async with running_fleet(tmp_path, "embedded", tls=True, mtls=True) as fleet, ble_rig() as rig:
        host_cfg = await _register_host(fleet, "k1")
        res = await fleet.cli("bridge", "register", "phone-1", "--near", "k1", "--enroll")
        path = fleet.root / "phone-1.bridge.toml"
        await fleet.cli(
            "bridge", "enroll", "--server", fleet.http, "--enrollment-token", _token(res.stdout),
            "--out", str(path),
        )  # fmt: skip
        config = load_bridge_config(path)
        assert config.tls is not None and config.tls.cert_pem is not None and config.tls.key_pem is not None
        assert all(b.tls for b in config.brokers)
        cert = x509.load_pem_x509_certificate(config.tls.cert_pem.encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "brg-phone-1"
        assert tls.certificate_identity(cert) == "brg-phone-1"

        async with running_bridge(fleet, rig, "phone-1", ["k1"], register=False):
            pass  # online over mutual TLS with the enrolled certificate

        host = load_config(host_cfg)
        port = _broker_port(fleet)
        context = tls.client_context_from_pem(config.tls.ca_pem, config.tls.cert_pem, config.tls.key_pem)
        assert await connack_code(
            port, client_id="brg-phone-1", username="brg-phone-1", password=config.password,
            ssl_context=context,
        ) == 0  # fmt: skip
        # the bridge's certificate with a device's valid password: refused (CONNACK 5)
        assert await connack_code(
            port, client_id=host.username, username=host.username, password=host.password,
            ssl_context=context,
        ) == 5  # fmt: skip
        event = await _wait_audit(
            fleet, lambda e: e["action"] == "broker.connect" and e["actor"] == host.username
        )
        assert "client certificate of 'brg-phone-1'" in (event["detail"] or "")


# ----------------------------------------------------------------------------------------------
# 2. Disable, enable, rotate.


async def test_disable_cuts_a_bridge_off_and_enable_restores_it(fleet: Fleet) -> None:
    await _register_host(fleet)
    config = await _register_bridge(fleet, "phone-1")
    async with ble_rig() as rig, open_bridge(config, backend=rig.radio) as bridge:
        await wait_bridge_online(fleet, "phone-1")
        assert bridge.online.is_set()
        await fleet.cli("bridge", "disable", "phone-1")
        # embedded: the session is dropped by the disable itself; mosquitto: on its reload
        took = await _until(lambda: not bridge.online.is_set(), 10, "the disabled bridge's session ended")
        if fleet.broker_kind == "embedded":
            assert took < 2.0, took
        view = (await fleet.api("GET", "/v1/bridges/phone-1")).json()
        assert view["enabled"] is False and view["online"] is False
        await _refused(fleet, username=config.username, password=config.password)
        listed = (await fleet.cli("bridge", "list")).stdout
        assert "disabled" in listed
        if fleet.broker_kind == "embedded":
            await _wait_audit(
                fleet,
                lambda e: (
                    e["actor"] == "brg-phone-1"
                    and e["action"] == "broker.connect"
                    and "disabled" in (e["detail"] or "")
                ),
            )
        assert not bridge.online.is_set()  # its own reconnects were refused meanwhile

        await fleet.cli("bridge", "enable", "phone-1")
        await _until(bridge.online.is_set, 20, "the enabled bridge reconnected by itself")
        await wait_bridge_online(fleet, "phone-1")


async def test_rotate_gives_a_bridge_new_credentials_and_retires_the_old(fleet: Fleet) -> None:
    await _register_host(fleet)
    old = await _register_bridge(fleet, "phone-1")
    new_path = fleet.root / "phone-1.rotated.toml"
    async with ble_rig() as rig:
        async with open_bridge(old, backend=rig.radio) as bridge:
            await wait_bridge_online(fleet, "phone-1")
            res = await fleet.cli("bridge", "rotate", "phone-1", "--out", str(new_path))
            assert f"written to {new_path}" in res.stdout
            if fleet.broker_kind == "embedded":  # the session that used the old secret is dropped
                took = await _until(lambda: not bridge.online.is_set(), 5, "the old session ended")
                assert took < 2.0, took
            new = load_bridge_config(new_path)
            assert new.username == old.username and new.password != old.password
            await fleet.sync_broker_credentials(new.username, new.password)
            await _refused(fleet, username=old.username, password=old.password)
        async with open_bridge(new, backend=rig.radio) as bridge:
            await _until(bridge.online.is_set, 20, "the bridge with its new credentials connected")
            await wait_bridge_online(fleet, "phone-1")
    again = await fleet.cli("bridge", "rotate", "phone-1", "--out", str(new_path), check=False)
    assert again.code == 1 and "already exists" in again.stderr


# ----------------------------------------------------------------------------------------------
# 3. Pair-wise ACLs between bridges and devices, on both brokers.


@dataclass(frozen=True, kw_only=True)
class Accounts:
    controller: Account
    peers: tuple[Account, ...]

    def credentials(self) -> StaticCredentials:
        return StaticCredentials.of(self.controller.credential, *(p.credential for p in self.peers))


@pytest.fixture(scope="module")
def accounts() -> Accounts:
    return Accounts(
        controller=make_account(CTL),
        peers=(
            make_account(Peer(role=Role.DEVICE, name="a")),
            make_account(Peer(role=Role.DEVICE, name="b")),
            make_account(Peer(role=Role.BRIDGE, name="p")),
            make_account(Peer(role=Role.BRIDGE, name="q")),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class BareBroker:
    kind: str
    port: int


_needs_mosquitto = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
]


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=_needs_mosquitto)])
async def bare_broker(
    request: pytest.FixtureRequest, accounts: Accounts, tmp_path: Path
) -> AsyncIterator[BareBroker]:
    """The embedded broker, or mosquitto with the files export_mosquitto generates (its ACL file
    comes from the same wire.access_rules)."""
    if request.param == "embedded":
        async with EmbeddedBroker(
            listeners=[ListenerSpec(host="127.0.0.1", port=0)], credentials=accounts.credentials()
        ) as broker:
            yield BareBroker(kind="embedded", port=broker.port)
    else:
        async with MosquittoProcess(tmp_path, accounts.credentials().values()) as mosq:
            yield BareBroker(kind="mosquitto", port=mosq.port)


def _foreign_filters(target: Peer) -> tuple[str, ...]:
    """Subscriptions that would let their holder see something of ``target``'s."""
    role, name = target.role.value, target.name
    return (
        target.topic(DOWN),
        target.topic(UP),
        target.topic(PRESENCE),
        f"pf/v1/{role}/{name}/#",
        f"pf/v1/{role}/{name}/+",
        f"pf/v1/+/{name}/+",
        f"pf/v1/{role}/+/down",
        f"pf/v1/{role}/+/up",
        "pf/v1/+/+/down",
        "pf/v1/+/+/+",
        "pf/v1/#",
        "#",
    )


async def test_pairwise_isolation_of_bridges_and_devices(bare_broker: BareBroker, accounts: Accounts) -> None:
    """For every ordered pair (A, B) of peers with a bridge among them: A can neither read nor write
    anything of B's (``#`` included), nor publish as the controller."""
    port = bare_broker.port
    async with contextlib.AsyncExitStack() as stack:
        ctl = await stack.enter_async_context(accounts.controller.client(port))
        ctl_log = await stack.enter_async_context(MessageLog(ctl))
        for topic_filter in wire.CONTROLLER_SUBSCRIPTIONS:
            await ctl.subscribe(topic_filter, qos=1)
        clients: dict[str, aiomqtt.Client] = {}
        logs: dict[str, MessageLog] = {}
        for acc in accounts.peers:
            clients[acc.client_id] = await stack.enter_async_context(acc.client(port))
            logs[acc.client_id] = await stack.enter_async_context(MessageLog(clients[acc.client_id]))
            await clients[acc.client_id].subscribe(acc.peer.topic(DOWN), qos=1)
            await clients[acc.client_id].subscribe(wire.CONTROLLER_PRESENCE_TOPIC, qos=1)

        async def barrier(peer: Peer, label: str) -> None:
            payload = f"barrier {label} for {peer}".encode()
            await ctl.publish(peer.topic(DOWN), payload, qos=1)
            await logs[peer.client_id].wait_for(peer.topic(DOWN), payload)

        pairs = [
            (a, b)
            for a in accounts.peers
            for b in accounts.peers
            if a is not b and Role.BRIDGE in (a.peer.role, b.peer.role)
        ]
        assert len(pairs) == 10
        for a, b in pairs:
            pa, pb, a_client, b_client = a.peer, b.peer, clients[a.client_id], clients[b.client_id]
            label = f"{pa}->{pb}"
            for topic_filter in _foreign_filters(pb):
                (code,) = await a_client.subscribe(topic_filter, qos=1)
                if bare_broker.kind == "embedded":  # mosquitto grants, then filters on delivery
                    assert code.is_failure, (label, topic_filter, code)  # type: ignore[union-attr]
            forbidden = f"{pa} into {pb}".encode()
            for channel in (DOWN, UP, PRESENCE):
                await a_client.publish(pb.topic(channel), forbidden, qos=1)
            await a_client.publish(wire.CONTROLLER_PRESENCE_TOPIC, forbidden, qos=1)
            # A's next permitted message reaching the controller proves A's publishes were handled.
            marker = f"marker {label}".encode()
            await a_client.publish(pa.topic(UP), marker, qos=1)
            await ctl_log.wait_for(pa.topic(UP), marker)
            # B's own traffic, which A's wildcard subscriptions must not see
            own = f"{pb} own, {pa} watching".encode()
            await ctl.publish(pb.topic(DOWN), own, qos=1)
            await b_client.publish(pb.topic(UP), own, qos=1)
            await b_client.publish(pb.topic(PRESENCE), own, qos=1)
            await ctl_log.wait_for(pb.topic(PRESENCE), own)
            await barrier(pb, label)
            await barrier(pa, label)
        for acc in accounts.peers:  # a last barrier for every peer, after the last forbidden publish
            await barrier(acc.peer, "end")

        for acc in accounts.peers:
            payloads = logs[acc.client_id].payloads()
            own_prefix = f"{acc.client_id} own,".encode()
            leaked = [
                p for _, p in payloads if b"into" in p or (b" own," in p and not p.startswith(own_prefix))
            ]
            assert not leaked, (acc.client_id, leaked)
            # each peer received on its own down topic only (the controller presence was never written)
            assert {t for t, _ in payloads} == {acc.peer.topic(DOWN)}, acc.client_id
        assert not [p for _, p in ctl_log.payloads() if b"into" in p]


async def test_bridge_and_device_credentials_do_not_cross(fleet: Fleet) -> None:
    """With the controller's own credential source (and mosquitto's generated files): a bridge's
    secret never opens a ``dev-`` session, a device's never opens a ``brg-`` one, and a bridge's
    credential cannot use (or take over) a device's client id."""
    host = load_config(await _register_host(fleet, "k1"))
    bridge = await _register_bridge(fleet, "phone-1", near="k1")
    await fleet.sync_broker_credentials(host.username, host.password)
    await _refused(fleet, username="dev-phone-1", password=bridge.password)
    await _refused(fleet, username="brg-k1", password=host.password)
    await _refused(fleet, username="brg-phone-1", password=host.password)
    await _refused(fleet, username="dev-k1", password=bridge.password)

    port = _broker_port(fleet)
    async with (
        aiomqtt.Client(
            "127.0.0.1", port, identifier="dev-k1", username="dev-k1", password=host.password, timeout=5
        ) as device,
        MessageLog(device) as device_log,
    ):
        # the bridge's credential with the device's client id: refused (embedded), or given its own
        # id instead (mosquitto, use_username_as_clientid); either way the device keeps its session
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier="dev-k1", username="brg-phone-1", password=bridge.password,
                timeout=5,
            ):  # fmt: skip
                if fleet.broker_kind == "embedded":
                    raise AssertionError("the embedded broker admitted a client id other than the username")
        await device.subscribe(wire.CONTROLLER_PRESENCE_TOPIC, qos=1)  # a round trip: still connected
        message = await _until_message(device_log, wire.CONTROLLER_PRESENCE_TOPIC)
        assert wire.decode(message).type is wire.MsgType.CONTROLLER_ONLINE  # the retained presence
    if fleet.broker_kind == "embedded":
        for actor in ("dev-phone-1", "brg-k1", "dev-k1"):
            await _wait_audit(fleet, _event(actor, "broker.connect"))


async def _until_message(log: MessageLog, topic: str, within: float = 5.0) -> bytes:
    await _until(lambda: any(t == topic for t, _ in log.payloads()), within, f"a message on {topic}")
    return next(p for t, p in log.payloads() if t == topic)


# ----------------------------------------------------------------------------------------------
# 4. Signed instructions to a real bridge.


async def test_forged_expired_misaddressed_and_replayed_instructions_to_a_bridge_are_refused(
    embedded_fleet: Fleet,
) -> None:
    """A real bridge (bumble radio, virtual BLE printer) takes only fresh instructions signed by the
    controller, addressed to it, once: every other ``bridge.offer`` or ``job.print`` on its down topic
    is refused, reaches no app, prints nothing, and is in the controller's audit log."""
    fleet = embedded_fleet
    await _register_host(fleet)
    await _register_bridge(fleet, "phone-2")
    controller = fleet.svc.controller
    async with (
        ble_rig() as rig,
        ble_printer(rig, fleet, "kiosk-1") as vp,
        running_bridge(fleet, rig, "phone-1", ["kiosk-1"]) as bridge,
    ):
        me = Peer(role=Role.BRIDGE, name="phone-1")
        other = Peer(role=Role.BRIDGE, name="phone-2")
        printer = (await fleet.api("GET", "/v1/printers/kiosk-1")).json()
        ble = wire.BlePrinter(
            name="kiosk-1",
            unique_id=printer["unique_id"],
            ble_name=printer["ble"]["name"],
            public_key=printer["ble"]["public_key"],
        )
        now = wire.now_ms()

        def offer(
            job_id: str, text: str, *, bridge: str = "phone-1", grant_until: int | None = None
        ) -> wire.BridgeOffer:
            data, digest = _job_bytes(text)
            return wire.BridgeOffer(
                offer_id=wire.new_id(),
                job_id=job_id,
                printer=ble,
                bridge=bridge,
                grant_until=now + 30_000 if grant_until is None else grant_until,
                size=len(data),
                sha256=digest,
            )

        def job(job_id: str, text: str) -> wire.JobPrint:
            data, digest = _job_bytes(text)
            return wire.JobPrint(
                job_id=job_id,
                printer="kiosk-1",
                data=base64.b64encode(data).decode(),
                sha256=digest,
                submitted_at=now,
                lease_until=now + 60_000,
            )

        def forged(body: wire.Body) -> wire.Envelope:
            return wire.Envelope.build(
                body, src=CTL, dst=me, seq=wire.Sequencer().next(), exp=now + 60_000
            ).signed(wire.SigningKey.generate())

        # genuine, and lapsed before approval: it reaches the app, which takes nothing
        genuine_offer = controller.instruction(offer("j-genuine", "GENUINE", grant_until=now - 1), me)
        unsolicited = controller.instruction(job("j-unsolicited", "UNSOLICITED"), me)
        envelopes = [
            genuine_offer,
            forged(offer("j-forged", "FORGED OFFER")),
            controller.instruction(offer("j-expired", "EXPIRED OFFER"), me, exp=now - 1),
            controller.instruction(offer("j-mis", "MISADDRESSED OFFER"), other),
            controller.instruction(offer("j-body", "OTHER BRIDGE'S OFFER", bridge="phone-2"), me),
            genuine_offer,  # replayed
            forged(job("j-forged-print", "FORGED JOB")),
            controller.instruction(job("j-expired-print", "EXPIRED JOB"), me, exp=now - 1),
            controller.instruction(job("j-mis-print", "MISADDRESSED JOB"), other),
            unsolicited,
            unsolicited,  # replayed
        ]
        await _publish_as_controller(fleet, [(me.topic(DOWN), env.encode()) for env in envelopes])

        reasons = [
            "message signed by unknown key",
            "expired instruction",
            "addressed to brg-phone-2 from ctl-main",
            "offer for bridge phone-2",
            f"unexpected or replayed bridge.offer (seq {genuine_offer.seq})",
            "job j-unsolicited was not offered to this bridge",
            f"unexpected or replayed job.print (seq {unsolicited.seq})",
        ]
        for reason in reasons:
            await _wait_audit(fleet, _event("brg-phone-1", "instruction.refused", reason))
        # only the genuine offer reached the app, once; it had lapsed, so nothing was taken
        await _until(lambda: len(bridge.outcomes) >= 1, 10, "the genuine offer's outcome")
        (outcome,) = bridge.outcomes
        assert (outcome.job_id, outcome.state) == ("j-genuine", "not-taken"), outcome
        assert vp.bytes_received == 0 and not vp.connected

        # the bridge still prints a real job on the degraded path, once; nothing else reached the printer
        res = await fleet.cli("print", "kiosk-1", "--text", "MARKER", "--wait", "--json")
        assert res.json()["state"] == "printed" and res.json()["executor"] == "brg-phone-1", res.json()
        receipts = await vp.wait_for_receipts(1, timeout=5)
        assert [r.text.count("MARKER") for r in receipts] == [1]
        assert not any(
            w in r.text for r in receipts for w in ("GENUINE", "FORGED", "EXPIRED", "MISADDRESSED")
        )
        assert [o.state for o in bridge.outcomes] == ["not-taken", "printed"]

    # the refusals as an operator sees them
    shown = (
        await fleet.cli("audit", "--actor", "brg-phone-1", "--action", "instruction.refused", "--json")
    ).json()
    details = " | ".join(e["detail"] or "" for e in shown)
    assert all(reason in details for reason in reasons), details
    assert all(e["outcome"] == "refused" for e in shown)


# ----------------------------------------------------------------------------------------------
# 5. Reports and claims from a bridge that does not hold the job.


async def test_a_bridge_cannot_report_on_or_claim_a_job_held_by_an_agent(embedded_fleet: Fleet) -> None:
    """A stolen bridge credential (its owner offline) against a job a device agent holds: forged
    reports, claims, ready and failed messages change nothing; the job prints once, on its host."""
    fleet = embedded_fleet
    async with PtyPrinter() as pty:
        cfg = await fleet.add_device("k1", pty.url)
        await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=20)
        stolen = await _register_bridge(fleet, "phone-1", near="k1")
        pty.set_fault(paper_out=True)
        job_id = (await fleet.cli("print", "k1", "--text", "HOST'S OWN JOB", "--json")).json()["id"]
        held = await wait_job(fleet, job_id, {"held"}, timeout=20)
        assert held["executor"] == "dev-k1" and held["route"] == "agent", held

        me = stolen.peer
        seq = wire.Sequencer()

        def env(body: wire.Body, src: Peer = me) -> bytes:
            return wire.Envelope.build(body, src=src, dst=CTL, seq=seq.next()).encode()

        now = wire.now_ms()
        report = wire.JobReport(
            report_id="r-forged", job_id=job_id, printer="k1", state=wire.JobState.FAILED, at=now
        )
        printed = wire.JobReport(
            report_id="r-forged-2", job_id=job_id, printer="k1", state=wire.JobState.PRINTED, at=now
        )
        async with aiomqtt.Client(
            "127.0.0.1", _broker_port(fleet), identifier=me.client_id, username=stolen.username,
            password=stolen.password, timeout=5,
        ) as client, MessageLog(client) as log:  # fmt: skip
            await client.subscribe(me.topic(DOWN), qos=1)
            await client.publish(me.topic(UP), env(report), qos=1)
            await client.publish(me.topic(UP), env(printed), qos=1)
            await client.publish(me.topic(UP), env(wire.JobClaim(job_id=job_id, printer="k1")), qos=1)
            await client.publish(
                me.topic(UP),
                env(wire.BridgeReady(offer_id="o-guess", job_id=job_id, identity="verified")),
                qos=1,
            )
            await client.publish(
                me.topic(UP), env(wire.BridgeFailed(offer_id="o-guess", job_id=job_id, reason="x")), qos=1
            )
            # as the device: on its own topic with the device's name (spoofed), and on the device's topic
            await client.publish(me.topic(UP), env(report, src=Peer(role=Role.DEVICE, name="k1")), qos=1)
            await client.publish(Peer(role=Role.DEVICE, name="k1").topic(UP), env(report), qos=1)

            # the controller's answers, signed: both forged reports acknowledged (so a resending
            # bridge stops) but not applied; the claim and the ready refused; no job handed over
            await _until(lambda: len(log.payloads()) >= 4, 10, "the controller's answers to the bridge")
            answers = [wire.decode(payload) for _, payload in log.payloads()]
            for answer in answers:
                answer.verify(stolen.public_keys)
                assert answer.dst == me.client_id
            assert sorted(a.type for a in answers) == sorted(
                [*[wire.MsgType.REPORT_ACK] * 2, *[wire.MsgType.JOB_GRANT] * 2]
            )
            acked = {
                rid
                for a in answers
                if a.type is wire.MsgType.REPORT_ACK
                for rid in a.parsed(wire.ReportAck).report_ids
            }
            assert acked == {"r-forged", "r-forged-2"}
            grants = [a.parsed(wire.JobGrant) for a in answers if a.type is wire.MsgType.JOB_GRANT]
            assert [(g.granted, g.reason) for g in grants] == [
                (False, "job routed to dev-k1"),
                (False, "not your offer"),
            ]

        forged = await _wait_audit(fleet, lambda e: e["action"] == "report.forged")
        assert forged["actor"] == "brg-phone-1" and forged["target"] == job_id
        claim = await _wait_audit(fleet, lambda e: e["action"] == "claim.forged")
        assert claim["actor"] == "brg-phone-1" and claim["target"] == job_id
        await _wait_audit(fleet, lambda e: e["action"] == "message.spoofed" and e["actor"] == "brg-phone-1")
        await _wait_audit(
            fleet,
            lambda e: (
                e["action"] == "broker.publish"
                and e["actor"] == "brg-phone-1"
                and "dev/k1/up" in (e["target"] or "")
            ),
        )
        job = (await fleet.api("GET", f"/v1/jobs/{job_id}")).json()
        assert (job["state"], job["executor"], job["route"]) == ("held", "dev-k1", "agent"), job
        assert not any(e["source"] == "brg-phone-1" for e in job["events"])

        pty.set_fault(paper_out=False)
        done = await wait_job(fleet, job_id, {"printed", "failed", "unknown"}, timeout=30)
        assert done["state"] == "printed" and done["executor"] == "dev-k1", done
        receipts = await pty.wait_for_receipts(1, timeout=5)
        assert sum(r.text.count("HOST'S OWN JOB") for r in receipts) == 1
        assert json.dumps(done).count("brg-phone-1") == 0


async def test_the_devices_commands_do_not_reach_a_bridge(embedded_fleet: Fleet) -> None:
    """`printfleet devices disable|enable|rotate|remove` name printer hosts only: used on a bridge
    they refuse and change nothing (a half-done disable would leave its session up)."""
    fleet = embedded_fleet
    await _register_host(fleet)
    config = await _register_bridge(fleet, "phone-1")
    async with ble_rig() as rig, open_bridge(config, backend=rig.radio) as bridge:
        await wait_bridge_online(fleet, "phone-1")
        for args in (
            ("devices", "disable", "phone-1"),
            ("devices", "enable", "phone-1"),
            ("devices", "rotate", "phone-1", "--out", str(fleet.root / "x.toml")),
            ("devices", "remove", "phone-1"),
        ):
            res = await fleet.cli(*args, check=False)
            assert res.code == 1 and "no device named 'phone-1'" in res.stderr, (args, res)
        resp = await fleet.api("POST", "/v1/devices/phone-1/enrollment")
        assert resp.status_code == 404, resp.text
        assert not (fleet.root / "x.toml").exists()
        view = (await fleet.api("GET", "/v1/bridges/phone-1")).json()
        assert view["enabled"] is True and view["online"] is True and bridge.online.is_set()
    # its secret is the one it had
    async with aiomqtt.Client(
        "127.0.0.1", _broker_port(fleet), identifier=config.username, username=config.username,
        password=config.password, timeout=5,
    ):  # fmt: skip
        pass
