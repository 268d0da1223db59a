"""Status decoding and the inbound-stream classifier, byte-exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.escpos.status import (
    AsbBlock,
    BlockReply,
    ErrorKind,
    Event,
    GsRReply,
    InboundParser,
    PrinterStatus,
    StatusByte,
    StatusDecodeError,
    Unknown,
    Xoff,
    Xon,
    decode_asb,
    decode_status,
    decode_status_reply,
    encode_asb,
    encode_status_reply,
    to_health,
)

# -- DLE EOT decoding (bits from notes/escpos.md) ---------------------------------------------


def test_idle_printer_replies_decode_to_all_clear() -> None:
    status = decode_status({1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12})
    assert status == PrinterStatus(
        drawer_pin3_high=False,
        offline=False,
        waiting_for_online_recovery=False,
        feed_button_pressed=False,
        cover_open=False,
        paper_fed_by_button=False,
        stopped_by_paper_end=False,
        error=False,
        recoverable_error=False,
        autocutter_error=False,
        unrecoverable_error=False,
        auto_recoverable_error=False,
        paper_near_end=False,
        paper_end=False,
    )
    health = to_health(status, checked_at=123)
    assert health.reachable
    assert health.online
    assert health.paper == "ok"
    assert health.faults == ()
    assert health.checked_at == 123


@pytest.mark.parametrize(
    ("n", "byte", "field"),
    [
        (1, 0x16, "drawer_pin3_high"),
        (1, 0x1A, "offline"),
        (1, 0x32, "waiting_for_online_recovery"),
        (1, 0x52, "feed_button_pressed"),
        (2, 0x16, "cover_open"),
        (2, 0x1A, "paper_fed_by_button"),
        (2, 0x32, "stopped_by_paper_end"),
        (2, 0x52, "error"),
        (3, 0x16, "recoverable_error"),
        (3, 0x1A, "autocutter_error"),
        (3, 0x32, "unrecoverable_error"),
        (3, 0x52, "auto_recoverable_error"),
        (4, 0x1E, "paper_near_end"),
        (4, 0x72, "paper_end"),
    ],
)
def test_each_bit_sets_exactly_its_field(n: int, byte: int, field: str) -> None:
    status = decode_status_reply(n, byte)
    set_fields = {name for name in PrinterStatus.__dataclass_fields__ if getattr(status, name)}
    assert set_fields == {field}
    assert encode_status_reply(n, status) == byte


def test_fields_of_unqueried_replies_stay_unknown() -> None:
    status = decode_status({4: 0x12})
    assert status.offline is None
    assert status.cover_open is None
    assert status.autocutter_error is None
    assert to_health(status, 0).paper == "ok"
    assert to_health(decode_status({1: 0x12}), 0).paper == "unknown"


@pytest.mark.parametrize("byte", [0x00, 0x10, 0x13, 0x37, 0x92, 0xFF, 0x5F])
def test_invalid_reply_is_refused(byte: int) -> None:
    with pytest.raises(StatusDecodeError):
        decode_status_reply(1, byte)


def test_health_words() -> None:
    paper_out = decode_status({1: 0x1A, 2: 0x32, 4: 0x72})
    health = to_health(paper_out, 5)
    assert health.paper == "out"
    assert not health.online
    assert health.faults == ("paper out",)

    cover = to_health(decode_status({1: 0x1A, 2: 0x16, 4: 0x12}), 5)
    assert cover.cover_open
    assert cover.faults == ("cover open",)

    near_end = to_health(decode_status({1: 0x12, 2: 0x12, 4: 0x1E}), 5)
    assert near_end.paper == "near_end"
    assert near_end.faults == ()

    cutter = to_health(decode_status({1: 0x1A, 2: 0x52, 3: 0x1A, 4: 0x12}), 5)
    assert cutter.errors == ("autocutter error",)
    assert cutter.faults == ("autocutter error",)

    bare = to_health(decode_status({1: 0x1A, 2: 0x52}), 5)
    assert bare.errors == ("error",)

    offline_only = to_health(decode_status({1: 0x1A, 2: 0x12, 4: 0x12}), 5)
    assert offline_only.faults == ("offline",)


def test_asb_round_trip() -> None:
    status = PrinterStatus(
        drawer_pin3_high=True,
        offline=True,
        cover_open=True,
        paper_fed_by_button=False,
        error=True,
        recoverable_error=False,
        autocutter_error=True,
        unrecoverable_error=False,
        auto_recoverable_error=False,
        paper_near_end=True,
        paper_end=False,
    )
    block = encode_asb(status)
    assert block == bytes((0x3C, 0x08, 0x03, 0x00))
    decoded = decode_asb(block)
    assert decoded.autocutter_error
    assert decoded.cover_open
    assert decoded.paper_near_end
    assert decoded.errors == (ErrorKind.AUTOCUTTER,)
    with pytest.raises(ValueError, match="not an ASB block"):
        decode_asb(b"\x12\x00\x00\x00")


# -- the inbound stream ------------------------------------------------------------------------

MIXED = (
    b"\x12"  # DLE EOT reply
    + b"\x14\x00\x0c\x00"  # ASB block
    + b"\x13"  # XOFF
    + b"\x00"  # GS r reply (paper ok)
    + b"\x37\x22ABCD\x00"  # GS ( H answer
    + b"\x11"  # XON
    + b"\x1e"  # DLE EOT reply (near end)
    + b"\x5f"
    + b"TM-T88V"
    + b"\x00"  # GS I 67
    + b"\x0c"  # GS r reply (paper end)
    + b"\x80"  # garbage
    + b"\x72"  # DLE EOT reply (paper end)
)
MIXED_EVENTS: list[Event] = [
    StatusByte(value=0x12),
    AsbBlock(data=b"\x14\x00\x0c\x00"),
    Xoff(),
    GsRReply(value=0x00),
    BlockReply(header=0x37, payload=b"\x22ABCD"),
    Xon(),
    StatusByte(value=0x1E),
    BlockReply(header=0x5F, payload=b"TM-T88V"),
    GsRReply(value=0x0C),
    Unknown(value=0x80),
    StatusByte(value=0x72),
]


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Event]:
    parser = InboundParser()
    events: list[Event] = []
    last = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(data[last:cut])
        last = cut
    events += parser.feed(data[last:])
    return events


def test_mixed_stream_in_one_piece() -> None:
    assert InboundParser().feed(MIXED) == MIXED_EVENTS


def test_mixed_stream_byte_by_byte() -> None:
    assert feed_in_pieces(MIXED, list(range(len(MIXED)))) == MIXED_EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
def test_mixed_stream_any_split(cuts: list[int]) -> None:
    assert feed_in_pieces(MIXED, cuts) == MIXED_EVENTS


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_garbage_never_raises_and_split_does_not_matter(data: bytes, cuts: list[int]) -> None:
    whole = InboundParser().feed(data)
    assert feed_in_pieces(data, [c for c in cuts if c <= len(data)]) == whole


def test_flow_control_inside_blocks() -> None:
    events = InboundParser().feed(b"\x10\x11\x00\x13\x03\x00" + b"\x37\x22AB\x13CD\x00")
    assert events == [
        Xon(),
        Xoff(),
        AsbBlock(data=b"\x10\x00\x03\x00"),
        Xoff(),
        BlockReply(header=0x37, payload=b"\x22ABCD"),
    ]


def test_stray_asb_first_byte_does_not_eat_gs_r_replies() -> None:
    # 0x10 looks like an ASB start; a status byte breaks the block: the bytes after it are
    # classified again, so the two GS r replies survive.
    events = InboundParser().feed(b"\x10\x00\x0c\x12")
    assert events == [Unknown(value=0x10), GsRReply(value=0x00), GsRReply(value=0x0C), StatusByte(value=0x12)]


def test_overlong_block_is_dropped_and_parser_resyncs() -> None:
    parser = InboundParser()
    events = parser.feed(b"\x5f" + b"A" * 64)
    assert events == []
    assert parser.pending == 65
    events = parser.feed(b"B" + b"\x12")
    assert events == [Unknown(value=0x5F), StatusByte(value=0x12)]
    assert parser.pending == 0


def test_split_asb_block_and_stale_bytes_before_a_reply() -> None:
    parser = InboundParser()
    assert parser.feed(b"\x00\x00\x18") == [GsRReply(value=0), GsRReply(value=0)]  # stale GS r, ASB start
    assert parser.feed(b"\x00") == []
    assert parser.feed(b"\x00\x00\x12") == [AsbBlock(data=b"\x18\x00\x00\x00"), StatusByte(value=0x12)]
