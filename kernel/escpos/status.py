"""Printer status: decoding DLE EOT / ASB replies and classifying the inbound byte stream.

Pure code, no I/O. Two parts:

* :class:`PrinterStatus` and its decoders for the one-byte DLE EOT n (n = 1..4) replies and the
  4-byte Automatic Status Back (ASB) blocks, and :func:`to_health` that turns a status into the
  wire form :class:`kernel.wire.PrinterHealth`. The encoders (used by the simulated printer)
  live next to the decoders so that the bit layout is written down once.
* :class:`InboundParser`, a stateful classifier for everything a printer sends back. It is fed
  arbitrary fragments (a serial read returns whatever has arrived) and returns events.

Classification rules of :class:`InboundParser`, applied byte by byte outside any block:

====================================  =====================================================
byte ``b``                            event
====================================  =====================================================
``0x11`` / ``0x13``                   :class:`Xon` / :class:`Xoff` (also inside blocks)
``(b & 0x93) == 0x12``                :class:`StatusByte` (a DLE EOT reply)
``(b & 0x93) == 0x10``                first byte of an ASB block; the next three bytes must
                                      have ``(b & 0x90) == 0`` -> :class:`AsbBlock`
``0x37`` or ``0x5F``                  header of a NUL-terminated block reply (GS ( H, GS ( E,
                                      GS I n >= 65) -> :class:`BlockReply`
``(b & 0x90) == 0``                   :class:`GsRReply` (GS r reply; also single-byte GS I)
anything else                         :class:`Unknown`
====================================  =====================================================

Resynchronisation: when a byte after an ASB first byte does not fit, the first byte becomes
:class:`Unknown` and the bytes collected after it are classified again from the top (so GS r
replies following a stray byte are not lost). A block reply longer than
:data:`MAX_BLOCK_PAYLOAD` bytes without its NUL is dropped: its header is reported as
:class:`Unknown`, its payload is discarded, and classification restarts at the next byte.

Known ambiguities (they are properties of the protocol, not of this parser):

* A single-byte GS I n (n = 1..3) reply has bits 4 and 7 clear and is indistinguishable from a
  GS r reply: never send GS I 1..3 while GS r barriers are unanswered.
* A stray byte that looks like an ASB first byte absorbs up to three following GS r replies
  when they happen to complete a valid-looking block. Printers send ASB only after GS a n with
  n != 0; a link that does not enable ASB can treat every :class:`AsbBlock` as suspect.
* Inside a block reply every byte but XON/XOFF belongs to the block: a DLE EOT reply sent by the
  printer while it is transmitting a block would be taken as payload (real printers finish the
  block first).
* The four DLE EOT replies look alike: which query a :class:`StatusByte` answers is known only
  from the order of the queries, so a late reply to a timed-out query can be taken as the
  answer to the next one. :class:`InboundParser` cannot tell; the link serialises its queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from kernel.errors import PrintfleetError
from kernel.wire import PrinterHealth

#: Longest block-reply payload accepted before the block is dropped and the parser resyncs.
MAX_BLOCK_PAYLOAD = 64

XON = 0x11
XOFF = 0x13
BLOCK_HEADERS = frozenset({0x37, 0x5F})


class StatusQuery(IntEnum):
    """The ``n`` of DLE EOT n."""

    PRINTER = 1
    OFFLINE_CAUSE = 2
    ERROR_CAUSE = 3
    PAPER_SENSOR = 4


class ErrorKind(IntEnum):
    """The error causes DLE EOT 3 reports; the value is the bit in that reply."""

    RECOVERABLE = 0x04
    AUTOCUTTER = 0x08
    UNRECOVERABLE = 0x20
    AUTO_RECOVERABLE = 0x40

    @property
    def label(self) -> str:
        return _ERROR_LABELS[self]


_ERROR_LABELS = {
    ErrorKind.RECOVERABLE: "recoverable error",
    ErrorKind.AUTOCUTTER: "autocutter error",
    ErrorKind.UNRECOVERABLE: "unrecoverable error",
    ErrorKind.AUTO_RECOVERABLE: "auto-recoverable error",
}


class StatusDecodeError(PrintfleetError, ValueError):
    """Bytes that are not a valid printer status: a DLE EOT reply byte with ``(b & 0x93) != 0x12``, or
    a 4-byte block that is not Automatic Status Back. Also a ``ValueError``."""


def is_status_reply(b: int) -> bool:
    """True for a byte that can be a DLE EOT reply."""
    return (b & 0x93) == 0x12


@dataclass(frozen=True, kw_only=True)
class PrinterStatus:
    """What the printer reported. A field is ``None`` when the query that carries it was not made."""

    # DLE EOT 1 (printer status)
    drawer_pin3_high: bool | None = None
    offline: bool | None = None
    waiting_for_online_recovery: bool | None = None
    feed_button_pressed: bool | None = None
    # DLE EOT 2 (offline cause)
    cover_open: bool | None = None
    paper_fed_by_button: bool | None = None
    stopped_by_paper_end: bool | None = None
    error: bool | None = None
    # DLE EOT 3 (error cause)
    recoverable_error: bool | None = None
    autocutter_error: bool | None = None
    unrecoverable_error: bool | None = None
    auto_recoverable_error: bool | None = None
    # DLE EOT 4 (paper sensor)
    paper_near_end: bool | None = None
    paper_end: bool | None = None

    @property
    def errors(self) -> tuple[ErrorKind, ...]:
        flags = (
            (ErrorKind.RECOVERABLE, self.recoverable_error),
            (ErrorKind.AUTOCUTTER, self.autocutter_error),
            (ErrorKind.UNRECOVERABLE, self.unrecoverable_error),
            (ErrorKind.AUTO_RECOVERABLE, self.auto_recoverable_error),
        )
        return tuple(kind for kind, flag in flags if flag)

    @property
    def paper_out(self) -> bool:
        return bool(self.paper_end or self.stopped_by_paper_end)

    def faults(self) -> tuple[str, ...]:
        """Short reasons why the printer cannot print now (empty when nothing known stops it)."""
        return to_health(self, checked_at=0).faults

    def merged(self, other: PrinterStatus) -> PrinterStatus:
        """This status with every field that ``other`` knows taken from ``other``."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in self.__dataclass_fields__:
            value = getattr(other, name)
            if value is not None:
                values[name] = value
        return PrinterStatus(**values)


def _check(b: int) -> None:
    if not 0 <= b <= 0xFF or not is_status_reply(b):
        raise StatusDecodeError(f"0x{b:02x} is not a DLE EOT reply")


def decode_status_reply(n: int, b: int) -> PrinterStatus:
    """Decode the reply ``b`` to DLE EOT ``n``; :class:`StatusDecodeError` for an invalid byte."""
    _check(b)
    match StatusQuery(n):
        case StatusQuery.PRINTER:
            return PrinterStatus(
                drawer_pin3_high=bool(b & 0x04),
                offline=bool(b & 0x08),
                waiting_for_online_recovery=bool(b & 0x20),
                feed_button_pressed=bool(b & 0x40),
            )
        case StatusQuery.OFFLINE_CAUSE:
            return PrinterStatus(
                cover_open=bool(b & 0x04),
                paper_fed_by_button=bool(b & 0x08),
                stopped_by_paper_end=bool(b & 0x20),
                error=bool(b & 0x40),
            )
        case StatusQuery.ERROR_CAUSE:
            return PrinterStatus(
                recoverable_error=bool(b & 0x04),
                autocutter_error=bool(b & 0x08),
                unrecoverable_error=bool(b & 0x20),
                auto_recoverable_error=bool(b & 0x40),
            )
        case StatusQuery.PAPER_SENSOR:
            return PrinterStatus(paper_near_end=(b & 0x0C) != 0, paper_end=(b & 0x60) != 0)


def decode_status(replies: Mapping[int, int]) -> PrinterStatus:
    """Combine the replies to several DLE EOT queries (``{n: reply byte}``) into one status."""
    status = PrinterStatus()
    for n in sorted(replies):
        status = status.merged(decode_status_reply(n, replies[n]))
    return status


def encode_status_reply(n: int, status: PrinterStatus) -> int:
    """The byte a printer in ``status`` answers to DLE EOT ``n`` (unknown fields count as false)."""
    b = 0x12
    bits: tuple[tuple[int, bool | None], ...]
    match StatusQuery(n):
        case StatusQuery.PRINTER:
            bits = (
                (0x04, status.drawer_pin3_high),
                (0x08, status.offline),
                (0x20, status.waiting_for_online_recovery),
                (0x40, status.feed_button_pressed),
            )
        case StatusQuery.OFFLINE_CAUSE:
            bits = (
                (0x04, status.cover_open),
                (0x08, status.paper_fed_by_button),
                (0x20, status.stopped_by_paper_end),
                (0x40, status.error),
            )
        case StatusQuery.ERROR_CAUSE:
            bits = tuple((kind.value, kind in status.errors) for kind in ErrorKind)
        case StatusQuery.PAPER_SENSOR:
            bits = ((0x0C, status.paper_near_end), (0x60, status.paper_end))
    for mask, flag in bits:
        if flag:
            b |= mask
    return b


# ASB (GS a n) block layout, Epson TM style:
#   byte 1: 0x04 drawer pin 3, 0x08 offline, 0x20 cover open, 0x40 paper fed by button (0x10 fixed)
#   byte 2: 0x04 recoverable, 0x08 autocutter, 0x20 unrecoverable, 0x40 auto-recoverable error
#   byte 3: 0x03 paper near end, 0x0C paper end
#   byte 4: reserved (0)


def is_asb_first(b: int) -> bool:
    return (b & 0x93) == 0x10


def is_asb_rest(b: int) -> bool:
    return (b & 0x90) == 0


def decode_asb(block: bytes) -> PrinterStatus:
    """Decode a 4-byte ASB block; :class:`StatusDecodeError` (a ``ValueError``) if it is not one."""
    if len(block) != 4 or not is_asb_first(block[0]) or not all(is_asb_rest(b) for b in block[1:]):
        raise StatusDecodeError(f"not an ASB block: {block.hex(' ')}")
    b1, b2, b3 = block[0], block[1], block[2]
    err = {kind: bool(b2 & kind.value) for kind in ErrorKind}
    return PrinterStatus(
        drawer_pin3_high=bool(b1 & 0x04),
        offline=bool(b1 & 0x08),
        cover_open=bool(b1 & 0x20),
        paper_fed_by_button=bool(b1 & 0x40),
        error=any(err.values()),
        recoverable_error=err[ErrorKind.RECOVERABLE],
        autocutter_error=err[ErrorKind.AUTOCUTTER],
        unrecoverable_error=err[ErrorKind.UNRECOVERABLE],
        auto_recoverable_error=err[ErrorKind.AUTO_RECOVERABLE],
        paper_near_end=(b3 & 0x03) != 0,
        paper_end=(b3 & 0x0C) != 0,
    )


def encode_asb(status: PrinterStatus) -> bytes:
    b1 = 0x10
    for mask, flag in (
        (0x04, status.drawer_pin3_high),
        (0x08, status.offline),
        (0x20, status.cover_open),
        (0x40, status.paper_fed_by_button),
    ):
        if flag:
            b1 |= mask
    b2 = 0
    for kind in status.errors:
        b2 |= kind.value
    b3 = (0x03 if status.paper_near_end else 0) | (0x0C if status.paper_end else 0)
    return bytes((b1, b2, b3, 0))


def to_health(status: PrinterStatus, checked_at: int) -> PrinterHealth:
    """The wire form of a status read from a printer that answered (``reachable=True``).

    ``paper`` is ``"out"`` when the paper-end sensor or the offline cause says so, ``"near_end"``
    when the near-end sensor says so, ``"ok"`` only when the paper sensor (DLE EOT 4) was read,
    else ``"unknown"``. ``errors`` lists short lowercase words ("autocutter error"); a bare "error"
    appears when DLE EOT 2 reports an error whose cause was not queried.
    """
    paper: Literal["ok", "near_end", "out", "unknown"]
    if status.paper_out:
        paper = "out"
    elif status.paper_near_end:
        paper = "near_end"
    elif status.paper_end is not None:
        paper = "ok"
    else:
        paper = "unknown"
    errors = [kind.label for kind in status.errors]
    if status.error and not errors:
        errors.append("error")
    if status.offline is not None:
        online = not status.offline
    else:
        online = not (status.cover_open or status.paper_out or errors)
    return PrinterHealth(
        reachable=True,
        online=online,
        paper=paper,
        cover_open=bool(status.cover_open),
        errors=tuple(errors),
        drawer_open=status.drawer_pin3_high,
        checked_at=checked_at,
    )


# ----------------------------------------------------------------------------------------------
# The inbound stream.


@dataclass(frozen=True, kw_only=True)
class StatusByte:
    """A DLE EOT reply."""

    value: int


@dataclass(frozen=True, kw_only=True)
class GsRReply:
    """A GS r reply (or another single-byte reply with bits 4 and 7 clear)."""

    value: int


@dataclass(frozen=True, kw_only=True)
class AsbBlock:
    """A 4-byte Automatic Status Back block."""

    data: bytes

    @property
    def status(self) -> PrinterStatus:
        return decode_asb(self.data)


@dataclass(frozen=True, kw_only=True)
class Xon:
    pass


@dataclass(frozen=True, kw_only=True)
class Xoff:
    pass


@dataclass(frozen=True, kw_only=True)
class BlockReply:
    """A NUL-terminated reply: ``header`` (0x37 or 0x5F) then ``payload`` (without the NUL)."""

    header: int
    payload: bytes


@dataclass(frozen=True, kw_only=True)
class Unknown:
    """A byte that fits no rule (or the header of a dropped, overlong block)."""

    value: int


Event = StatusByte | GsRReply | AsbBlock | Xon | Xoff | BlockReply | Unknown


class InboundParser:
    """Classifies the bytes a printer sends back; see the module docstring for the rules."""

    def __init__(self, *, max_block_payload: int = MAX_BLOCK_PAYLOAD) -> None:
        self._max_block = max_block_payload
        self._asb = bytearray()  # an ASB block being collected (first byte included)
        self._block_header: int | None = None
        self._block = bytearray()

    @property
    def pending(self) -> int:
        """How many bytes are held in an incomplete ASB block or block reply."""
        if self._block_header is not None:
            return 1 + len(self._block)
        return len(self._asb)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for b in data:
            self._byte(b, events)
        return events

    def _byte(self, b: int, events: list[Event]) -> None:
        if b == XON:
            events.append(Xon())
            return
        if b == XOFF:
            events.append(Xoff())
            return
        if self._block_header is not None:
            if b == 0:
                events.append(BlockReply(header=self._block_header, payload=bytes(self._block)))
                self._block_header = None
                self._block.clear()
            elif len(self._block) >= self._max_block:
                events.append(Unknown(value=self._block_header))
                self._block_header = None
                self._block.clear()
            else:
                self._block.append(b)
            return
        if self._asb:
            if is_asb_rest(b):
                self._asb.append(b)
                if len(self._asb) == 4:
                    events.append(AsbBlock(data=bytes(self._asb)))
                    self._asb.clear()
                return
            first, rest = self._asb[0], bytes(self._asb[1:])
            self._asb.clear()
            events.append(Unknown(value=first))
            for r in rest:
                self._byte(r, events)
            self._byte(b, events)
            return
        if is_status_reply(b):
            events.append(StatusByte(value=b))
        elif is_asb_first(b):
            self._asb.append(b)
        elif b in BLOCK_HEADERS:
            self._block_header = b
        elif (b & 0x90) == 0:
            events.append(GsRReply(value=b))
        else:
            events.append(Unknown(value=b))


__all__ = [
    "MAX_BLOCK_PAYLOAD",
    "AsbBlock",
    "BlockReply",
    "ErrorKind",
    "Event",
    "GsRReply",
    "InboundParser",
    "PrinterStatus",
    "StatusByte",
    "StatusDecodeError",
    "StatusQuery",
    "Unknown",
    "Xoff",
    "Xon",
    "decode_asb",
    "decode_status",
    "decode_status_reply",
    "encode_asb",
    "encode_status_reply",
    "is_status_reply",
    "to_health",
]
