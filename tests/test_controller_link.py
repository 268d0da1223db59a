"""The controller's fleet link (cloud.fleet.link) on the kernel's peer session, against the embedded
broker in process, on port 0: its settings, its signed presence, what it accepts and refuses, what
it sends, and what it does when its connection is cut."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker import EmbeddedBroker, ListenerSpec, StaticCredentials
from broker.testing import Account, free_port, make_account
from cloud.config import DataDir
from cloud.fleet.link import ControllerGreeter, FleetLink, link_settings
from cloud.keys import Keyring
from kernel import wire
from kernel.config import BrokerAddress
from kernel.session import (
    ConnectionLost,
    Link,
    LinkSettings,
    LinkState,
    Outbound,
    Received,
)

CTL = wire.Peer(role=wire.Role.CONTROLLER, name="main")
DEV = wire.Peer(role=wire.Role.DEVICE, name="k1")
OTHER = wire.Peer(role=wire.Role.DEVICE, name="k2")
SESSION = 7
WAIT_S = 15.0
ROOT = Path(__file__).resolve().parents[1]


def at(port: int) -> BrokerAddress:
    return BrokerAddress(host="127.0.0.1", port=port)


@dataclass
class Accounts:
    controller: Account = field(default_factory=lambda: make_account(CTL))
    device: Account = field(default_factory=lambda: make_account(DEV))
    other: Account = field(default_factory=lambda: make_account(OTHER))

    def credentials(self) -> StaticCredentials:
        return StaticCredentials.of(self.controller.credential, self.device.credential, self.other.credential)


@pytest.fixture(scope="module")
def accounts() -> Accounts:
    return Accounts()


@contextlib.asynccontextmanager
async def broker(accounts: Accounts) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(
        listeners=[ListenerSpec(host="127.0.0.1", port=0)], credentials=accounts.credentials()
    ) as b:
        yield b


@dataclass
class Running:
    """A running :class:`FleetLink`, and what it handed on."""

    link: FleetLink
    keyring: Keyring
    delivered: asyncio.Queue[tuple[wire.Peer, wire.Envelope]] = field(default_factory=asyncio.Queue)
    refused: asyncio.Queue[tuple[str, str, str | None, str]] = field(default_factory=asyncio.Queue)
    ups: asyncio.Queue[None] = field(default_factory=asyncio.Queue)

    async def deliver(self, peer: wire.Peer, env: wire.Envelope) -> None:
        await self.delivered.put((peer, env))

    async def security(self, actor: str, action: str, target: str | None, detail: str) -> None:
        await self.refused.put((actor, action, target, detail))


@contextlib.asynccontextmanager
async def fleet_link(accounts: Accounts, port: int, tmp_path: Path) -> AsyncIterator[Running]:
    keyring = Keyring(DataDir(root=tmp_path))
    link = FleetLink(
        peer=CTL,
        settings=link_settings(peer=CTL, addresses=(at(port),), secret=accounts.controller.secret),
        keyring=keyring,
        session_number=SESSION,
        instruction_ttl_s=60.0,
    )
    running = Running(link=link, keyring=keyring)
    task = asyncio.create_task(
        link.run(running.deliver, running.security, came_up=lambda: running.ups.put_nowait(None)),
        name="test-fleet-link",
    )
    try:
        async with asyncio.timeout(WAIT_S):
            await link.online.wait()
        yield running
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Device:
    """A device's side, on a bare kernel link: reads the controller's presence and its own down topic."""

    link: Link
    received: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)

    async def next_on(self, topic: str) -> wire.Envelope:
        async with asyncio.timeout(WAIT_S):
            while True:
                got = await self.received.get()
                if got.topic == topic:
                    return wire.decode(got.payload)

    async def send_up(self, env: wire.Envelope) -> None:
        assert await self.link.publish(Outbound(topic=DEV.topic(wire.Channel.UP), payload=env.encode()))


@contextlib.asynccontextmanager
async def device(accounts: Accounts, port: int) -> AsyncIterator[Device]:
    link = Link(
        LinkSettings(
            addresses=(at(port),),
            client_id=DEV.client_id,
            username=DEV.client_id,
            password=accounts.device.secret,
            subscriptions=(wire.CONTROLLER_PRESENCE_TOPIC, DEV.topic(wire.Channel.DOWN)),
        )
    )
    dev = Device(link=link)

    async def collect() -> None:
        async for event in link.events():
            if isinstance(event, Received):
                await dev.received.put(event)

    async with link:
        link.start_task(collect(), name="test-device-inbox")
        async with asyncio.timeout(WAIT_S):
            await link.online.wait()
        yield dev


def up(body: wire.Body, src: wire.Peer = DEV) -> wire.Envelope:
    return wire.Envelope.build(body, src=src, dst=CTL, seq=wire.Sequencer().next())


# -- the settings and the greeting, without a broker -------------------------------------------------


def test_link_settings_are_the_controllers() -> None:
    s = link_settings(peer=CTL, addresses=(at(1883),), secret="s3cret")
    assert (s.client_id, s.username, s.password) == ("ctl-main", "ctl-main", "s3cret")
    assert s.keepalive == 10 and s.clean_session
    assert s.subscriptions == wire.CONTROLLER_SUBSCRIPTIONS
    assert s.backoff.maximum == 5.0  # reconnect delays capped at 5 s (then jittered)
    assert s.queue_size >= 10_000  # as deep as the inbound lanes
    assert s.tls is None
    with pytest.raises(ValueError, match="TLS"):  # mqtts:// needs the fleet's CA
        link_settings(peer=CTL, addresses=(BrokerAddress(host="h", port=8883, tls=True),), secret="s")


async def test_greeter_signs_a_retained_will_and_birth_with_the_session_number(tmp_path: Path) -> None:
    keyring = Keyring(DataDir(root=tmp_path))
    oldest = keyring.active
    keyring.rotate()  # presence is signed with the oldest key still in use: every peer trusts it
    seq = wire.Sequencer()
    greeter = ControllerGreeter(peer=CTL, session=SESSION, key=lambda: keyring.keys[-1], seq=seq)
    keys = wire.parse_public_keys([oldest.public_b64()])

    will = await greeter.will()
    assert (will.topic, will.retain, will.qos) == (wire.CONTROLLER_PRESENCE_TOPIC, True, 1)
    will_env = wire.decode(will.payload)
    will_env.verify(keys)
    assert will_env.parsed(wire.ControllerOffline) == wire.ControllerOffline(session=SESSION)
    assert (will_env.src, will_env.seq) == (CTL.client_id, 0)

    sent: list[Outbound] = []

    async def send(message: Outbound) -> None:
        sent.append(message)

    before = seq.next()
    await greeter.greet(send)
    await greeter.greet(send)
    assert [(m.topic, m.retain) for m in sent] == [(wire.CONTROLLER_PRESENCE_TOPIC, True)] * 2
    births = [wire.decode(m.payload) for m in sent]
    for env in births:
        env.verify(keys)
        assert env.parsed(wire.ControllerOnline).session == SESSION
    assert before < births[0].seq < births[1].seq  # a fresh number from the shared sequencer each time


# -- on a broker ---------------------------------------------------------------------------------------


async def test_presence_inbound_checks_and_signed_instructions(accounts: Accounts, tmp_path: Path) -> None:
    async with broker(accounts) as b, fleet_link(accounts, b.port, tmp_path) as ctl:
        assert ctl.link.state is LinkState.ONLINE
        async with asyncio.timeout(WAIT_S):
            await ctl.ups.get()  # came_up: the outbox is woken there
        async with device(accounts, b.port) as dev:
            # the retained presence a device finds on connecting
            online = await dev.next_on(wire.CONTROLLER_PRESENCE_TOPIC)
            online.verify(wire.parse_public_keys(ctl.keyring.public_keys()))
            assert online.parsed(wire.ControllerOnline).session == SESSION

            # an upstream message from its owner is handed on
            await dev.send_up(up(wire.SyncRequest(session=1)))
            async with asyncio.timeout(WAIT_S):
                peer, env = await ctl.delivered.get()
            assert peer == DEV and env.type is wire.MsgType.SYNC_REQUEST

            # one claiming another sender is refused and recorded; garbage too
            await dev.send_up(up(wire.SyncRequest(session=1), src=OTHER))
            async with asyncio.timeout(WAIT_S):
                actor, action, target, _ = await ctl.refused.get()
            assert (actor, action, target) == (DEV.client_id, "message.spoofed", OTHER.client_id)
            assert await dev.link.publish(Outbound(topic=DEV.topic(wire.Channel.UP), payload=b"not json"))
            async with asyncio.timeout(WAIT_S):
                _, action, target, _ = await ctl.refused.get()
            assert (action, target) == ("message.invalid", DEV.topic(wire.Channel.UP))
            assert ctl.delivered.empty()

            # an instruction: addressed, signed with a key the device trusts, expiring
            assert await ctl.link.send(DEV, wire.ReportAck(report_ids=("r1",)))
            got = await dev.next_on(DEV.topic(wire.Channel.DOWN))
            got.verify(wire.parse_public_keys(ctl.keyring.public_keys()))
            assert (got.src, got.dst, got.type) == (CTL.client_id, DEV.client_id, wire.MsgType.REPORT_ACK)
            assert got.exp is not None and got.exp > wire.now_ms()
            assert got.seq > online.seq


async def test_a_cut_connection_fires_the_will_then_the_link_comes_back(
    accounts: Accounts, tmp_path: Path
) -> None:
    """Kicked by the broker: the retained will says offline, the link reports why, sends nothing
    while down, reconnects by itself, wakes the outbox again and says online with the same session."""
    async with broker(accounts) as b, fleet_link(accounts, b.port, tmp_path) as ctl:
        await ctl.ups.get()
        async with device(accounts, b.port) as dev:
            first = await dev.next_on(wire.CONTROLLER_PRESENCE_TOPIC)
            assert await b.kick(CTL.client_id)
            offline = await dev.next_on(wire.CONTROLLER_PRESENCE_TOPIC)
            assert offline.parsed(wire.ControllerOffline) == wire.ControllerOffline(session=SESSION)
            again = await dev.next_on(wire.CONTROLLER_PRESENCE_TOPIC)
            assert again.parsed(wire.ControllerOnline).session == SESSION
            assert again.seq > first.seq
            async with asyncio.timeout(WAIT_S):
                await ctl.ups.get()  # came_up again: the outbox looks at once
            assert isinstance(ctl.link.last_error, ConnectionLost)
            assert ctl.link.last_error.address == at(b.port)
            await ctl.link.online.wait()
            assert await ctl.link.send(DEV, wire.ReportAck(report_ids=("r2",)))


async def test_sends_nothing_before_it_is_online(accounts: Accounts, tmp_path: Path) -> None:
    """Not started, or no broker to be had: an instruction is not sent (False, nothing raised)."""
    link = FleetLink(
        peer=CTL,
        settings=link_settings(peer=CTL, addresses=(at(free_port()),), secret=accounts.controller.secret),
        keyring=Keyring(DataDir(root=tmp_path)),
        session_number=SESSION,
        instruction_ttl_s=60.0,
    )
    assert (link.state, link.online.is_set()) == (LinkState.NEW, False)
    assert not await link.send(DEV, wire.ReportAck(report_ids=("r1",)))

    async def nothing(*_: object) -> None:
        raise AssertionError("nothing can arrive without a broker")

    task = asyncio.create_task(link.run(nothing, nothing, came_up=lambda: None), name="test-offline-link")
    try:
        await asyncio.sleep(0)  # the session starts connecting (to a port nobody listens on)
        assert not await link.send(DEV, wire.ReportAck(report_ids=("r2",)))
        assert not link.online.is_set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert link.state is LinkState.CLOSED


# -- one MQTT session in the codebase -------------------------------------------------------------------


def test_the_controller_speaks_mqtt_only_through_the_kernel_session() -> None:
    """No module of cloud/ imports the MQTT client library: every publish and subscribe of the
    controller goes through kernel.session."""
    offenders = []
    for path in sorted((ROOT / "cloud").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "aiomqtt"]
    assert offenders == []
