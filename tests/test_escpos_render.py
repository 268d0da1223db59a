"""Byte-exact tests of the ESC/POS renderer.

Expected bytes are written out by hand, command by command, from the ESC/POS reference; they are
not produced by the code under test.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import subprocess
import sys
from typing import Any

import pytest
import qrcode
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cloud.render.document import (
    BarcodeItem,
    BuzzerItem,
    ColumnsItem,
    CutItem,
    Document,
    DocumentError,
    DrawerItem,
    FeedItem,
    ImageItem,
    Item,
    LineItem,
    QrItem,
    TextItem,
    parse_document,
    text_document,
)
from cloud.render.escpos import render, render_raw
from kernel.escpos.profiles import PROFILE_NAMES, PrinterProfile, get_profile
from kernel.wire import MAX_JOB_BYTES

G80 = get_profile("generic-80")  # 576 dots, 48 columns, cutter, drawer, buzzer, native QR
G58 = get_profile("generic-58")  # 384 dots, 32 columns, no cutter, no drawer, no buzzer
TM88 = get_profile("epson-tm-t88")  # 512 dots, 42 columns
#: A 58 mm printer that cannot draw QR codes itself: they go out as raster images.
G58_RASTER_QR = dataclasses.replace(G58, name="generic-58-raster-qr", native_qr=False)

INIT = b"\x1b\x40"  # ESC @: initialise
CP858 = b"\x1b\x74\x13"  # ESC t 19: code page PC858 (Euro)
PRE = INIT + CP858
LEFT = b"\x1b\x61\x00"  # ESC a 0: align left
CENTER = b"\x1b\x61\x01"  # ESC a 1: centre
RIGHT = b"\x1b\x61\x02"  # ESC a 2: align right


def doc(*items: Item) -> Document:
    return Document(items=items)


def body(item: Item, profile: PrinterProfile) -> bytes:
    """The bytes one item renders to, after the preamble (which is checked)."""
    out = render(doc(item), profile)
    assert out.startswith(PRE)
    return out[len(PRE) :]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bands(data: bytes) -> list[tuple[int, int, bytes]]:
    """Parse consecutive ``GS v 0`` commands: (bytes per row, rows, data) each; nothing else allowed."""
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"\x1d\x76\x30\x00", data[pos : pos + 8]  # GS v 0 m=0
        x = int.from_bytes(data[pos + 4 : pos + 6], "little")
        y = int.from_bytes(data[pos + 6 : pos + 8], "little")
        out.append((x, y, data[pos + 8 : pos + 8 + x * y]))
        pos += 8 + x * y
    return out


# ----------------------------------------------------------------------------------------------
# Preamble and text.


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_document_starts_with_init_and_code_page(name: str) -> None:
    assert render(doc(FeedItem(lines=1)), get_profile(name)) == PRE + b"\x1b\x64\x01"  # ESC d 1


def test_code_page_number_comes_from_the_profile() -> None:
    cp437 = dataclasses.replace(G80, name="cp437", code_page="cp437", code_page_number=0)
    # ESC @, ESC t 0, then "é" in cp437 (0x82) and "€" (not in cp437) as "?".
    assert render(doc(TextItem(text="é€")), cp437) == INIT + b"\x1b\x74\x00" + b"\x82?\n"


@pytest.mark.parametrize("profile", [G80, G58])
def test_plain_text_is_encoded_with_an_implied_line_feed(profile: PrinterProfile) -> None:
    assert body(TextItem(text="Hello\nWorld"), profile) == b"Hello\nWorld\n"
    assert body(TextItem(text=""), profile) == b"\n"


@pytest.mark.parametrize("profile", [G80, G58])
def test_euro_is_0xd5_in_cp858_and_unknown_characters_become_question_marks(profile: PrinterProfile) -> None:
    assert body(TextItem(text="5 € café"), profile) == b"5 \xd5 caf\x82\n"
    assert body(TextItem(text="日本"), profile) == b"??\n"
    # A decomposed é (e + combining acute) is composed first, so it prints as one character.
    assert body(TextItem(text="cafe\u0301"), profile) == b"caf\x82\n"


def test_tabs_expand_to_columns_of_eight() -> None:
    assert body(TextItem(text="a\tb"), G80) == b"a       b\n"


@pytest.mark.parametrize("profile", [G80, G58])
def test_styled_text_sets_each_style_and_resets_them_in_reverse(profile: PrinterProfile) -> None:
    item = TextItem(text="TOTAL", bold=True, underline=2, width=2, height=3, align="center", invert=True)
    assert body(item, profile) == (
        CENTER
        + b"\x1b\x45\x01"  # ESC E 1: bold on
        + b"\x1b\x2d\x02"  # ESC - 2: underline, 2 dots
        + b"\x1d\x21\x12"  # GS ! 0x12: width x2 (high nibble 1), height x3 (low nibble 2)
        + b"\x1d\x42\x01"  # GS B 1: reverse on
        + b"TOTAL\n"
        + b"\x1d\x42\x00"  # GS B 0: reverse off
        + b"\x1d\x21\x00"  # GS ! 0: normal size
        + b"\x1b\x2d\x00"  # ESC - 0: underline off
        + b"\x1b\x45\x00"  # ESC E 0: bold off
        + LEFT
    )


def test_single_styles() -> None:
    assert body(TextItem(text="x", align="right"), G80) == RIGHT + b"x\n" + LEFT
    assert body(TextItem(text="x", underline=1), G80) == b"\x1b\x2d\x01x\n\x1b\x2d\x00"  # ESC - 1 / ESC - 0
    assert body(TextItem(text="x", width=8, height=8), G80) == b"\x1d\x21\x77x\n\x1d\x21\x00"  # GS ! 0x77


# ----------------------------------------------------------------------------------------------
# Line and columns.


def test_line_spans_the_paper() -> None:
    assert body(LineItem(), G80) == b"-" * 48 + b"\n"
    assert body(LineItem(char="="), G58) == b"=" * 32 + b"\n"
    assert body(LineItem(char="*"), TM88) == b"*" * 42 + b"\n"


def test_line_of_wide_characters_is_shorter() -> None:
    # GS ! 0x10 (double width): 48 / 2 = 24 characters on 80 mm, 32 / 2 = 16 on 58 mm; GS ! 0 after.
    assert body(LineItem(char="=", width=2), G80) == b"\x1d\x21\x10" + b"=" * 24 + b"\n\x1d\x21\x00"
    assert body(LineItem(char="=", width=2), G58) == b"\x1d\x21\x10" + b"=" * 16 + b"\n\x1d\x21\x00"


def test_line_character_outside_the_code_page_prints_as_question_marks() -> None:
    assert body(LineItem(char="━"), G58) == b"?" * 32 + b"\n"


def test_columns_justify_left_and_right() -> None:
    assert body(ColumnsItem(left="Coffee", right="2.50 €"), G80) == b"Coffee" + b" " * 36 + b"2.50 \xd5\n"
    assert body(ColumnsItem(left="Coffee", right="2.50"), G58) == b"Coffee" + b" " * 22 + b"2.50\n"


def test_columns_cut_the_left_side_short_and_honour_bold_and_width() -> None:
    long_left = "A very long product name that does not fit"
    # 58 mm: 32 columns: "12.00" (5) + one space leaves 26 for the left side.
    assert body(ColumnsItem(left=long_left, right="12.00"), G58) == long_left[:26].encode() + b" 12.00\n"
    # Double width: 16 columns on 58 mm; bold on/off around it.
    assert body(ColumnsItem(left="Sum", right="9.90", bold=True, width=2), G58) == (
        b"\x1b\x45\x01"  # ESC E 1
        + b"\x1d\x21\x10"  # GS ! 0x10: double width
        + b"Sum" + b" " * 9 + b"9.90\n"
        + b"\x1d\x21\x00"  # GS ! 0
        + b"\x1b\x45\x00"  # ESC E 0
    )  # fmt: skip
    # A right side longer than the line takes all of it.
    assert body(ColumnsItem(left="x", right="9" * 40), G58) == b"9" * 32 + b"\n"


# ----------------------------------------------------------------------------------------------
# Barcodes.


def barcode_bytes(m: int, payload: bytes, *, height: int = 80, hri: int = 2) -> bytes:
    return (
        b"\x1d\x68" + bytes((height,))  # GS h n: height
        + b"\x1d\x77\x02"  # GS w 2: module width 2 dots
        + b"\x1d\x48" + bytes((hri,))  # GS H n: HRI position
        + b"\x1d\x6b" + bytes((m, len(payload))) + payload  # GS k m n d1..dn (format B)
    )  # fmt: skip


@pytest.mark.parametrize("profile", [G80, G58])
def test_ean13_is_sent_without_its_verified_check_digit(profile: PrinterProfile) -> None:
    item = BarcodeItem(symbology="EAN13", data="4006381333931")
    assert body(item, profile) == CENTER + barcode_bytes(67, b"400638133393") + LEFT  # m = 67: EAN13
    assert body(BarcodeItem(symbology="EAN13", data="400638133393"), profile) == body(item, profile)


@pytest.mark.parametrize("profile", [G80, G58])
def test_barcode_symbologies(profile: PrinterProfile) -> None:
    cases: list[tuple[BarcodeItem, bytes]] = [
        (BarcodeItem(symbology="EAN8", data="96385074", align="left"), barcode_bytes(68, b"9638507")),
        (BarcodeItem(symbology="UPCA", data="036000291452", align="left"), barcode_bytes(65, b"03600029145")),
        (BarcodeItem(symbology="CODE39", data="ABC-12", align="left"), barcode_bytes(69, b"ABC-12")),
        (BarcodeItem(symbology="ITF", data="123456", align="left"), barcode_bytes(70, b"123456")),
        # CODE128 with letters: code set B, "{" doubled.
        (BarcodeItem(symbology="CODE128", data="A{1", align="left"), barcode_bytes(73, b"{BA{{1")),
        # CODE128 with an even run of digits: code set C, two digits per byte.
        (BarcodeItem(symbology="CODE128", data="123456", align="left"), barcode_bytes(73, b"{C\x0c\x22\x38")),
    ]
    for item, expected in cases:
        assert body(item, profile) == expected, item


def test_barcode_height_hri_and_alignment() -> None:
    item = BarcodeItem(symbology="ITF", data="12", height=255, hri="both", align="right")
    assert body(item, G80) == RIGHT + barcode_bytes(70, b"12", height=255, hri=3) + LEFT
    none = BarcodeItem(symbology="ITF", data="12", height=1, hri="none", align="left")
    assert body(none, TM88) == barcode_bytes(70, b"12", height=1, hri=0)


def test_code128_too_wide_for_the_paper_is_refused_naming_the_item() -> None:
    # Code set B: 11 modules per character + start, check (11 each) + stop (13), 2 dots per module.
    data = "x" * 16  # (11 * 18 + 13) * 2 = 422 dots: fits 576, not 384
    assert render(doc(BarcodeItem(symbology="CODE128", data=data)), G80).startswith(PRE)
    with pytest.raises(DocumentError, match=r"^item 1 \(barcode\): CODE128 barcode is 422 dots wide") as info:
        render(doc(TextItem(text="x"), BarcodeItem(symbology="CODE128", data=data)), G58)
    assert (info.value.item, info.value.item_type, info.value.field) == (1, "barcode", "data")


# ----------------------------------------------------------------------------------------------
# QR codes.


def qr_module_count(data: str, ec: int) -> int:
    qr = qrcode.QRCode(error_correction=ec, box_size=1, border=4)
    qr.add_data(data.encode(), optimize=0)
    qr.make(fit=True)
    return len(qr.get_matrix())


@pytest.mark.parametrize("profile", [G80, G58, TM88])
def test_native_qr(profile: PrinterProfile) -> None:
    assert body(QrItem(data="hello", size=4, ec="Q"), profile) == (
        CENTER
        + b"\x1d\x28\x6b\x04\x00\x31\x41\x32\x00"  # GS ( k fn 165: model 2
        + b"\x1d\x28\x6b\x03\x00\x31\x43\x04"  # GS ( k fn 167: module size 4
        + b"\x1d\x28\x6b\x03\x00\x31\x45\x32"  # GS ( k fn 169: error correction Q (50)
        + b"\x1d\x28\x6b\x08\x00\x31\x50\x30hello"  # GS ( k fn 180: store 5 bytes (pL = 5 + 3)
        + b"\x1d\x28\x6b\x03\x00\x31\x51\x30"  # GS ( k fn 181: print
        + LEFT
    )


def test_native_qr_data_is_utf8_and_module_size_shrinks_to_fit_the_paper() -> None:
    out = body(QrItem(data="€", size=16, ec="L", align="left"), G58)
    # 3 UTF-8 bytes: pL = 6. Version 1 is 21 modules + 8 quiet = 29; 384 // 29 = 13 dots per module.
    assert qr_module_count("€", qrcode.constants.ERROR_CORRECT_L) == 29
    assert b"\x1d\x28\x6b\x03\x00\x31\x43\x0d" in out  # module size 13, not 16
    assert b"\x1d\x28\x6b\x06\x00\x31\x50\x30\xe2\x82\xac" in out


def test_raster_qr_matches_the_qr_matrix_dot_for_dot() -> None:
    out = body(QrItem(data="printfleet", size=3, ec="M"), G58_RASTER_QR)
    assert out.startswith(CENTER)
    assert out.endswith(LEFT)
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=1, border=4)
    qr.add_data(b"printfleet", optimize=0)
    qr.make(fit=True)
    matrix = qr.get_matrix()
    n = len(matrix) * 3  # 3 dots per module
    row_bytes = (n + 7) // 8
    expected_rows = []
    for row in matrix:
        bits = "".join(("1" if dark else "0") * 3 for row_dark in [row] for dark in row_dark)
        bits = bits.ljust(row_bytes * 8, "0")  # padded with white
        packed = int(bits, 2).to_bytes(row_bytes, "big")
        expected_rows.extend([packed] * 3)
    got = bands(out[len(CENTER) : -len(LEFT)])
    assert all(x == row_bytes and x * y <= 1024 for x, y, _ in got)
    assert sum(y for _, y, _ in got) == n
    assert b"".join(d for _, _, d in got) == b"".join(expected_rows)


# ----------------------------------------------------------------------------------------------
# Images.


def test_full_width_black_image_is_banded_within_1024_bytes() -> None:
    png = png_bytes(Image.new("1", (576, 100), 0))
    out = body(ImageItem(png=png, align="left"), G80)
    got = bands(out)
    # 72 bytes per row; 1024 // 72 = 14 rows (1008 bytes) per band: 7 bands of 14 and one of 2.
    assert [(x, y) for x, y, _ in got] == [(72, 14)] * 7 + [(72, 2)]
    assert all(len(d) == x * y <= 1024 for x, y, d in got)
    assert sum(y for _, y, _ in got) == 100
    assert all(d == b"\xff" * len(d) for _, _, d in got)  # every dot printed


def test_wide_image_is_scaled_to_the_paper_width() -> None:
    png = png_bytes(Image.new("L", (1152, 40), 0))
    on80 = bands(body(ImageItem(png=png, align="left"), G80))
    assert {x for x, _, _ in on80} == {72}  # 576 dots wide
    assert sum(y for _, y, _ in on80) == 20
    on58 = bands(body(ImageItem(png=png, align="left"), G58))
    # 384 dots = 48 bytes per row; 1024 // 48 = 21 rows per band; 1152x40 -> 384x13.
    assert [(x, y) for x, y, _ in on58] == [(48, 13)]


def test_small_image_is_padded_to_whole_bytes_with_white_and_aligned_by_esc_a() -> None:
    img = Image.new("L", (10, 2), 255)
    img.putpixel((0, 0), 0)
    img.putpixel((9, 1), 0)
    for profile in (G80, G58):
        assert body(ImageItem(png=png_bytes(img)), profile) == (
            CENTER
            + b"\x1d\x76\x30\x00\x02\x00\x02\x00"  # GS v 0, m 0, 2 bytes per row, 2 rows
            + b"\x80\x00"  # row 0: dot 0
            + b"\x00\x40"  # row 1: dot 9
            + LEFT
        )


def test_transparent_pixels_print_as_white() -> None:
    img = Image.new("RGBA", (8, 1), (0, 0, 0, 0))  # black but fully transparent
    img.putpixel((7, 0), (0, 0, 0, 255))
    assert bands(body(ImageItem(png=png_bytes(img), align="left"), G80)) == [(1, 1, b"\x01")]


def test_band_size_comes_from_the_profile() -> None:
    small_bands = dataclasses.replace(G58, name="small-bands", raster_band_bytes=48)
    got = bands(body(ImageItem(png=png_bytes(Image.new("1", (384, 5), 0)), align="left"), small_bands))
    assert [(x, y) for x, y, _ in got] == [(48, 1)] * 5


# ----------------------------------------------------------------------------------------------
# Feed, cut, drawer, buzzer.


@pytest.mark.parametrize("profile", [G80, G58])
def test_feed(profile: PrinterProfile) -> None:
    assert body(FeedItem(lines=3), profile) == b"\x1b\x64\x03"  # ESC d 3
    assert body(FeedItem(lines=255), profile) == b"\x1b\x64\xff"


def test_cut_feeds_then_cuts_only_with_a_cutter() -> None:
    assert body(CutItem(), G80) == b"\x1b\x64\x04" + b"\x1d\x56\x00"  # ESC d 4, GS V 0: full cut
    assert body(CutItem(partial=True, feed=2), TM88) == b"\x1b\x64\x02" + b"\x1d\x56\x01"  # GS V 1: partial
    assert body(CutItem(feed=0), G80) == b"\x1d\x56\x00"
    assert body(CutItem(), G58) == b"\x1b\x64\x04"  # no cutter: the feed alone
    assert body(CutItem(feed=0), G58) == b""


def test_drawer_kick_only_with_a_drawer_port() -> None:
    assert body(DrawerItem(pin=2), G80) == b"\x1b\x70\x00\x32\xfa"  # ESC p 0 50 250: pin 2, 100 ms on
    assert body(DrawerItem(pin=5), TM88) == b"\x1b\x70\x01\x32\xfa"  # ESC p 1: pin 5
    assert body(DrawerItem(), G58) == b""


def test_buzzer_only_with_a_buzzer() -> None:
    assert body(BuzzerItem(times=3, duration=2), G80) == b"\x1b\x42\x03\x02"  # ESC B 3 2
    assert body(BuzzerItem(times=3, duration=2), G58) == b""
    assert body(BuzzerItem(), TM88) == b""


def test_a_whole_receipt() -> None:
    receipt = doc(
        TextItem(text="CAFÉ", bold=True, align="center"),
        LineItem(),
        ColumnsItem(left="Espresso", right="2.10 €"),
        CutItem(),
    )
    assert render(receipt, G58) == (
        INIT
        + CP858
        + CENTER + b"\x1b\x45\x01" + b"CAF\x90\n" + b"\x1b\x45\x00" + LEFT  # É is 0x90 in cp858
        + b"-" * 32 + b"\n"
        + b"Espresso" + b" " * 18 + b"2.10 \xd5\n"
        + b"\x1b\x64\x04"  # no cutter on generic-58: feed only
    )  # fmt: skip


def test_text_document_is_the_text_then_feed_and_cut() -> None:
    assert (
        render(text_document("line 1\r\nline 2\n"), G80)
        == PRE + b"line 1\nline 2\n" + b"\x1b\x64\x04\x1d\x56\x00"
    )


# ----------------------------------------------------------------------------------------------
# Limits and raw jobs.


def test_a_document_that_renders_too_large_is_refused() -> None:
    big = TextItem(text="x" * 8000)
    fits = doc(*([big] * 32))  # 32 x 8001 bytes
    assert len(render(fits, G80)) <= MAX_JOB_BYTES
    with pytest.raises(
        DocumentError, match=r"^item 32 \(text\): the document renders to more than the 262144-byte"
    ):
        render(doc(*([big] * 33)), G80)


def test_a_tall_image_renders_too_large_for_a_job() -> None:
    png = png_bytes(Image.new("1", (576, 4000), 0))  # 4000 x 72 bytes = 288 000 > 256 KiB
    with pytest.raises(DocumentError, match=r"^item 0 \(image\): the document renders to more than"):
        render(doc(ImageItem(png=png)), G80)


def test_render_raw_passes_bytes_through_untouched() -> None:
    raw = b"\x1b\x40anything\x00\xff"
    assert render_raw(raw) == raw
    assert render_raw(bytearray(raw)) == raw
    assert render_raw(b"\x00" * MAX_JOB_BYTES) == b"\x00" * MAX_JOB_BYTES


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "raw print data is empty"),
        (b"x" * (MAX_JOB_BYTES + 1), "over the 262144-byte job limit"),
        ("text", "raw print data must be bytes"),
    ],
)
def test_render_raw_refuses_empty_oversized_or_non_bytes(data: Any, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        render_raw(data)


def test_importing_the_renderer_leaves_logging_alone_and_python_escpos_unloaded() -> None:
    code = (
        "import logging, sys\n"
        "before = list(logging.getLogger().handlers), logging.getLogger().level\n"
        "import cloud.render.escpos, kernel.escpos.profiles, cloud.render.document\n"
        "assert (list(logging.getLogger().handlers), logging.getLogger().level) == before\n"
        "assert 'escpos' not in sys.modules, 'python-escpos was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------------------------
# Property: any generated document either renders (starting with ESC @) or is refused with a
# DocumentError, on every profile; never another exception.


def _png(width: int, height: int, mode: str, shade: int) -> str:
    img = Image.new("L", (width, height), shade).convert(mode)
    return base64.b64encode(png_bytes(img)).decode()


_good_texts = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")), max_size=40
)
_bad_texts = st.text(max_size=10) | st.sampled_from(["\x1b@", "x" * 9000, "\ud800"])
_aligns = st.sampled_from(["left", "center", "right"])


def _f(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> tuple[st.SearchStrategy[Any], ...]:
    """A field's valid values and some invalid ones (drawn about one time in ten)."""
    return (good, bad)


_ITEM_FIELDS: dict[str, dict[str, tuple[st.SearchStrategy[Any], ...]]] = {
    "text": {
        "text": _f(_good_texts | st.sampled_from(["€ 5", "a\tb", "a\r\nb", "x" * 8000]), _bad_texts),
        "bold": _f(st.booleans(), st.just(1)),
        "underline": _f(st.integers(0, 2), st.integers(3, 9)),
        "width": _f(st.integers(1, 8), st.just(0)),
        "height": _f(st.integers(1, 8), st.just(9)),
        "align": _f(_aligns, st.just("middle")),
        "invert": _f(st.booleans(), st.none()),
    },
    "line": {
        "char": _f(st.sampled_from(["-", "=", "━", "€"]), st.sampled_from(["", "ab", " "])),
        "width": _f(st.integers(1, 8), st.just(2.0)),
    },
    "columns": {
        "left": _f(_good_texts, _bad_texts),
        "right": _f(_good_texts, _bad_texts),
        "bold": _f(st.booleans(), st.just("yes")),
        "width": _f(st.integers(1, 8), st.just(0)),
    },
    "barcode": {
        "symbology": _f(
            st.sampled_from(["CODE128", "EAN13", "EAN8", "UPCA", "CODE39", "ITF"]), st.just("QR")
        ),
        "data": _f(
            st.sampled_from(["4006381333931", "400638133393", "96385074", "036000291452", "ABC-12", "1234"])
            | st.text(alphabet="0123456789AZaz{ -", min_size=1, max_size=30),
            st.text(alphabet="0123456789*{", max_size=60),
        ),
        "height": _f(st.integers(1, 255), st.just(256)),
        "hri": _f(st.sampled_from(["none", "above", "below", "both"]), st.just("left")),
        "align": _f(_aligns, st.just("middle")),
    },
    "qr": {
        "data": _f(_good_texts.filter(bool) | st.just("€" * 400), st.just("") | _bad_texts),
        "size": _f(st.integers(1, 16), st.just(17)),
        "ec": _f(st.sampled_from(["L", "M", "Q", "H"]), st.just("X")),
        "align": _f(_aligns, st.just("middle")),
    },
    "image": {
        "png": _f(
            st.builds(
                _png,
                st.integers(1, 700),
                st.integers(1, 30),
                st.sampled_from(["1", "L", "RGB", "RGBA", "P", "LA", "I;16"]),
                st.integers(0, 255),
            ),
            st.sampled_from(["", "not base64!", base64.b64encode(b"GIF89a").decode(), 7]),
        ),
        "align": _f(_aligns, st.just("middle")),
    },
    "feed": {"lines": _f(st.integers(1, 255), st.sampled_from([0, 256, True]))},
    "cut": {"partial": _f(st.booleans(), st.just(0)), "feed": _f(st.integers(0, 255), st.just(-1))},
    "drawer": {"pin": _f(st.sampled_from([2, 5]), st.sampled_from([3, 2.0]))},
    "buzzer": {"times": _f(st.integers(1, 9), st.just(10)), "duration": _f(st.integers(1, 9), st.just(0))},
}
_REQUIRED_FIELDS = {"text": {"text"}, "barcode": {"symbology", "data"}, "qr": {"data"}, "image": {"png"}}


@st.composite
def _item(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([*sorted(_ITEM_FIELDS), "bogus"]))
    fields = _ITEM_FIELDS.get(kind, {})
    item: dict[str, Any] = {"type": kind}
    names = (
        _REQUIRED_FIELDS.get(kind, set()) | draw(st.sets(st.sampled_from(sorted(fields))))
        if fields
        else set()
    )
    for name in sorted(names):
        if draw(st.integers(0, 40)) == 0:
            continue  # a required field missing, now and then
        good, bad = fields[name]
        item[name] = draw(bad if draw(st.integers(0, 9)) == 0 else good)
    if draw(st.integers(0, 40)) == 0:
        item["colour"] = "red"  # an unknown field, now and then
    return item


_documents = st.fixed_dictionaries(
    {"version": st.sampled_from([1] * 20 + [2, 1.0]), "items": st.lists(_item(), min_size=0, max_size=8)}
)
_profiles = st.sampled_from([*(get_profile(n) for n in PROFILE_NAMES), G58_RASTER_QR])


@settings(max_examples=200, deadline=None)
@given(obj=_documents, profile=_profiles)
def test_any_document_renders_from_esc_at_or_raises_document_error(
    obj: dict[str, Any], profile: PrinterProfile
) -> None:
    try:
        out = render(parse_document(obj), profile)
    except DocumentError as exc:
        message = str(exc)
    else:
        assert out.startswith(PRE)
        assert len(out) <= MAX_JOB_BYTES
        return
    assert message
    assert "\n" not in message  # one-line messages
