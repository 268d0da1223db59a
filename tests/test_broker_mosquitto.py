"""broker.mosquitto: the exported configuration, and mosquitto running with it.

The behavioural checks shared with the embedded broker (authentication, ACLs, retained messages,
wills, keep-alive, pair-wise isolation) run against mosquitto through the ``any_broker`` fixture of
tests/test_broker_embedded.py; this module covers the export itself and what is mosquitto-only.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiomqtt
import pytest

from broker import BrokerError, Credential, export_mosquitto, hash_password, verify_password
from broker.testing import MessageLog, MosquittoProcess, make_account, mosquitto_available
from kernel import wire
from kernel.wire import Channel, Peer, Role

CTL = make_account(Peer(role=Role.CONTROLLER, name="main"))
DEV_A = make_account(Peer(role=Role.DEVICE, name="a"))
BRG_X = make_account(Peer(role=Role.BRIDGE, name="x"))
OFF = make_account(Peer(role=Role.DEVICE, name="off"), enabled=False)

needs_mosquitto = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
]


def test_export_writes_conf_passwd_and_acl(tmp_path: Path) -> None:
    files = export_mosquitto(
        tmp_path / "out",
        [CTL.credential, DEV_A.credential, BRG_X.credential, OFF.credential],
        listener_port=18830,
        max_packet_bytes=70000,
        persistence_dir=tmp_path / "data",
    )
    conf = files.conf.read_text().splitlines()
    # The listener line precedes every listener option (else mosquitto opens 0.0.0.0:1883 too).
    assert conf.index("listener 18830 127.0.0.1") < conf.index("use_username_as_clientid true")
    for line in (
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        "max_packet_size 70000",
        "max_queued_messages 10000",
        "persistence true",
        f"persistence_location {(tmp_path / 'data').resolve()}/",
    ):
        assert line in conf
    assert files.passwd.stat().st_mode & 0o077 == 0

    passwd = dict(line.split(":", 1) for line in files.passwd.read_text().splitlines())
    assert set(passwd) == {"ctl-main", "dev-a", "brg-x"}  # the disabled credential is left out
    assert verify_password(DEV_A.secret, passwd["dev-a"])

    acl = files.acl.read_text()
    assert "user dev-off" not in acl
    block = re.search(r"user dev-a\n((?:topic .*\n?)+)", acl)
    assert block is not None
    assert block.group(1).split("\n")[:4] == [
        "topic read pf/v1/dev/a/down",
        "topic write pf/v1/dev/a/up",
        "topic write pf/v1/dev/a/presence",
        f"topic read {wire.CONTROLLER_PRESENCE_TOPIC}",
    ]
    assert f"topic readwrite {wire.CONTROLLER_PRESENCE_TOPIC}" in acl  # the controller's
    assert "topic read pf/v1/brg/x/down" in acl


@pytest.mark.parametrize("port", [0, 70000])
def test_export_rejects_bad_port(tmp_path: Path, port: int) -> None:
    with pytest.raises(BrokerError):
        export_mosquitto(tmp_path, [DEV_A.credential], listener_port=port)


def test_export_rejects_duplicate_usernames(tmp_path: Path) -> None:
    again = Credential(peer=DEV_A.peer, password_hash=hash_password("other"))
    with pytest.raises(BrokerError, match="duplicate"):
        export_mosquitto(tmp_path, [DEV_A.credential, again])


def test_credential_needs_a_7_hash() -> None:
    with pytest.raises(BrokerError):
        Credential(peer=DEV_A.peer, password_hash="plain")


async def _login_after_reload(account_client: aiomqtt.Client, *, expect_ok: bool) -> None:
    """SIGHUP is handled asynchronously: poll the login, bounded (50 x 50 ms)."""
    for attempt in range(50):
        try:
            async with account_client:
                ok = True
        except aiomqtt.MqttError:
            ok = False
        if ok is expect_ok:
            return
        assert attempt < 49, f"login still {'refused' if expect_ok else 'accepted'} after reload"
        await asyncio.sleep(0.05)  # polling interval, bounded by the attempt count


@pytest.mark.mosquitto
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
async def test_reload_picks_up_new_and_disabled_credentials(tmp_path: Path) -> None:
    async with MosquittoProcess(tmp_path, [CTL.credential]) as mosq:
        with pytest.raises(aiomqtt.MqttError):
            async with DEV_A.client(mosq.port):
                pass
        await mosq.update_credentials([CTL.credential, DEV_A.credential])
        await _login_after_reload(DEV_A.client(mosq.port), expect_ok=True)
        disabled = Credential(peer=DEV_A.peer, password_hash=DEV_A.credential.password_hash, enabled=False)
        await mosq.update_credentials([CTL.credential, disabled])
        await _login_after_reload(DEV_A.client(mosq.port), expect_ok=False)


@pytest.mark.mosquitto
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
async def test_kill_and_restart_keep_port(tmp_path: Path) -> None:
    async with MosquittoProcess(tmp_path, [CTL.credential, DEV_A.credential]) as mosq:
        port = mosq.port
        async with CTL.client(port) as ctl, MessageLog(ctl) as log:
            await ctl.subscribe(DEV_A.peer.topic(Channel.UP), qos=1)
            async with DEV_A.client(port) as dev:
                await dev.publish(DEV_A.peer.topic(Channel.UP), b"before", qos=1)
            await log.wait_for(DEV_A.peer.topic(Channel.UP), b"before")
            await mosq.kill()
            await log.wait_disconnected()
        await mosq.start()
        assert mosq.port == port
        async with DEV_A.client(port):
            pass
        await mosq.restart()
        async with DEV_A.client(mosq.port):
            pass
