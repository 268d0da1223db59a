"""broker.passwords: mosquitto 2.0 compatible $7$ hashes, checked against the real mosquitto tools."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import generate_secret, hash_password, verify_password
from broker.testing import MosquittoProcess, make_account, mosquitto_available
from kernel import wire

HASH_RE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/]{16})\$([A-Za-z0-9+/]{86}==)$")


def test_hash_has_mosquitto_layout() -> None:
    hashed = hash_password("s3cret", iterations=1234)
    match = HASH_RE.fullmatch(hashed)
    assert match is not None, hashed
    assert match.group(1) == "1234"


def test_round_trip_and_wrong_secret() -> None:
    hashed = hash_password("s3cret")
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret ", hashed)
    assert not verify_password("", hashed)


def test_salts_differ() -> None:
    assert hash_password("x") != hash_password("x")


@pytest.mark.parametrize("iterations", [0, -1, 10_000_001])
def test_iterations_out_of_range_raise(iterations: int) -> None:
    with pytest.raises(ValueError, match="iterations"):
        hash_password("x", iterations=iterations)


GOOD = hash_password("pw", iterations=5)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "pw",
        "$6$salt$hash",
        "$7$",
        "$7$5$$",
        GOOD.replace("$7$5$", "$7$x$"),
        GOOD.replace("$7$5$", "$7$0$"),
        GOOD.replace("$7$5$", "$7$99999999999$"),
        GOOD.replace("$7$5$", "$8$5$"),
        GOOD + "$extra",
        GOOD[:-4],  # truncated key
        GOOD.replace("$7$5$", "$7$5$!!"),  # not base64
        "x" + GOOD,
    ],
)
def test_malformed_hashes_are_false(bad: str) -> None:
    assert verify_password("pw", bad) is False


def test_non_string_hash_is_false() -> None:
    assert verify_password("pw", None) is False  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(secret=st.text(), hashed=st.text())
def test_verify_never_raises(secret: str, hashed: str) -> None:
    assert verify_password(secret, hashed) in (True, False)


def test_generate_secret() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(len(s) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in secrets)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_verifies_hash_written_by_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pwfile), "dev-a", "correct horse"], check=True, timeout=10
    )
    user, _, hashed = pwfile.read_text().strip().partition(":")
    assert user == "dev-a"
    assert HASH_RE.fullmatch(hashed), hashed
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse!", hashed)


@pytest.mark.mosquitto
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
async def test_real_mosquitto_accepts_our_hash(tmp_path: Path) -> None:
    account = make_account(wire.Peer(role=wire.Role.DEVICE, name="a"), iterations=101)
    async with MosquittoProcess(tmp_path, [account.credential]) as mosq, account.client(mosq.port) as client:
        await client.publish(account.peer.topic(wire.Channel.UP), b"ok", qos=1)
