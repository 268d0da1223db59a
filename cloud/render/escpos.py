"""Render a :class:`~cloud.render.document.Document` to ESC/POS bytes for one printer profile.

Pure code, no I/O. The encoder is written here rather than borrowed from python-escpos so that
every byte is ours to specify and test (see docs/documents.md for the command table).

Invariants of the output:

- it starts with ``ESC @`` (initialise) then ``ESC t n`` (pin the profile's code page);
- between items the printer is in its default state: every item resets the styles and alignment
  it set;
- text is encoded in the profile's code page, characters it lacks become ``?``;
- raster images (and QR codes on printers without native QR) are sent as ``GS v 0`` bands of at
  most ``profile.raster_band_bytes`` data bytes, so that a transport can pace between bands;
- the result is at most :data:`kernel.wire.MAX_JOB_BYTES`.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Final

import qrcode
from PIL import Image as PILImage
from qrcode.constants import ERROR_CORRECT_H, ERROR_CORRECT_L, ERROR_CORRECT_M, ERROR_CORRECT_Q
from qrcode.exceptions import DataOverflowError

from cloud.render.document import (
    MAX_IMAGE_ROWS,
    Align,
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
    open_png,
    scaled_height,
)
from kernel.escpos.profiles import PrinterProfile
from kernel.wire import MAX_JOB_BYTES

logger = logging.getLogger(__name__)

ESC: Final = b"\x1b"
GS: Final = b"\x1d"
LF: Final = b"\n"

INITIALIZE: Final = ESC + b"@"  # ESC @
_ALIGN_CODES: Final[dict[str, int]] = {"left": 0, "center": 1, "right": 2}
_HRI_CODES: Final[dict[str, int]] = {"none": 0, "above": 1, "below": 2, "both": 3}
#: GS k m (format B) symbology numbers.
_BARCODE_CODES: Final[dict[str, int]] = {
    "UPCA": 65,
    "EAN13": 67,
    "EAN8": 68,
    "CODE39": 69,
    "ITF": 70,
    "CODE128": 73,
}
_QR_EC_CODES: Final[dict[str, int]] = {"L": 48, "M": 49, "Q": 50, "H": 51}
_QR_EC_LIB: Final[dict[str, int]] = {
    "L": ERROR_CORRECT_L,
    "M": ERROR_CORRECT_M,
    "Q": ERROR_CORRECT_Q,
    "H": ERROR_CORRECT_H,
}
#: Barcode module width in dots (GS w 2): readable by common scanners, fits 58 mm paper.
BARCODE_MODULE_DOTS: Final = 2
#: Cash drawer pulse: ON for 50 x 2 ms, OFF for 250 x 2 ms (ESC p m t1 t2).
DRAWER_PULSE: Final = bytes((50, 250))
#: The QR quiet zone in modules, drawn into raster QR codes (native ones get it from the printer).
QR_QUIET_MODULES: Final = 4
_INVERT: Final = bytes(255 - i for i in range(256))


def select_code_page(n: int) -> bytes:
    return ESC + b"t" + bytes((n,))  # ESC t n


def set_align(align: Align) -> bytes:
    return ESC + b"a" + bytes((_ALIGN_CODES[align],))  # ESC a n


def feed_lines(n: int) -> bytes:
    return ESC + b"d" + bytes((n,))  # ESC d n


def _char_size(width: int, height: int) -> bytes:
    return GS + b"!" + bytes((((width - 1) << 4) | (height - 1),))  # GS ! n


def encode_text(text: str, profile: PrinterProfile) -> bytes:
    """``text`` in the profile's code page (NFC first, so that "e" + combining acute prints as "é");
    characters the code page lacks become ``?``."""
    return unicodedata.normalize("NFC", text).encode(profile.code_page, errors="replace")


class _Styled:
    """Collects the style commands an item sets and the matching resets, in reverse order."""

    def __init__(self) -> None:
        self.on = bytearray()
        self._off: list[bytes] = []

    def add(self, on: bytes, off: bytes) -> None:
        self.on += on
        self._off.append(off)

    @property
    def off(self) -> bytes:
        return b"".join(reversed(self._off))

    def wrap(self, body: bytes) -> bytes:
        return bytes(self.on) + body + self.off


def _styles(
    *,
    align: Align = "left",
    bold: bool = False,
    underline: int = 0,
    width: int = 1,
    height: int = 1,
    invert: bool = False,
) -> _Styled:
    s = _Styled()
    if align != "left":
        s.add(set_align(align), set_align("left"))
    if bold:
        s.add(ESC + b"E\x01", ESC + b"E\x00")  # ESC E n: emphasis
    if underline:
        s.add(ESC + b"-" + bytes((underline,)), ESC + b"-\x00")  # ESC - n: underline 1 or 2 dots
    if width != 1 or height != 1:
        s.add(_char_size(width, height), _char_size(1, 1))  # GS ! n: character size
    if invert:
        s.add(GS + b"B\x01", GS + b"B\x00")  # GS B n: white on black
    return s


# ----------------------------------------------------------------------------------------------
# Items.


def _render_text(item: TextItem, profile: PrinterProfile) -> bytes:
    styles = _styles(
        align=item.align,
        bold=item.bold,
        underline=item.underline,
        width=item.width,
        height=item.height,
        invert=item.invert,
    )
    return styles.wrap(encode_text(item.text.expandtabs(8), profile) + LF)


def _render_line(item: LineItem, profile: PrinterProfile) -> bytes:
    count = max(1, profile.chars_per_line // item.width)
    return _styles(width=item.width).wrap(encode_text(item.char, profile) * count + LF)


def _render_columns(item: ColumnsItem, profile: PrinterProfile) -> bytes:
    width = max(1, profile.chars_per_line // item.width)
    line = justify(item.left, item.right, width)
    return _styles(bold=item.bold, width=item.width).wrap(encode_text(line, profile) + LF)


def justify(left: str, right: str, width: int) -> str:
    """``left`` and ``right`` on one line of ``width`` characters: ``right`` wins, ``left`` is cut short
    (at least one space stays between them)."""
    left = unicodedata.normalize("NFC", left)
    right = unicodedata.normalize("NFC", right)[:width]
    room = width - len(right) - 1
    left = left[: max(room, 0)] if room > 0 else ""
    return left + " " * (width - len(left) - len(right)) + right


def code128_payload(data: str) -> bytes:
    """The GS k data for CODE128: code set C for an even run of 4+ digits, else code set B
    (``{`` doubled, as the printer reads ``{x`` as a control sequence)."""
    if data.isascii() and data.isdigit() and len(data) >= 4 and len(data) % 2 == 0:
        return b"{C" + bytes(int(data[i : i + 2]) for i in range(0, len(data), 2))
    return b"{B" + data.replace("{", "{{").encode("ascii")


def _code128_modules(payload: bytes) -> int:
    """Modules of a CODE128 symbol: start, symbols, check (11 each) and stop (13)."""
    symbols = len(payload) - 2 - payload[2:].count(b"{{") if payload[:2] == b"{B" else len(payload) - 2
    return 11 * (symbols + 2) + 13


def _render_barcode(item: BarcodeItem, profile: PrinterProfile) -> bytes:
    if item.symbology == "CODE128":
        payload = code128_payload(item.payload)
        dots = _code128_modules(payload) * BARCODE_MODULE_DOTS
        if dots > profile.paper_width_dots:
            raise DocumentError(
                f"CODE128 barcode is {dots} dots wide, "
                f"wider than the paper ({profile.paper_width_dots} dots)",
                field="data",
            )
    else:
        payload = item.payload.encode("ascii")
    body = b"".join(
        (
            GS + b"h" + bytes((item.height,)),  # GS h n: bar height in dots
            GS + b"w" + bytes((BARCODE_MODULE_DOTS,)),  # GS w n: module width
            GS + b"H" + bytes((_HRI_CODES[item.hri],)),  # GS H n: human-readable text position
            GS + b"k" + bytes((_BARCODE_CODES[item.symbology], len(payload))) + payload,  # GS k m n d...
        )
    )
    return _styles(align=item.align).wrap(body)


def _qr_matrix(item: QrItem) -> list[list[bool]]:
    qr = qrcode.QRCode(error_correction=_QR_EC_LIB[item.ec], box_size=1, border=QR_QUIET_MODULES)
    qr.add_data(item.data.encode("utf-8"), optimize=0)
    try:
        qr.make(fit=True)
    except DataOverflowError as exc:
        raise DocumentError(
            f"data does not fit a QR code at error correction {item.ec}", field="data"
        ) from exc
    matrix: list[list[bool]] = qr.get_matrix()
    return matrix


def _qr_module_dots(item: QrItem, modules: int, profile: PrinterProfile) -> int:
    """The requested module size, reduced so that the symbol and its quiet zone fit the paper."""
    return max(1, min(item.size, profile.paper_width_dots // modules))


def _qr_command(fn: int, params: bytes) -> bytes:
    size = len(params) + 2
    return GS + b"(k" + bytes((size & 0xFF, size >> 8, 49, fn)) + params  # GS ( k pL pH cn=49 fn ...


def _render_qr(item: QrItem, profile: PrinterProfile) -> bytes:
    matrix = _qr_matrix(item)
    dots = _qr_module_dots(item, len(matrix), profile)
    if profile.native_qr:
        data = item.data.encode("utf-8")
        body = (
            _qr_command(65, b"\x32\x00")  # fn 165: model 2
            + _qr_command(67, bytes((dots,)))  # fn 167: module size
            + _qr_command(69, bytes((_QR_EC_CODES[item.ec],)))  # fn 169: error correction
            + _qr_command(80, b"\x30" + data)  # fn 180: store the data
            + _qr_command(81, b"\x30")  # fn 181: print the symbol
        )
        return _styles(align=item.align).wrap(body)
    n = len(matrix)
    gray = PILImage.new("L", (n, n), 255)
    gray.putdata([0 if dark else 255 for row in matrix for dark in row])
    if dots > 1:
        gray = gray.resize((n * dots, n * dots), PILImage.Resampling.NEAREST)
    return raster(gray, item.align, profile)


def _render_image(item: ImageItem, profile: PrinterProfile) -> bytes:
    paper = profile.paper_width_dots
    height = scaled_height(item.pixel_width, item.pixel_height, paper)
    if height > MAX_IMAGE_ROWS:
        raise DocumentError(
            f"image is {height} dots tall at this paper width, over {MAX_IMAGE_ROWS}", field="png"
        )
    return raster(image_to_gray(item.png, paper), item.align, profile)


def image_to_gray(png: bytes, paper_dots: int) -> PILImage.Image:
    """A PNG as 8-bit grey on white (transparency flattened), scaled down to ``paper_dots`` if wider."""
    img = open_png(png)
    try:
        if img.mode in ("RGBA", "LA", "PA", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            flat = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            gray = flat.convert("L")
        else:
            gray = img.convert("L")
        width, height = gray.size
        if width > paper_dots:
            gray = gray.resize(
                (paper_dots, scaled_height(width, height, paper_dots)), PILImage.Resampling.LANCZOS
            )
    except Exception as exc:
        # Pillow's converters can fail on unusual modes; map whatever they raise at this boundary.
        raise DocumentError(f"png could not be converted ({type(exc).__name__})", field="png") from exc
    finally:
        img.close()
    return gray


def raster(gray: PILImage.Image, align: Align, profile: PrinterProfile) -> bytes:
    """A grey image (at most the paper width) as 1-bit ``GS v 0`` bands, dithered, right-padded with
    white to whole bytes, each band at most ``profile.raster_band_bytes`` data bytes."""
    width, height = gray.size
    row_bytes = (width + 7) // 8
    canvas = PILImage.new("L", (row_bytes * 8, height), 255)
    canvas.paste(gray, (0, 0))
    bits = canvas.convert("1").tobytes().translate(_INVERT)  # Pillow: 1 = white; ESC/POS: 1 = print
    rows_per_band = max(1, profile.raster_band_bytes // row_bytes)
    out = bytearray()
    for top in range(0, height, rows_per_band):
        rows = min(rows_per_band, height - top)
        # GS v 0 m xL xH yL yH d...: m = 0 (normal size), x = bytes per row, y = rows.
        out += GS + b"v0\x00" + row_bytes.to_bytes(2, "little") + rows.to_bytes(2, "little")
        out += bits[top * row_bytes : (top + rows) * row_bytes]
    return _styles(align=align).wrap(bytes(out))


def _render_feed(item: FeedItem, profile: PrinterProfile) -> bytes:
    return feed_lines(item.lines)


def _render_cut(item: CutItem, profile: PrinterProfile) -> bytes:
    out = feed_lines(item.feed) if item.feed else b""
    if profile.cutter:
        out += GS + b"V" + (b"\x01" if item.partial else b"\x00")  # GS V m: 0 full, 1 partial cut
    return out


def _render_drawer(item: DrawerItem, profile: PrinterProfile) -> bytes:
    if not profile.drawer:
        logger.debug("profile %s has no drawer port: drawer kick skipped", profile.name)
        return b""
    return ESC + b"p" + (b"\x00" if item.pin == 2 else b"\x01") + DRAWER_PULSE  # ESC p m t1 t2


def _render_buzzer(item: BuzzerItem, profile: PrinterProfile) -> bytes:
    if not profile.buzzer:
        logger.debug("profile %s has no buzzer: buzzer skipped", profile.name)
        return b""
    return ESC + b"B" + bytes((item.times, item.duration))  # ESC B n t


def render_item(item: Item, profile: PrinterProfile) -> bytes:
    """One item's bytes (without the document preamble)."""
    match item:
        case TextItem():
            return _render_text(item, profile)
        case LineItem():
            return _render_line(item, profile)
        case ColumnsItem():
            return _render_columns(item, profile)
        case BarcodeItem():
            return _render_barcode(item, profile)
        case QrItem():
            return _render_qr(item, profile)
        case ImageItem():
            return _render_image(item, profile)
        case FeedItem():
            return _render_feed(item, profile)
        case CutItem():
            return _render_cut(item, profile)
        case DrawerItem():
            return _render_drawer(item, profile)
        case BuzzerItem():
            return _render_buzzer(item, profile)
    raise DocumentError(f"not a document item: {type(item).__name__}")


def preamble(profile: PrinterProfile) -> bytes:
    """``ESC @`` then ``ESC t n``: what every rendered document starts with."""
    return INITIALIZE + select_code_page(profile.code_page_number)


def render(doc: Document, profile: PrinterProfile) -> bytes:
    """The ESC/POS bytes of ``doc`` for ``profile``; :class:`DocumentError` naming the item when an item
    cannot be printed on this profile or the result exceeds :data:`~kernel.wire.MAX_JOB_BYTES`."""
    out = bytearray(preamble(profile))
    for index, item in enumerate(doc.items):
        try:
            out += render_item(item, profile)
        except DocumentError as exc:
            raise exc.at_item(index, item.TYPE) from exc
        if len(out) > MAX_JOB_BYTES:
            raise DocumentError(
                f"item {index} ({item.TYPE}): the document renders to more than "
                f"the {MAX_JOB_BYTES}-byte job limit here",
                item=index,
                item_type=item.TYPE,
            )
    return bytes(out)


def render_raw(data: bytes | bytearray | memoryview) -> bytes:
    """Raw ESC/POS from the client, passed through untouched once checked non-empty and within
    :data:`~kernel.wire.MAX_JOB_BYTES`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DocumentError(f"raw print data must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not raw:
        raise DocumentError("raw print data is empty")
    if len(raw) > MAX_JOB_BYTES:
        raise DocumentError(f"raw print data of {len(raw)} bytes is over the {MAX_JOB_BYTES}-byte job limit")
    return raw


__all__ = [
    "INITIALIZE",
    "code128_payload",
    "encode_text",
    "justify",
    "preamble",
    "raster",
    "render",
    "render_item",
    "render_raw",
    "select_code_page",
]
