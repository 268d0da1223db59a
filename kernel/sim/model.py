"""The simulated printer's pure state machine (:class:`PrinterModel`): no I/O, no clock.

A bounded receive buffer, real-time commands (DLE EOT, DLE ENQ, DLE DC4) answered on arrival, print
data consumed by :meth:`~PrinterModel.process` at the speed the caller chooses, faults that hold the
data, and decoding of what was printed into :class:`~kernel.sim.state.Receipt` objects for assertions.

The receive side tokenizes the incoming stream (:func:`kernel.escpos.segment.measure`) so a
``10 04 n`` inside image data is not mistaken for a status query; real printers scan blindly, which
is one more reason the link sends real-time commands only between complete commands.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from kernel.escpos.segment import DLE, NEED_MORE, measure
from kernel.escpos.status import (
    ErrorKind,
    PrinterStatus,
    encode_asb,
    encode_status_reply,
)
from kernel.sim.state import BARCODE_NAMES, CODE_PAGES, KEEP, Faults, Keep, Overflow, Receipt

log = logging.getLogger(__name__)

XON: Final = b"\x11"
XOFF: Final = b"\x13"

_QUERY_COMMANDS: Final = frozenset({"GS r", "GS ( H", "GS I", "GS a"})
_RECOVERABLE = frozenset({ErrorKind.RECOVERABLE, ErrorKind.AUTOCUTTER, ErrorKind.AUTO_RECOVERABLE})
_TEXT_RUN = re.compile(rb"[\x20-\xff]+")
#: A declared command length beyond this is treated as garbage (skip the prefix byte).
_MAX_COMMAND = 4 * 1024 * 1024
#: How many bytes of an undetermined header (e.g. GS k form A without its NUL) are waited for.
_MAX_PENDING_HEADER = 1024


class PrinterModel:
    """A simulated ESC/POS printer as a pure state machine (no I/O, no clock).

    :meth:`receive` takes what arrives on the wire; :meth:`process` prints up to ``max_bytes`` of
    the buffer and returns every response byte pending (real-time replies included);
    :meth:`take_output` returns the pending responses without printing.
    """

    def __init__(
        self,
        *,
        buffer_size: int = 4096,
        overflow: Overflow | str = Overflow.DROP,
        codepage: str = "cp858",
        xonxoff: bool = False,
        drawer_pin3_high: bool = False,
        model_id: bytes = b"TM-SIM",
        mute: bool = False,
    ) -> None:
        if buffer_size < 16:
            raise ValueError("buffer_size must be at least 16")
        self.buffer_size = buffer_size
        self.overflow = Overflow(overflow)
        self.default_codepage = codepage
        self.xonxoff = xonxoff
        self.model_id = model_id
        self.mute = mute
        """A mute printer sends nothing back (a one-way cable, or a clone that answers no query):
        real-time replies, GS r, ASB, XON/XOFF are all discarded. It still prints."""
        self.on_change: Callable[[], None] | None = None
        """Called after anything observable changed (output pending, receipt, fault); set by transports."""

        self.receipts: list[Receipt] = []
        self.raw_printed = bytearray()
        """Every byte taken from the buffer and processed, in order."""
        self.payload_printed = bytearray()
        """What was printed without the query commands a transport inserts (GS r, GS ( H, GS I)."""
        self.bytes_received = 0
        self.bytes_dropped = 0
        self.bytes_cleared = 0
        self.bytes_stored = 0
        """Bytes of print data received (everything but real-time commands), dropped ones included."""
        self.drawer_pulses = 0
        self._faults = Faults()
        self._drawer_pin3_high = drawer_pin3_high
        self._rx = bytearray()  # arrived, not yet scanned for real-time commands
        self._skip = 0  # payload bytes of a long command still to pass through the scanner
        self._buffer = bytearray()  # the printer's receive buffer
        self._dec = bytearray()  # taken from the buffer, not yet a complete command
        self._out = bytearray()
        self._xoff_sent = False
        self._asb_mask = 0
        self._codepage = codepage
        self._line: list[str] = []
        self._lines: list[str] = []
        self._last_image: tuple[int, int] | None = None  # (width, height) of the line just printed
        self._qr: dict[int, bytes] = {}

    # -- state -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @property
    def holding(self) -> bool:
        return self._faults.holding

    @property
    def buffered(self) -> int:
        """Bytes waiting to be printed."""
        return len(self._buffer)

    @property
    def accepting(self) -> bool:
        """False when a transport in ``block`` mode should stop reading (the buffer is full)."""
        return self.overflow is Overflow.DROP or len(self._buffer) < self.buffer_size

    @property
    def status(self) -> PrinterStatus:
        f = self._faults
        return PrinterStatus(
            drawer_pin3_high=self._drawer_pin3_high,
            offline=f.holding,
            waiting_for_online_recovery=f.error in _RECOVERABLE,
            feed_button_pressed=False,
            cover_open=f.cover_open,
            paper_fed_by_button=False,
            stopped_by_paper_end=f.paper_out,
            error=f.error is not None,
            recoverable_error=f.error is ErrorKind.RECOVERABLE,
            autocutter_error=f.error is ErrorKind.AUTOCUTTER,
            unrecoverable_error=f.error is ErrorKind.UNRECOVERABLE,
            auto_recoverable_error=f.error is ErrorKind.AUTO_RECOVERABLE,
            paper_near_end=f.paper_near_end,
            paper_end=f.paper_out,
        )

    def set_fault(
        self,
        *,
        paper_out: bool | None = None,
        paper_near_end: bool | None = None,
        cover_open: bool | None = None,
        offline: bool | None = None,
        error: ErrorKind | Keep | None = KEEP,
    ) -> None:
        """Change the faults named; the others stay as they are (``error=None`` clears the error)."""
        before = self.status
        f = self._faults
        self._faults = Faults(
            paper_out=f.paper_out if paper_out is None else paper_out,
            paper_near_end=f.paper_near_end if paper_near_end is None else paper_near_end,
            cover_open=f.cover_open if cover_open is None else cover_open,
            offline=f.offline if offline is None else offline,
            error=f.error if isinstance(error, Keep) else error,
        )
        self._status_changed(before)
        self._changed()

    def clear_faults(self) -> None:
        before = self.status
        self._faults = Faults()
        self._status_changed(before)
        self._changed()

    # -- receive side ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Take bytes from the wire: answer real-time commands now, buffer the rest."""
        self.bytes_received += len(data)
        self._rx += data
        self._scan()
        self._changed()

    def _scan(self) -> None:
        rx = self._rx
        while rx:
            if self._skip:
                take = min(self._skip, len(rx))
                self._store(rx[:take])
                del rx[:take]
                self._skip -= take
                continue
            if rx[0] >= 0x20:
                match = _TEXT_RUN.match(rx)
                assert match is not None
                self._store(rx[: match.end()])
                del rx[: match.end()]
                continue
            m = measure(bytes(rx[:16]) if rx[:2] != b"\x1dk" else bytes(rx), 0)
            if m is NEED_MORE:
                if len(rx) <= _MAX_PENDING_HEADER:
                    return
                m = None
            if m is None or m[0] > _MAX_COMMAND:
                self._store(rx[:1])  # unknown: the printer will ignore the prefix byte
                del rx[:1]
                continue
            length = m[0]
            if rx[0] == DLE:
                if len(rx) < length:
                    return
                self._realtime(bytes(rx[:length]))
                del rx[:length]
                continue
            take = min(length, len(rx))
            self._store(rx[:take])
            del rx[:take]
            self._skip = length - take

    def _store(self, data: bytes | bytearray) -> None:
        self.bytes_stored += len(data)
        if self.overflow is Overflow.DROP:
            room = max(0, self.buffer_size - len(self._buffer))
            if len(data) > room:
                self.bytes_dropped += len(data) - room
                data = data[:room]
        self._buffer += data
        if self.xonxoff and not self._xoff_sent and len(self._buffer) >= self.buffer_size * 3 // 4:
            self._xoff_sent = True
            self._out += XOFF

    def _realtime(self, cmd: bytes) -> None:
        match cmd[1], cmd[2]:
            case 0x04, n if 1 <= n <= 4:  # DLE EOT n
                self._out.append(encode_status_reply(n, self.status))
            case 0x05, n if n in (1, 2):  # DLE ENQ n: recover from a recoverable error
                if self._faults.error in _RECOVERABLE:
                    before = self.status
                    self._faults = replace(self._faults, error=None)
                    if n == 2:
                        self._clear_buffers()
                    self._status_changed(before)
            case 0x14, 1:  # DLE DC4 1 m t: drawer pulse
                self.drawer_pulses += 1
            case 0x14, 8:  # DLE DC4 8 1 3 20 1 6 2 8: clear buffers
                self._clear_buffers()
            case _:
                log.debug("ignoring real-time command %s", cmd.hex(" "))

    def _clear_buffers(self) -> None:
        self.bytes_cleared += len(self._buffer) + len(self._dec)
        self._buffer.clear()
        self._dec.clear()

    # -- print side --------------------------------------------------------------------------

    def take_output(self) -> bytes:
        """Every response byte produced so far and not yet taken."""
        out = b"" if self.mute else bytes(self._out)
        self._out.clear()
        return out

    def process(self, max_bytes: int | None = None) -> bytes:
        """Print up to ``max_bytes`` buffered bytes (all when ``None``); return pending responses.

        Nothing is printed while a fault holds the printer.
        """
        budget = len(self._buffer) if max_bytes is None else max_bytes
        printed_any = False
        while budget > 0 and self._buffer and not self.holding:
            take = min(budget, len(self._buffer))
            chunk = self._buffer[:take]
            del self._buffer[:take]
            budget -= take
            self.raw_printed += chunk
            self._dec += chunk
            self._decode()
            printed_any = True
        if self.xonxoff and self._xoff_sent and len(self._buffer) <= self.buffer_size // 4:
            self._xoff_sent = False
            self._out += XON
        if printed_any:
            self._changed()
        return self.take_output()

    def _decode(self) -> None:
        dec = self._dec
        pos = 0
        n = len(dec)
        while pos < n and not self.holding:
            b = dec[pos]
            if b >= 0x20:
                match = _TEXT_RUN.match(dec, pos)
                assert match is not None
                self._text(bytes(dec[pos : match.end()]))
                self.payload_printed += dec[pos : match.end()]
                pos = match.end()
                continue
            m = measure(bytes(dec[pos : pos + 16]) if dec[pos : pos + 2] != b"\x1dk" else bytes(dec[pos:]), 0)
            if m is NEED_MORE:
                if n - pos <= _MAX_PENDING_HEADER:
                    break
                m = None
            if m is None or m[0] > _MAX_COMMAND:
                log.debug("skipping unknown command byte 0x%02x", b)
                self.payload_printed.append(b)
                pos += 1
                continue
            length, name = m
            if pos + length > n:
                break
            cmd = bytes(dec[pos : pos + length])
            if name not in _QUERY_COMMANDS:
                self.payload_printed += cmd
            self._execute(cmd, name)
            pos += length
        del dec[:pos]

    # -- decoding ----------------------------------------------------------------------------

    def _text(self, data: bytes) -> None:
        self._last_image = None
        self._line.append(data.decode(self._codepage, errors="replace"))

    def _end_line(self, *, force: bool) -> None:
        if self._line or force:
            self._lines.append("".join(self._line))
            self._line = []

    def _item(self, item: str) -> None:
        self._end_line(force=False)
        self._last_image = None
        self._lines.append(item)

    def _image(self, width: int, height: int) -> None:
        self._end_line(force=False)
        if self._last_image is not None and self._last_image[0] == width and self._lines:
            height += self._last_image[1]
            self._lines[-1] = f"[image {width}x{height}]"
        else:
            self._lines.append(f"[image {width}x{height}]")
        self._last_image = (width, height)

    def _cut(self) -> None:
        self._end_line(force=False)
        lines = list(self._lines)
        while lines and lines[-1] == "":
            lines.pop()
        self.receipts.append(Receipt(lines=tuple(lines)))
        self._lines = []
        self._last_image = None

    def _execute(self, cmd: bytes, name: str) -> None:
        match name:
            case "LF":
                self._last_image = None
                self._end_line(force=True)
            case "ESC @":
                self._codepage = self.default_codepage
            case "ESC t":
                self._codepage = CODE_PAGES.get(cmd[2], self._codepage)
            case "ESC d" | "ESC J":
                self._end_line(force=False)
            case "GS V":
                self._cut()
            case "GS v 0":
                self._image((cmd[4] | cmd[5] << 8) * 8, cmd[6] | cmd[7] << 8)
            case "ESC *":
                self._image(cmd[3] | cmd[4] << 8, 24 if cmd[2] >= 32 else 8)
            case "GS ( L" | "GS 8 L":
                base = 5 if name == "GS ( L" else 7
                if len(cmd) >= base + 9 and cmd[base + 1] == 112:
                    w = cmd[base + 5] | cmd[base + 6] << 8
                    h = cmd[base + 7] | cmd[base + 8] << 8
                    self._image(w, h)
            case "GS k":
                m = cmd[2]
                data = cmd[3:-1] if m <= 6 else cmd[4:]
                text = data.decode("latin-1")
                if m == 73 and text[:2] in ("{A", "{B"):
                    text = text[2:]
                self._item(f"[barcode {BARCODE_NAMES.get(m, str(m))} {text}]")
            case "GS ( k" if len(cmd) >= 8:
                cn, fn = cmd[5], cmd[6]
                if fn == 80:
                    self._qr[cn] = cmd[8:]
                elif fn == 81:
                    kind = {49: "qr", 48: "pdf417"}.get(cn, f"2d-{cn}")
                    self._item(f"[{kind} {self._qr.get(cn, b'').decode('utf-8', errors='replace')}]")
            case "ESC p":
                self._item("[drawer]")
            case "ESC B" | "ESC ( A":
                self._item("[buzzer]")
            case "GS r":
                self._out.append(self._gs_r_reply(cmd[2]))
                self._changed()
            case "GS ( H" if len(cmd) >= 11 and cmd[5] == 0x30:
                self._out += b"\x37\x22" + cmd[7:11] + b"\x00"
                self._changed()
            case "GS I":
                self._out += self._gs_i_reply(cmd[2])
                self._changed()
            case "GS a":
                before_mask, self._asb_mask = self._asb_mask, cmd[2]
                if self._asb_mask and not before_mask:
                    self._out += encode_asb(self.status)
                    self._changed()
            case "HT":
                self._line.append("\t")
            case _:
                pass  # formatting and everything else: consumed, not shown

    def _gs_r_reply(self, n: int) -> int:
        if n in (1, 49):
            f = self._faults
            return (0x03 if f.paper_near_end else 0) | (0x0C if f.paper_out else 0)
        if n in (2, 50):
            return 0x01 if self._drawer_pin3_high else 0
        return 0

    def _gs_i_reply(self, n: int) -> bytes:
        match n:
            case 1 | 49:
                return b"\x20"
            case 2 | 50:
                return b"\x02"
            case 3 | 51:
                return b"\x64"
            case 65:
                return b"_1.00\x00"
            case 66:
                return b"_PRINTFLEET\x00"
            case 67:
                return b"_" + self.model_id + b"\x00"
            case 68:
                return b"_0000001\x00"
            case 69:
                return b"_PC858\x00"
            case _:
                return b""

    def _status_changed(self, before: PrinterStatus) -> None:
        if self._asb_mask and self.status != before:
            self._out += encode_asb(self.status)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- for assertions ----------------------------------------------------------------------

    @property
    def pending_lines(self) -> tuple[str, ...]:
        """Lines printed since the last cut (the partial line included)."""
        partial = ["".join(self._line)] if self._line else []
        return (*self._lines, *partial)

    def text(self) -> str:
        """Everything printed so far as text, cut receipts first, then the pending lines."""
        lines = [line for r in self.receipts for line in r.lines]
        lines.extend(self.pending_lines)
        return "\n".join(lines)
