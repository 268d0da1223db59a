"""The MQTT peer session (kernel.session) against the embedded broker, in process, on port 0.

The controller's side is a :class:`~kernel.session.Link` greeted by the controller's own
:class:`~cloud.fleet.link.ControllerGreeter` (a retained, signed ``ctl.online``; a retained, signed
``ctl.offline`` as its will), on the same session the controller's fleet link runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker import EmbeddedBroker, ListenerSpec, StaticCredentials
from broker.testing import Account, free_port, make_account
from cloud.fleet.link import ControllerGreeter
from device_agent.agent import Agent
from device_agent.config import parse_config
from device_agent.journal import Journal
from kernel import wire
from kernel.config import BrokerAddress
from kernel.session import (
    TRANSITIONS,
    Backoff,
    Connected,
    ConnectFailed,
    ConnectionLost,
    ControllerPresence,
    ControllerState,
    ControllerStatus,
    Disconnected,
    FileStore,
    Instruction,
    Link,
    LinkSettings,
    LinkState,
    MemoryStore,
    Outbound,
    PeerSession,
    PeerSettings,
    Received,
    SessionMessage,
    SessionStore,
    StoreError,
)
from phone_bridge.bridge import open_bridge
from phone_bridge.config import BridgeConfig

CTL = wire.Peer(role=wire.Role.CONTROLLER, name="main")
DEV = wire.Peer(role=wire.Role.DEVICE, name="k1")
BRG = wire.Peer(role=wire.Role.BRIDGE, name="phone-1")
WAIT_S = 15.0

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Fleet:
    controller: Account
    device: Account
    bridge: Account
    key: wire.SigningKey = field(default_factory=wire.SigningKey.generate)

    def credentials(self) -> StaticCredentials:
        return StaticCredentials.of(
            self.controller.credential, self.device.credential, self.bridge.credential
        )

    @property
    def keys(self) -> dict[str, Any]:
        return wire.parse_public_keys([self.key.public_b64()])


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(controller=make_account(CTL), device=make_account(DEV), bridge=make_account(BRG))


@contextlib.asynccontextmanager
async def broker(fleet: Fleet, port: int = 0) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(
        listeners=[ListenerSpec(host="127.0.0.1", port=port)], credentials=fleet.credentials()
    ) as b:
        yield b


def at(port: int) -> BrokerAddress:
    return BrokerAddress(host="127.0.0.1", port=port)


# -- the controller's side, on a Link --------------------------------------------------------------


class Controller:
    """A controller link in a test: sends signed instructions, collects what peers send up."""

    def __init__(self, fleet: Fleet, port: int, session: int = 1) -> None:
        self.greeter = ControllerGreeter(peer=CTL, session=session, key=lambda: fleet.key)
        self.link = Link(
            LinkSettings(
                addresses=(at(port),),
                client_id=CTL.client_id,
                username=fleet.controller.peer.client_id,
                password=fleet.controller.secret,
                subscriptions=wire.CONTROLLER_SUBSCRIPTIONS,
            ),
            greeter=self.greeter,
        )
        self.inbox: asyncio.Queue[tuple[str, wire.Envelope]] = asyncio.Queue()

    def instruction(self, body: wire.Body, dst: wire.Peer, *, ttl_ms: int = 60_000) -> wire.Envelope:
        env = wire.Envelope.build(
            body, src=CTL, dst=dst, seq=self.greeter.seq.next(), exp=wire.now_ms() + ttl_ms
        )
        return env.signed(self.greeter.key())

    async def send(self, env: wire.Envelope, dst: wire.Peer) -> None:
        out = Outbound(topic=dst.topic(wire.Channel.DOWN), payload=env.encode())
        assert await self.link.publish(out), "the controller link is not online"

    async def expect(self, msg_type: wire.MsgType, within: float = WAIT_S) -> wire.Envelope:
        """The next message of ``msg_type`` a peer sent (others are passed over)."""
        async with asyncio.timeout(within):
            while True:
                _topic, env = await self.inbox.get()
                if env.type is msg_type:
                    return env

    async def _collect(self) -> None:
        async for event in self.link.events():
            if isinstance(event, Received) and event.topic != wire.CONTROLLER_PRESENCE_TOPIC:
                await self.inbox.put((event.topic, wire.decode(event.payload)))


@contextlib.asynccontextmanager
async def controller(fleet: Fleet, port: int, session: int = 1) -> AsyncIterator[Controller]:
    ctl = Controller(fleet, port, session)
    async with ctl.link:
        collector = asyncio.create_task(ctl._collect(), name="test-controller-inbox")
        try:
            async with asyncio.timeout(WAIT_S):
                await ctl.link.online.wait()
            yield ctl
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector


# -- the peer's side -------------------------------------------------------------------------------


def settings(fleet: Fleet, account: Account, *ports: int, **kw: Any) -> PeerSettings:
    return PeerSettings(
        peer=account.peer,
        controller=CTL,
        addresses=tuple(at(p) for p in ports),
        username=account.peer.client_id,
        password=account.secret,
        keepalive=5,
        backoff=Backoff(initial=0.05, maximum=0.5),
        **kw,
    )


def birth(session: int) -> wire.Birth:
    return wire.Birth(session=session, boot_id="b" * 32, version="0", started_at=wire.now_ms(), keepalive=5)


@dataclass
class Running:
    session: PeerSession
    messages: asyncio.Queue[SessionMessage]

    async def next(self, kind: type[T], within: float = WAIT_S) -> T:
        async with asyncio.timeout(within):
            while True:
                msg = await self.messages.get()
                if isinstance(msg, kind):
                    return msg


@contextlib.asynccontextmanager
async def peer(
    fleet: Fleet, account: Account, store: SessionStore, *ports: int, **kw: Any
) -> AsyncIterator[Running]:
    session = PeerSession(settings(fleet, account, *ports, **kw), store=store, keys=fleet.keys, birth=birth)
    queue: asyncio.Queue[SessionMessage] = asyncio.Queue()

    async def read() -> None:
        async for msg in session.messages():
            await queue.put(msg)

    async with session, asyncio.TaskGroup() as tg:
        reader = tg.create_task(read(), name="test-session-reader")
        try:
            yield Running(session=session, messages=queue)
        finally:
            reader.cancel()


# -- tests -------------------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(initial=0.2, factor=2, maximum=10, jitter=0.5)
    rng = random.Random(7)
    delays = [b.delay(n, rng) for n in range(12)]
    assert all(0.1 <= d <= 0.3 for d in delays[:1])
    assert all(5.0 <= d <= 15.0 for d in delays[8:])  # capped at 10 s, +-50 %
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered: no two alike
    for bad in ({"initial": 0}, {"initial": 20, "maximum": 10}, {"factor": 0.5}, {"jitter": 1.0}):
        with pytest.raises(ValueError, match="backoff"):
            Backoff(**bad)


def test_link_lifecycle_is_data() -> None:
    assert LinkState.ONLINE in TRANSITIONS[LinkState.CONNECTING]
    assert LinkState.ONLINE not in TRANSITIONS[LinkState.BACKING_OFF]  # always through CONNECTING
    assert TRANSITIONS[LinkState.CLOSED] == frozenset()
    assert all(
        LinkState.CLOSING in TRANSITIONS[s]
        for s in LinkState
        if s not in (LinkState.CLOSING, LinkState.CLOSED)
    )


def test_link_settings_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        LinkSettings(addresses=(), client_id="dev-x")
    with pytest.raises(ValueError, match="TLS"):
        LinkSettings(addresses=(BrokerAddress(host="h", port=8883, tls=True),), client_id="dev-x")
    with pytest.raises(ValueError, match="keepalive"):
        LinkSettings(addresses=(at(1),), client_id="dev-x", keepalive=0)


async def test_file_store_survives_a_new_object_and_refuses_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "session.json"
    first = FileStore(path)
    n1 = await first.next_session()
    await first.set_kv("seq_floor:ctl-main", "42")
    again = FileStore(path)
    assert await again.get_kv("seq_floor:ctl-main") == "42"
    assert await again.next_session() > n1
    assert path.stat().st_mode & 0o077 == 0  # the owner's only
    path.write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a table"):
        await FileStore(path).get_kv("x")


async def test_failover_past_a_dead_address(fleet: Fleet) -> None:
    dead = free_port()
    async with broker(fleet) as b, peer(fleet, fleet.device, MemoryStore(), dead, b.port) as p:
        connected = await p.next(Connected)
        assert connected.address == at(b.port)
        assert p.session.address == at(b.port) and p.session.online.is_set()
        assert isinstance(p.session.last_error, ConnectFailed)
        assert p.session.last_error.address == at(dead)


async def test_reconnects_after_the_broker_restarts(fleet: Fleet) -> None:
    async with contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(broker(fleet))
        port = b.port
        p = await stack.enter_async_context(peer(fleet, fleet.device, MemoryStore(), port))
        first = await p.next(Connected)
        await b.stop()
        lost = await p.next(Disconnected)
        assert isinstance(lost.error, ConnectionLost) and lost.error.address == at(port)
        assert not p.session.online.is_set()
        assert not await p.session.publish(wire.SyncRequest(session=first.session))  # offline: not sent
        async with broker(fleet, port), controller(fleet, port) as ctl:
            again = await p.next(Connected)
            assert again.session > first.session  # a new session number for the new connection
            birth_env = await ctl.expect(wire.MsgType.BIRTH)
            assert birth_env.parsed(wire.Birth).session == again.session
            # and the session works: an instruction reaches its owner
            await ctl.send(ctl.instruction(wire.ReportAck(report_ids=("r1",)), DEV), DEV)
            got = await p.next(Instruction)
            assert got.body == wire.ReportAck(report_ids=("r1",))


async def _journal(path: Path) -> Journal:
    journal = Journal(path)
    await journal.open()
    return journal


@pytest.mark.parametrize("side", ["agent", "bridge"])
async def test_a_replayed_instruction_is_refused_after_the_session_restarts(
    fleet: Fleet, tmp_path: Path, side: str
) -> None:
    """The replay guard's floor is in the store: a restarted session still refuses an instruction
    it acted on before (the agent's store is its SQLite journal, the bridge's a file)."""
    account = fleet.device if side == "agent" else fleet.bridge
    me = account.peer
    store_path = tmp_path / ("journal.db" if side == "agent" else "session.json")

    async def store() -> tuple[SessionStore, Journal | None]:
        if side == "agent":
            journal = await _journal(store_path)
            return journal, journal
        return FileStore(store_path), None

    async with broker(fleet) as b, controller(fleet, b.port) as ctl:
        first = ctl.instruction(wire.ReportAck(report_ids=("first",)), me)
        s1, j1 = await store()
        async with peer(fleet, account, s1, b.port) as p:
            await p.next(Connected)
            await ctl.send(first, me)
            assert (await p.next(Instruction)).id == first.id
        if j1 is not None:
            await j1.close()

        s2, j2 = await store()
        try:
            async with peer(fleet, account, s2, b.port) as p:
                await p.next(Connected)
                await ctl.send(first, me)  # replayed to the restarted session
                fresh = ctl.instruction(wire.ReportAck(report_ids=("fresh",)), me)
                await ctl.send(fresh, me)
                assert (await p.next(Instruction)).id == fresh.id  # the replay never reached its owner
                refused = (await ctl.expect(wire.MsgType.REFUSED)).parsed(wire.Refused)
                assert refused.message_id == first.id
                assert "replayed instruction" in refused.reason and f"(seq {first.seq})" in refused.reason
        finally:
            if j2 is not None:
                await j2.close()


async def test_a_restarted_agent_refuses_a_replayed_instruction(fleet: Fleet, tmp_path: Path) -> None:
    """The same through a real agent: a heartbeat ack it answered before its restart is refused
    after it (no echo), a fresh one is answered."""
    async with broker(fleet) as b, controller(fleet, b.port) as ctl:
        config = parse_config(
            {
                "device": {"name": DEV.name},
                "mqtt": {
                    "urls": [str(at(b.port))],
                    "username": DEV.client_id,
                    "password": fleet.device.secret,
                    "keepalive": 5,
                },
                "controller": {
                    "http": "http://127.0.0.1:9",
                    "name": CTL.name,
                    "public_keys": [fleet.key.public_b64()],
                },
                "agent": {"state_dir": str(tmp_path / "k1")},
            }
        )

        def ack(hb_seq: int) -> wire.Envelope:
            return ctl.instruction(
                wire.HeartbeatAck(hb_seq=hb_seq, ctl_ts=wire.now_ms(), config_version=0), DEV
            )

        async def echo() -> int:
            return (await ctl.expect(wire.MsgType.HEARTBEAT_ECHO)).parsed(wire.HeartbeatEcho).hb_seq

        first = ack(4242)
        async with _running(Agent(config).run()):
            await ctl.expect(wire.MsgType.BIRTH)
            await ctl.send(first, DEV)
            assert await echo() == 4242
        async with _running(Agent(config).run()):
            await ctl.expect(wire.MsgType.BIRTH)
            await ctl.send(first, DEV)  # replayed
            await ctl.send(ack(4343), DEV)
            refused = (await ctl.expect(wire.MsgType.REFUSED)).parsed(wire.Refused)
            assert refused.message_id == first.id and "replayed instruction" in refused.reason
            assert await echo() == 4343  # never 4242 again


async def test_a_restarted_bridge_refuses_a_replayed_offer(fleet: Fleet, tmp_path: Path) -> None:
    """The same through a real bridge: an offer its app saw before the restart never reaches the
    app again (the bridge's replay guard is in its state directory now, not only in memory)."""
    async with broker(fleet) as b, controller(fleet, b.port) as ctl:
        config = _bridge_config(fleet, b.port, tmp_path)
        printer = wire.BlePrinter(name="kiosk-1", unique_id="u-1", ble_name="K1")

        def offer(job_id: str) -> wire.Envelope:
            body = wire.BridgeOffer(
                offer_id=wire.new_id(),
                job_id=job_id,
                printer=printer,
                bridge=BRG.name,
                grant_until=wire.now_ms() + 30_000,
                size=1,
                sha256="0" * 64,
            )
            return ctl.instruction(body, BRG)

        first = offer("j-first")
        async with open_bridge(config, backend="bleak") as bridge:
            await ctl.expect(wire.MsgType.BIRTH)
            await ctl.send(first, BRG)
            async with asyncio.timeout(WAIT_S):
                assert (await anext(bridge.instructions())).job_id == "j-first"
        async with open_bridge(config, backend="bleak") as bridge:
            await ctl.expect(wire.MsgType.BIRTH)
            await ctl.send(first, BRG)  # replayed
            await ctl.send(offer("j-fresh"), BRG)
            async with asyncio.timeout(WAIT_S):
                assert (await anext(bridge.instructions())).job_id == "j-fresh"
            refused = (await ctl.expect(wire.MsgType.REFUSED)).parsed(wire.Refused)
            assert refused.message_id == first.id
            assert f"unexpected or replayed bridge.offer (seq {first.seq})" in refused.reason


@contextlib.asynccontextmanager
async def _running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.create_task(coro, name="test-agent")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _bridge_config(fleet: Fleet, port: int, tmp_path: Path) -> BridgeConfig:
    return BridgeConfig(
        name=BRG.name,
        brokers=(at(port),),
        username=BRG.client_id,
        password=fleet.bridge.secret,
        controller_http="http://127.0.0.1:9",
        controller_name=CTL.name,
        public_keys=fleet.keys,
        keepalive=5,
        state_dir=tmp_path / "bridge-state",
    )


async def test_forged_misaddressed_and_expired_instructions_are_refused(fleet: Fleet) -> None:
    async with (
        broker(fleet) as b,
        controller(fleet, b.port) as ctl,
        peer(fleet, fleet.device, MemoryStore(), b.port) as p,
    ):
        await p.next(Connected)
        body = wire.ReportAck(report_ids=("x",))
        forged = wire.Envelope.build(
            body, src=CTL, dst=DEV, seq=ctl.greeter.seq.next(), exp=wire.now_ms() + 60_000
        )
        cases = [
            (forged.signed(wire.SigningKey.generate()), "signed by unknown key"),
            (ctl.instruction(body, BRG), "addressed to brg-phone-1"),
            (ctl.instruction(body, DEV, ttl_ms=-1), "expired instruction"),
        ]
        for env, _reason in cases:
            # what is addressed elsewhere is published where this peer reads it, as an attacker would
            await ctl.send(env, DEV)
        refusals = [(await ctl.expect(wire.MsgType.REFUSED)).parsed(wire.Refused) for _ in cases]
        for (_env, reason), got in zip(cases, refusals, strict=True):
            assert reason in got.reason, (reason, got)
        assert p.session.pending_refusals == 3  # resent until acknowledged
        ids = tuple(r.report_id for r in refusals if r.report_id is not None)
        await ctl.send(ctl.instruction(wire.ReportAck(report_ids=ids), DEV), DEV)
        assert isinstance((await p.next(Instruction)).body, wire.ReportAck)
        assert p.session.pending_refusals == 0
        assert p.messages.empty()  # none of the refused reached the owner


async def test_the_bridge_follows_controller_presence(fleet: Fleet, tmp_path: Path) -> None:
    """A bridge sees the controller go offline (its will) and come back, and announces itself again
    to a restarted controller (a new controller session)."""
    async with broker(fleet) as b, contextlib.AsyncExitStack() as outer:
        config = _bridge_config(fleet, b.port, tmp_path)
        # The controller first, so that it hears the bridge's birth. (A peer that connected before
        # any controller had ever been online announces itself at its next heartbeat instead: the
        # first presence it sees is no restart.) The bridge outlives this first controller.
        async with controller(fleet, b.port, session=7) as ctl:
            bridge = await outer.enter_async_context(open_bridge(config, backend="bleak"))
            async with asyncio.timeout(WAIT_S):
                await bridge.controller_online.wait()
            assert bridge.controller == ControllerStatus(state=ControllerState.ONLINE, session=7)
            await ctl.expect(wire.MsgType.BIRTH)
            assert await b.kick(CTL.client_id)  # the controller's connection dies: its will fires
            await _until(lambda: not bridge.controller_online.is_set())
            assert bridge.controller == ControllerStatus(state=ControllerState.OFFLINE, session=7)
            await _until(bridge.controller_online.is_set)  # its link reconnected by itself
        # then a restarted controller (a new session)
        async with controller(fleet, b.port, session=8) as ctl2:
            again = await ctl2.expect(wire.MsgType.BIRTH)  # announced again to the new session
            assert bridge.controller.session == 8 and bridge.controller_online.is_set()
            assert (
                again.parsed(wire.Birth).session
                == (await ctl2.expect(wire.MsgType.SYNC_REQUEST)).parsed(wire.SyncRequest).session
            )


async def test_a_stale_controller_presence_never_moves_it_backwards(fleet: Fleet) -> None:
    async with broker(fleet) as b, peer(fleet, fleet.device, MemoryStore(), b.port) as p:
        async with controller(fleet, b.port, session=5):
            first = await p.next(ControllerPresence)
            assert first.online and first.status.session == 5 and not first.restarted
        async with controller(fleet, b.port, session=6):
            restarted = await p.next(ControllerPresence)
            assert restarted.restarted and restarted.status.session == 6
        async with controller(fleet, b.port, session=4) as old:  # a late birth of an older session
            marker = old.instruction(wire.ReportAck(report_ids=("after",)), DEV)
            await old.send(marker, DEV)  # published after its birth, so it arrives after it
            got = await p.next(Instruction)
        assert got.id == marker.id
        assert p.messages.empty()  # no presence change came of the stale birth
        assert p.session.controller.session == 6
        assert p.session.controller.state is ControllerState.ONLINE


async def _until(predicate: Callable[[], bool], within: float = WAIT_S) -> None:
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)  # polling a flag of the component under test, bounded
