"""The wire contract: envelopes, signatures, topics and ACL rules."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import wire

DEV = wire.Peer(role=wire.Role.DEVICE, name="kiosk-1")
CTL = wire.Peer(role=wire.Role.CONTROLLER, name="main")


def _job(**kw: object) -> wire.JobPrint:
    import base64
    import hashlib

    data = b"\x1b@hello\n"
    fields: dict[str, object] = {
        "job_id": "j1",
        "printer": "kiosk-1",
        "data": base64.b64encode(data).decode(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "submitted_at": 1,
        "lease_until": 2,
    }
    fields.update(kw)
    return wire.JobPrint(**fields)  # type: ignore[arg-type]


def test_envelope_round_trip_and_signature() -> None:
    key = wire.SigningKey.generate()
    env = wire.Envelope.build(_job(), src=CTL, dst=DEV, seq=7, exp=123).signed(key)
    decoded = wire.decode(env.encode())
    decoded.verify({key.kid: key.private.public_key()})
    assert decoded.parsed(wire.JobPrint).payload() == b"\x1b@hello\n"
    assert decoded.src == "ctl-main" and decoded.dst == "dev-kiosk-1" and decoded.seq == 7


def test_tampered_envelope_is_refused() -> None:
    key = wire.SigningKey.generate()
    env = wire.Envelope.build(_job(), src=CTL, dst=DEV, seq=1).signed(key)
    obj = json.loads(env.encode())
    obj["dst"] = "dev-kiosk-2"  # misaddressed after signing
    forged = wire.decode(json.dumps(obj).encode())
    with pytest.raises(wire.WireError, match="bad signature"):
        forged.verify({key.kid: key.private.public_key()})
    other = wire.SigningKey.generate()
    with pytest.raises(wire.WireError, match="unknown key"):
        env.verify({other.kid: other.private.public_key()})
    unsigned = wire.Envelope.build(_job(), src=CTL, dst=DEV, seq=1)
    with pytest.raises(wire.WireError, match="unsigned"):
        unsigned.verify({key.kid: key.private.public_key()})


def test_payload_hash_is_checked() -> None:
    with pytest.raises(wire.WireError, match="sha256"):
        _job(sha256="0" * 64).payload()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "Invalid JSON"),
        (b"[]", "object"),
        (b'{"v": 2}', "v"),
        (b"\xff\xfe", "Invalid JSON"),
        (b"x" * (wire.MAX_MESSAGE_BYTES + 1), "exceeds"),
    ],
)
def test_bad_envelopes_get_a_clear_error(raw: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(raw)


def test_body_must_fit_its_type() -> None:
    env = wire.Envelope.build(wire.Will(session=1), src=DEV, dst=CTL, seq=1)
    obj = json.loads(env.encode())
    obj["body"] = {"session": "1"}  # a string where an integer belongs: no silent coercion
    with pytest.raises(wire.WireError, match="session"):
        wire.decode(json.dumps(obj).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(data)


def test_topics_and_client_ids() -> None:
    assert DEV.client_id == "dev-kiosk-1"
    assert wire.Peer.from_client_id("dev-kiosk-1") == DEV
    assert DEV.topic(wire.Channel.DOWN) == "pf/v1/dev/kiosk-1/down"
    assert wire.parse_topic("pf/v1/dev/kiosk-1/up") == (DEV, wire.Channel.UP)
    for bad in ("pf/v1/ctl/main/up", "pf/v2/dev/a/up", "pf/v1/dev/A B/up", "pf/v1/dev/a/sideways"):
        with pytest.raises(wire.WireError):
            wire.parse_topic(bad)
    for bad_name in ("", "UPPER", "-lead", "a" * 64, "sp ace"):
        with pytest.raises(wire.WireError):
            wire.check_name(bad_name)


@pytest.mark.parametrize(
    ("requested", "allowed", "inside"),
    [
        ("pf/v1/dev/a/down", "pf/v1/dev/a/down", True),
        ("#", "pf/v1/dev/a/down", False),
        ("pf/#", "pf/v1/dev/a/down", False),
        ("pf/v1/dev/+/down", "pf/v1/dev/a/down", False),
        ("pf/v1/dev/b/down", "pf/v1/dev/+/down", True),
        ("pf/v1/dev/+/down", "pf/v1/dev/+/down", True),
        ("pf/v1/dev/a/down/x", "pf/v1/dev/a/down", False),
        ("pf/v1/dev/a", "pf/v1/dev/a/down", False),
    ],
)
def test_filter_within(requested: str, allowed: str, inside: bool) -> None:
    assert wire.filter_within(requested, allowed) is inside


def test_device_rules_stay_in_its_subtree() -> None:
    other = wire.Peer(role=wire.Role.DEVICE, name="kiosk-2")
    rules = wire.access_rules(DEV)
    for rule in rules:
        assert not wire.topic_matches(rule.filter, other.topic(wire.Channel.DOWN))
        assert not wire.topic_matches(rule.filter, other.topic(wire.Channel.UP))
    assert any(r.write and wire.topic_matches(r.filter, DEV.topic(wire.Channel.UP)) for r in rules)
    assert not any(r.write and wire.topic_matches(r.filter, DEV.topic(wire.Channel.DOWN)) for r in rules)


def test_job_states_are_lowercase_words() -> None:
    for state in wire.JobState:
        assert state.value == state.name.lower()
    assert {s.value for s in wire.TERMINAL_JOB_STATES} == {
        "printed",
        "failed",
        "expired",
        "cancelled",
        "unknown",
    }


def test_replay_guard_accepts_reordering_and_refuses_replays() -> None:
    guard = wire.ReplayGuard(floor=1_000)
    assert not guard.accept(1_000)  # at or below the floor persisted before a restart
    assert guard.accept(5_000_000)
    assert guard.accept(1_001)  # overtaken in transit by a later one: still a first delivery
    assert not guard.accept(1_001)
    assert not guard.accept(5_000_000)
    far = 5_000_000 + 900_000_001
    assert guard.accept(far)
    assert not guard.accept(4_999_999)  # older than the window: cannot be told from a replay
    for i in range(5000):  # the memory of seen numbers stays bounded
        assert guard.accept(far + 1 + i)
    assert not guard.accept(far + 10)
