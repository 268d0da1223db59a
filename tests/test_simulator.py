"""The simulated printer: faults, status bits, barriers, overflow, decoding, and its transports."""

from __future__ import annotations

import asyncio

import pytest
import serial

from kernel.escpos.status import ErrorKind, InboundParser, StatusByte
from kernel.sim.printer import Overflow, PrinterModel, PtyPrinter, TcpPrinter

DLE_EOT = [b"\x10\x04\x01", b"\x10\x04\x02", b"\x10\x04\x03", b"\x10\x04\x04"]
GS_R = b"\x1dr\x01"
CUT = b"\x1dV\x00"


def eot_replies(model: PrinterModel) -> bytes:
    model.take_output()
    for query in DLE_EOT:
        model.receive(query)
    return model.take_output()


# The table of notes/escpos.md, one row per fault: replies to DLE EOT 1, 2, 3, 4.
@pytest.mark.parametrize(
    ("faults", "replies"),
    [
        ({}, "12 12 12 12"),
        ({"paper_out": True}, "1a 32 12 72"),
        ({"paper_near_end": True}, "12 12 12 1e"),
        ({"paper_out": True, "paper_near_end": True}, "1a 32 12 7e"),
        ({"cover_open": True}, "1a 16 12 12"),
        ({"offline": True}, "1a 12 12 12"),
        ({"error": ErrorKind.AUTOCUTTER}, "3a 52 1a 12"),
        ({"error": ErrorKind.UNRECOVERABLE}, "1a 52 32 12"),
        ({"error": ErrorKind.RECOVERABLE}, "3a 52 16 12"),
        ({"error": ErrorKind.AUTO_RECOVERABLE}, "3a 52 52 12"),
    ],
)
def test_dle_eot_bits_are_exact(faults: dict[str, object], replies: str) -> None:
    model = PrinterModel()
    model.set_fault(**faults)  # type: ignore[arg-type]
    assert eot_replies(model).hex(" ") == replies


def test_drawer_pin_bit() -> None:
    assert eot_replies(PrinterModel(drawer_pin3_high=True)).hex(" ") == "16 12 12 12"


def test_fault_holds_data_and_nothing_is_lost() -> None:
    model = PrinterModel()
    model.set_fault(paper_out=True)
    model.receive(b"first line\n" + GS_R + b"second line\n" + CUT)
    assert model.process() == b""  # held: no GS r reply
    assert model.raw_printed == b""
    assert model.buffered > 0
    assert eot_replies(model)[1] == 0x32  # real-time status still answered
    model.set_fault(paper_out=False)
    assert model.process() == b"\x00"  # the GS r reply, paper ok
    assert [r.text for r in model.receipts] == ["first line\nsecond line"]
    assert model.payload_printed == b"first line\nsecond line\n" + CUT


@pytest.mark.parametrize("fault", ["cover_open", "offline"])
def test_other_holding_faults(fault: str) -> None:
    model = PrinterModel()
    model.set_fault(**{fault: True})  # type: ignore[arg-type]
    model.receive(b"x\n" + GS_R)
    assert model.process() == b""
    model.clear_faults()
    assert model.process() == b"\x00"


def test_recoverable_error_cleared_by_dle_enq() -> None:
    model = PrinterModel()
    model.set_fault(error=ErrorKind.AUTOCUTTER)
    model.receive(b"x\n" + GS_R)
    assert model.process() == b""
    model.receive(b"\x10\x05\x01")  # DLE ENQ 1: recover and restart
    assert model.process() == b"\x00"


def test_gs_r_is_answered_only_after_prior_data() -> None:
    model = PrinterModel()
    text = b"0123456789" * 30
    model.receive(text + GS_R)
    assert model.process(len(text)) == b""
    assert model.process(2) == b""  # GS r not complete yet
    assert model.process(1) == b"\x00"
    assert model.raw_printed == text + GS_R


def test_gs_r_reports_paper_near_end() -> None:
    model = PrinterModel()
    model.set_fault(paper_near_end=True)
    model.receive(GS_R)
    assert model.process() == b"\x03"


def test_overflow_drop_counts_and_realtime_still_answered() -> None:
    model = PrinterModel(buffer_size=64, overflow=Overflow.DROP)
    model.receive(b"a" * 100)
    assert model.bytes_dropped == 36
    assert model.buffered == 64
    model.receive(DLE_EOT[0])  # buffer full: still answered
    assert model.take_output() == b"\x12"
    model.process()
    assert model.raw_printed == b"a" * 64


def test_overflow_block_never_drops() -> None:
    model = PrinterModel(buffer_size=64, overflow="block")
    model.receive(b"a" * 100)
    assert model.bytes_dropped == 0
    assert not model.accepting
    model.process(50)
    assert model.accepting
    model.process()
    assert model.raw_printed == b"a" * 100


def test_xonxoff_emitted_around_watermarks() -> None:
    model = PrinterModel(buffer_size=100, overflow="block", xonxoff=True)
    model.receive(b"a" * 80)
    assert model.take_output() == b"\x13"
    assert model.process(70) == b"\x11"


def test_dle_eot_inside_image_data_is_not_a_query() -> None:
    model = PrinterModel()
    band = b"\x1dv0\x00\x01\x00\x03\x00" + b"\x10\x04\x01"
    model.receive(band[:5])
    model.receive(band[5:])
    assert model.take_output() == b""
    model.process()
    assert model.raw_printed == band
    assert model.pending_lines == ("[image 8x3]",)


def test_decoding_to_text() -> None:
    model = PrinterModel()
    qr_store = b"\x1d(k\x0c\x00\x31\x50\x30" + b"https://x"
    data = (
        b"\x1b@"
        + b"\x1b!\x38\x1ba\x01Caf\x82 cr\xd5me\n"  # cp858 default: 0x82 e-acute, 0xD5 euro
        + b"\x1bt\x00\xfe\x1bt\x13\xd5\n"  # cp437 0xFE is a square; back to cp858
        + b"\x1dv0\x00\x48\x00\x0e\x00"
        + bytes(72 * 14)
        + b"\x1dv0\x00\x48\x00\x0e\x00"
        + bytes(72 * 14)  # two bands of one image
        + b"\x1dk\x49\x06{B1234"
        + b"\x1dk\x04*1*\x00"
        + b"\x1d(k\x03\x00\x31\x43\x06"
        + qr_store
        + b"\x1d(k\x03\x00\x31\x51\x30"
        + b"\x1bp\x00\x19\xfa"
        + b"\x1bB\x02\x01"
        + b"\x1bE\x01total\x1bE\x00\n\n"
        + b"\x1dV\x41\x03"
        + b"second\n"
        + CUT
    )
    model.receive(data)
    model.process()
    assert [r.lines for r in model.receipts] == [
        (
            "Café cr€me",
            "■€",
            "[image 576x28]",
            "[barcode CODE128 1234]",
            "[barcode CODE39 *1*]",
            "[qr https://x]",
            "[drawer]",
            "[buzzer]",
            "total",
        ),
        ("second",),
    ]
    assert model.receipts[1].text == "second"
    assert "second" in model.text()


def test_asb_sent_on_enable_and_on_change() -> None:
    model = PrinterModel()
    model.receive(b"\x1da\x0f")
    assert model.process() == b"\x10\x00\x00\x00"
    model.set_fault(cover_open=True)
    assert model.take_output() == b"\x38\x00\x00\x00"
    model.set_fault(cover_open=False, paper_near_end=True)
    assert model.take_output() == b"\x10\x00\x03\x00"


def test_block_replies() -> None:
    model = PrinterModel(model_id=b"TM-X")
    model.receive(b"\x1d(H\x06\x00\x30\x30ABCD" + b"\x1dI\x43")
    assert model.process() == b"\x37\x22ABCD\x00" + b"_TM-X\x00"


# -- transports --------------------------------------------------------------------------------


def _query(url: str) -> list[int]:
    with serial.serial_for_url(url, timeout=1.0, write_timeout=1.0) as port:
        port.write(b"".join(DLE_EOT))
        data = port.read(4)
    return [e.value for e in InboundParser().feed(data) if isinstance(e, StatusByte)]


async def test_pty_printer_answers_and_decodes() -> None:
    async with PtyPrinter(drain_bytes_per_s=50_000) as printer:
        printer.set_fault(paper_out=True)
        assert await asyncio.to_thread(_query, printer.url) == [0x1A, 0x32, 0x12, 0x72]
        printer.set_fault(paper_out=False)
        # the agent may reopen the port: the simulator keeps the pty alive
        assert await asyncio.to_thread(_query, printer.url) == [0x12, 0x12, 0x12, 0x12]

        def write_receipt() -> None:
            with serial.serial_for_url(printer.url, write_timeout=1.0) as port:
                port.write(b"\x1b@hello\r\n" + CUT)

        await asyncio.to_thread(write_receipt)
        receipts = await printer.wait_for_receipts(1, timeout=5)
        assert receipts[0].text == "hello"


async def test_tcp_printer_answers_one_client() -> None:
    async with TcpPrinter() as printer:
        assert printer.url.startswith("socket://127.0.0.1:")
        assert await asyncio.to_thread(_query, printer.url) == [0x12, 0x12, 0x12, 0x12]

        def write_receipt() -> None:
            with serial.serial_for_url(printer.url, write_timeout=1.0) as port:
                port.write(b"tcp\n" + CUT)

        await asyncio.to_thread(write_receipt)
        receipts = await printer.wait_for_receipts(1, timeout=5)
        assert receipts[0].text == "tcp"


async def test_wait_for_receipts_times_out() -> None:
    async with PtyPrinter() as printer:
        with pytest.raises(TimeoutError):
            await printer.wait_for_receipts(1, timeout=0.05)
