"""An ESC/POS tokenizer that finds command boundaries (pure, no I/O).

A transport that paces a job (a GS r barrier after every chunk) must never split a command: a
barrier inserted inside ``GS v 0``'s image data would be printed as dots, and the rest of the image
would be read as commands. :func:`chunks` splits only where it is safe:

* between text bytes (``0x20``-``0xFF``) and around single-byte controls (LF, CR, HT, FF, CAN, NUL...);
* around complete commands whose length it knows (see :func:`measure` for the list);
* never inside a command; a command longer than ``max_size`` is a chunk of its own;
* after a command it does not know (or one cut off at the end of the data) the rest of the data is
  one final chunk: without its length, no later position is known to be a boundary.

:func:`commands` yields the tokens themselves; the simulated printer decodes with it, and
:func:`measure` lets a streaming reader learn a command's length from its header alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

ESC: Final = 0x1B
GS: Final = 0x1D
DLE: Final = 0x10
FS: Final = 0x1C


class TokenKind(Enum):
    TEXT = "text"  # a run of printable bytes
    CONTROL = "control"  # a single-byte control (LF, CR, HT, FF, CAN, NUL, ...)
    COMMAND = "command"  # a complete multi-byte command
    TRUNCATED = "truncated"  # a known command cut off by the end of the data (rest of data)
    UNKNOWN = "unknown"  # a command of unknown length (rest of data)


@dataclass(frozen=True, kw_only=True)
class Token:
    offset: int
    length: int
    name: str
    kind: TokenKind

    @property
    def end(self) -> int:
        return self.offset + self.length


class _Need(Enum):
    MORE = "more"


#: :func:`measure` needs more bytes to know the length.
NEED_MORE: Final = _Need.MORE
Measure = tuple[int, str] | Literal[_Need.MORE] | None

_SINGLE_CONTROLS: Final = {
    0x00: "NUL",
    0x09: "HT",
    0x0A: "LF",
    0x0C: "FF",
    0x0D: "CR",
    0x18: "CAN",
}
# Other C0 bytes (except the prefixes and RS/US, which some command sets use as prefixes) are
# single-byte controls the printer ignores.
for _b in range(0x20):
    if _b not in (ESC, GS, DLE, FS, 0x1E, 0x1F):
        _SINGLE_CONTROLS.setdefault(_b, f"0x{_b:02X}")
del _b

# Fixed total lengths (prefix and command byte included).
_ESC_FIXED: Final = {
    ord(c): n
    for c, n in {
        "@": 2, "!": 3, "E": 3, "-": 3, "a": 3, "d": 3, "J": 3, "t": 3, "M": 3, "{": 3, "G": 3,
        "2": 2, "3": 3, "R": 3, " ": 3, "$": 4, "p": 5, "B": 4, "V": 3, "U": 3, "c": 4, "i": 2,
        "m": 2, "r": 3, "=": 3, "L": 2, "S": 2, "T": 3, "%": 3, "?": 3, "\\": 4, "e": 3, "W": 10,
        "\x0c": 2,
    }.items()
}  # fmt: skip
_GS_FIXED: Final = {
    ord(c): n
    for c, n in {
        "!": 3, "B": 3, "b": 3, "h": 3, "w": 3, "H": 3, "f": 3, "a": 3, "r": 3, "I": 3, "L": 4,
        "W": 4, "P": 4, "$": 4, "\\": 4, "/": 3, "T": 3, ":": 2, "^": 5,
    }.items()
}  # fmt: skip
_FS_FIXED: Final = {
    ord(c): n for c, n in {".": 2, "&": 2, "p": 4, "!": 3, "-": 3, "C": 3, "W": 3, "S": 4}.items()
}
_DLE_DC4_LENGTHS: Final = {1: 5, 2: 5, 7: 4, 8: 10}
_PREFIX_NAMES: Final = {ESC: "ESC", GS: "GS", DLE: "DLE", FS: "FS"}
_GS_V_LENGTHS: Final = {0: 3, 1: 3, 48: 3, 49: 3, 65: 4, 66: 4, 97: 4, 98: 4, 103: 4, 104: 4}
# ESC * m: bytes per column unit.
_ESC_STAR_BYTES: Final = {0: 1, 1: 1, 32: 3, 33: 3}


def _cmd_name(prefix: int, c: int) -> str:
    ch = chr(c) if 0x21 <= c <= 0x7E else ("SP" if c == 0x20 else f"0x{c:02X}")
    return f"{_PREFIX_NAMES[prefix]} {ch}"


def _fn_char(fn: int) -> str:
    return chr(fn) if 0x21 <= fn <= 0x7E else "?"


def _u16(data: bytes, i: int) -> int:
    return data[i] | (data[i + 1] << 8)


def measure(data: bytes, pos: int = 0) -> Measure:
    """The length and name of the token starting at ``data[pos]``.

    Returns ``(length, name)`` (``length`` may reach past the end of ``data`` once the header tells
    it), :data:`NEED_MORE` when the header itself is incomplete, or ``None`` for an unknown
    command. Text bytes and single-byte controls measure 1.
    """
    n = len(data)
    b = data[pos]
    if b >= 0x20:
        return 1, "text"
    if b in _SINGLE_CONTROLS:
        return 1, _SINGLE_CONTROLS[b]
    if b not in _PREFIX_NAMES:
        return None
    if pos + 1 >= n:
        return NEED_MORE
    c = data[pos + 1]
    name = _cmd_name(b, c)
    avail = n - pos

    def need(k: int) -> bool:
        return avail < k

    if b == ESC:
        if c in _ESC_FIXED:
            return _ESC_FIXED[c], name
        if c == 0x2A:  # ESC * m nL nH d...
            if need(5):
                return NEED_MORE
            per = _ESC_STAR_BYTES.get(data[pos + 2])
            if per is None:
                return None
            return 5 + per * _u16(data, pos + 3), name
        if c == 0x28:  # ESC ( fn pL pH ...
            if need(5):
                return NEED_MORE
            return 5 + _u16(data, pos + 3), f"ESC ( {_fn_char(data[pos + 2])}"
        return None
    if b == GS:
        if c in _GS_FIXED:
            return _GS_FIXED[c], name
        if c == 0x56:  # GS V m [n]
            if need(3):
                return NEED_MORE
            length = _GS_V_LENGTHS.get(data[pos + 2])
            return None if length is None else (length, name)
        if c == 0x76:  # GS v 0 m xL xH yL yH d...
            if need(8):
                return NEED_MORE
            if data[pos + 2] not in (0x30, 0x00):
                return None
            return 8 + _u16(data, pos + 4) * _u16(data, pos + 6), "GS v 0"
        if c == 0x28:  # GS ( fn pL pH ...
            if need(5):
                return NEED_MORE
            return 5 + _u16(data, pos + 3), f"GS ( {_fn_char(data[pos + 2])}"
        if c == 0x38:  # GS 8 fn p1 p2 p3 p4 ...
            if need(7):
                return NEED_MORE
            size = int.from_bytes(data[pos + 3 : pos + 7], "little")
            return 7 + size, f"GS 8 {_fn_char(data[pos + 2])}"
        if c == 0x2A:  # GS * x y d... (x*y*8 bytes)
            if need(4):
                return NEED_MORE
            return 4 + data[pos + 2] * data[pos + 3] * 8, name
        if c == 0x6B:  # GS k m ...
            if need(3):
                return NEED_MORE
            m = data[pos + 2]
            if m <= 6:  # form A: NUL-terminated
                end = data.find(b"\x00", pos + 3)
                return NEED_MORE if end < 0 else (end + 1 - pos, name)
            if 65 <= m <= 79:  # form B: GS k m n d1..dn
                if need(4):
                    return NEED_MORE
                return 4 + data[pos + 3], name
            return None
        return None
    if b == DLE:
        if c in (0x04, 0x05):  # DLE EOT n, DLE ENQ n
            return 3, "DLE EOT" if c == 0x04 else "DLE ENQ"
        if c == 0x14:  # DLE DC4 fn ...
            if need(3):
                return NEED_MORE
            length = _DLE_DC4_LENGTHS.get(data[pos + 2])
            return None if length is None else (length, "DLE DC4")
        return None
    # FS
    if c in _FS_FIXED:
        return _FS_FIXED[c], name
    if c == 0x28:  # FS ( fn pL pH ...
        if need(5):
            return NEED_MORE
        return 5 + _u16(data, pos + 3), "FS ("
    return None


_TEXT_RUN = re.compile(rb"[\x20-\xff]+")


def commands(data: bytes) -> Iterator[Token]:
    """The tokens of ``data`` in order; the last one may be TRUNCATED or UNKNOWN (rest of data)."""
    pos = 0
    n = len(data)
    while pos < n:
        b = data[pos]
        if b >= 0x20:
            match = _TEXT_RUN.match(data, pos)
            assert match is not None
            yield Token(offset=pos, length=match.end() - pos, name="text", kind=TokenKind.TEXT)
            pos = match.end()
            continue
        m = measure(data, pos)
        if m is None:
            yield Token(offset=pos, length=n - pos, name="unknown", kind=TokenKind.UNKNOWN)
            return
        if m is NEED_MORE or pos + m[0] > n:
            name = "truncated" if m is NEED_MORE else m[1]
            yield Token(offset=pos, length=n - pos, name=name, kind=TokenKind.TRUNCATED)
            return
        length, name = m
        kind = TokenKind.CONTROL if length == 1 else TokenKind.COMMAND
        yield Token(offset=pos, length=length, name=name, kind=kind)
        pos += length


def chunks(data: bytes, max_size: int) -> list[bytes]:
    """Split ``data`` into chunks of at most ``max_size`` bytes at command boundaries.

    ``b"".join(chunks(data, n)) == data`` always. A single command longer than ``max_size`` is a
    chunk of its own; after an unknown or truncated command the rest of ``data`` is one chunk.
    """
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    out: list[bytes] = []
    start = end = 0  # the current chunk is data[start:end]; end is always the next token's offset

    def flush() -> None:
        nonlocal start
        if end > start:
            out.append(data[start:end])
            start = end

    for tok in commands(data):
        match tok.kind:
            case TokenKind.UNKNOWN | TokenKind.TRUNCATED:
                flush()
                out.append(data[tok.offset :])
                return out
            case TokenKind.TEXT:
                pos, stop = tok.offset, tok.end
                while pos < stop:
                    if end - start >= max_size:
                        flush()
                    take = min(max_size - (end - start), stop - pos)
                    end += take
                    pos += take
            case _:
                if end - start + tok.length > max_size:
                    flush()
                end += tok.length
                if end - start >= max_size:
                    flush()
    flush()
    return out


__all__ = ["NEED_MORE", "Measure", "Token", "TokenKind", "chunks", "commands", "measure"]
