"""The ESC/POS tokenizer: byte-exact command boundaries and safe chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.escpos.segment import NEED_MORE, TokenKind, chunks, commands, measure

# Every command family the tokenizer knows, with its exact bytes.
COMMANDS: list[tuple[str, bytes]] = [
    ("ESC @", b"\x1b@"),
    ("ESC !", b"\x1b!\x38"),
    ("ESC E", b"\x1bE\x01"),
    ("ESC -", b"\x1b-\x02"),
    ("ESC a", b"\x1ba\x01"),
    ("ESC d", b"\x1bd\x05"),
    ("ESC J", b"\x1bJ\x40"),
    ("ESC t", b"\x1bt\x13"),
    ("ESC M", b"\x1bM\x01"),
    ("ESC {", b"\x1b{\x01"),
    ("ESC G", b"\x1bG\x01"),
    ("ESC 2", b"\x1b2"),
    ("ESC 3", b"\x1b3\x18"),
    ("ESC R", b"\x1bR\x00"),
    ("ESC SP", b"\x1b \x02"),
    ("ESC $", b"\x1b$\x10\x01"),
    ("ESC p", b"\x1bp\x00\x19\xfa"),
    ("ESC *", b"\x1b*\x00\x03\x00" + b"\xff\x0a\x1b"),  # 8-dot: 3 columns, 1 byte each
    ("ESC *", b"\x1b*\x21\x02\x00" + b"\x1d" * 6),  # 24-dot: 2 columns, 3 bytes each
    ("ESC B", b"\x1bB\x03\x02"),
    ("ESC ( A", b"\x1b(A\x04\x00\x30\x33\x03\x05"),
    ("GS !", b"\x1d!\x11"),
    ("GS B", b"\x1dB\x01"),
    ("GS V", b"\x1dV\x00"),
    ("GS V", b"\x1dV\x31"),
    ("GS V", b"\x1dV\x42\x03"),
    ("GS V", b"\x1dV\x61\x00"),
    ("GS v 0", b"\x1dv0\x00\x02\x00\x03\x00" + b"\x10\x04\x01\x1d\x56\x00"),
    ("GS ( k", b"\x1d(k\x03\x001C\x06"),
    ("GS ( k", b"\x1d(k\x08\x001P0hello"),
    ("GS ( H", b"\x1d(H\x06\x00\x30\x30ABCD"),
    ("GS ( E", b"\x1d(E\x03\x00\x01IN"),
    ("GS ( L", b"\x1d(L\x02\x00\x30\x32"),
    ("GS k", b"\x1dk\x04*123*\x00"),
    ("GS k", b"\x1dk\x49\x06{B1234"),
    ("GS h", b"\x1dh\x50"),
    ("GS w", b"\x1dw\x02"),
    ("GS H", b"\x1dH\x02"),
    ("GS f", b"\x1df\x00"),
    ("GS L", b"\x1dL\x10\x00"),
    ("GS W", b"\x1dW\x40\x02"),
    ("GS a", b"\x1da\x0f"),
    ("GS r", b"\x1dr\x01"),
    ("GS I", b"\x1dI\x43"),
    ("DLE EOT", b"\x10\x04\x01"),
    ("DLE ENQ", b"\x10\x05\x02"),
    ("DLE DC4", b"\x10\x14\x01\x00\x05"),
    ("DLE DC4", b"\x10\x14\x08\x01\x03\x14\x01\x06\x02\x08"),
    ("FS .", b"\x1c."),
    ("FS &", b"\x1c&"),
    ("FS p", b"\x1cp\x01\x00"),
]


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[f"{n}-{c[:4].hex()}" for n, c in COMMANDS])
def test_each_command_is_one_token_of_exact_length(name: str, cmd: bytes) -> None:
    data = b"ab" + cmd + b"\ncd"
    tokens = list(commands(data))
    assert [(t.offset, t.length, t.kind) for t in tokens] == [
        (0, 2, TokenKind.TEXT),
        (2, len(cmd), TokenKind.COMMAND),
        (2 + len(cmd), 1, TokenKind.CONTROL),
        (3 + len(cmd), 2, TokenKind.TEXT),
    ]
    assert tokens[1].name == name
    assert measure(cmd) == (len(cmd), name)
    # Chunked as small as possible, the command is never split.
    assert cmd in chunks(data, 1)


@pytest.mark.parametrize(("name", "cmd"), [c for c in COMMANDS if len(c[1]) > 2])
def test_a_command_cut_short_is_truncated_and_kept_whole(name: str, cmd: bytes) -> None:
    data = b"xy\n" + cmd[:-1]
    tokens = list(commands(data))
    assert tokens[-1].kind is TokenKind.TRUNCATED
    assert tokens[-1].offset == 3
    assert chunks(data, 2) == [b"xy", b"\n", cmd[:-1]]


def test_measure_from_the_header_alone() -> None:
    assert measure(b"\x1dv0\x00\x48\x00\x0e\x00") == (8 + 72 * 14, "GS v 0")
    assert measure(b"\x1dv0\x00\x48") is NEED_MORE
    assert measure(b"\x1b") is NEED_MORE
    assert measure(b"\x1dk\x04123") is NEED_MORE  # form A waits for its NUL
    assert measure(b"\x1b\x7f") is None


def test_unknown_command_makes_the_rest_one_chunk() -> None:
    data = b"hello\n" + b"\x1b\x7f" + b"world\n" * 10
    assert chunks(data, 4) == [b"hell", b"o\n", data[6:]]
    tokens = list(commands(data))
    assert tokens[-1].kind is TokenKind.UNKNOWN
    assert tokens[-1].offset == 6


def test_text_splits_anywhere_and_commands_stay_whole() -> None:
    data = b"abcdef" + b"\x1b!\x00" + b"gh"
    assert chunks(data, 4) == [b"abcd", b"ef", b"\x1b!\x00g", b"h"]


def test_large_raster_stays_whole() -> None:
    band = b"\x1dv0\x00\x48\x00\x40\x00" + bytes(range(256)) * 18  # 72 x 64 = 4608 data bytes
    data = b"top\n" + band + b"\x1dV\x00"
    out = chunks(data, 1024)
    assert out == [b"top\n", band, b"\x1dV\x00"]


def test_bands_pack_into_chunks_without_splitting() -> None:
    band = b"\x1dv0\x00\x48\x00\x0e\x00" + b"\x10\x04\x01" * 336  # 1016 bytes
    data = band * 4
    out = chunks(data, 1024)
    assert out == [band] * 4
    assert chunks(data, 2100) == [band * 2, band * 2]


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        chunks(b"abc", 0)


_pieces = st.one_of(
    st.sampled_from([c for _, c in COMMANDS]),
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: s.encode("utf-8")),
)


@given(st.lists(_pieces, max_size=30), st.integers(min_value=1, max_value=200))
def test_join_identity_and_size(pieces: list[bytes], size: int) -> None:
    data = b"".join(pieces)
    out = chunks(data, size)
    assert b"".join(out) == data
    assert all(out)
    # Only a single command or the unknown/truncated tail may exceed the limit.
    tokens = list(commands(data))
    tail = {TokenKind.UNKNOWN, TokenKind.TRUNCATED}
    tail_start = tokens[-1].offset if tokens and tokens[-1].kind in tail else None
    pos = 0
    for chunk in out:
        if len(chunk) > size:
            assert pos == tail_start or any(t.offset == pos and t.length == len(chunk) for t in tokens)
        pos += len(chunk)


@given(st.lists(st.sampled_from([c for _, c in COMMANDS] + [b"text", b"\n"]), max_size=40))
def test_known_commands_are_never_split(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    boundaries = {0}
    pos = 0
    for piece in pieces:
        pos += len(piece)
        boundaries.add(pos)
    for size in (1, 7, 64):
        pos = 0
        for chunk in chunks(data, size):
            pos += len(chunk)
            # every cut lies on a piece boundary or inside a text piece
            assert pos in boundaries or _inside_text(pieces, pos)


def _inside_text(pieces: list[bytes], cut: int) -> bool:
    pos = 0
    for piece in pieces:
        if pos < cut < pos + len(piece):
            return piece == b"text"
        pos += len(piece)
    return False
