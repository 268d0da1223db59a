"""The receipt document's values: one frozen class per item type and :class:`Document`. Every item
validates itself, so documents built in code obey the same rules as parsed ones."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, TypeAlias

from PIL import Image as PILImage

from cloud.render.limits import (
    ALIGNS,
    CODE39_CHARS,
    DOCUMENT_VERSION,
    ERROR_CORRECTIONS,
    HRI_POSITIONS,
    MAX_DOCUMENT_BYTES,
    MAX_IMAGE_B64,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_ROWS,
    MAX_ITEMS,
    QR_BYTE_CAPACITY,
    REFERENCE_PAPER_DOTS,
    SYMBOLOGIES,
    Align,
    ErrorCorrection,
    Hri,
    Symbology,
    check_bool,
    check_choice,
    check_digits,
    check_int,
    check_str,
    gtin_check_digit,
    is_int,
    show,
    utf8_len,
)
from kernel.errors import DocumentError


@dataclass(frozen=True, kw_only=True, slots=True)
class TextItem:
    """Text, possibly several lines; a line feed is implied after it. Styles apply to this item only."""

    TYPE: ClassVar[str] = "text"

    text: str
    bold: bool = False
    underline: int = 0
    width: int = 1
    height: int = 1
    align: Align = "left"
    invert: bool = False

    def __post_init__(self) -> None:
        check_str(self.text, "text", newlines=True)
        check_bool(self.bold, "bold")
        check_int(self.underline, "underline", 0, 2)
        check_int(self.width, "width", 1, 8)
        check_int(self.height, "height", 1, 8)
        check_choice(self.align, "align", ALIGNS)
        check_bool(self.invert, "invert")


@dataclass(frozen=True, kw_only=True, slots=True)
class LineItem:
    """A separator: ``char`` repeated across the paper (fewer times when ``width`` > 1)."""

    TYPE: ClassVar[str] = "line"

    char: str = "-"
    width: int = 1

    def __post_init__(self) -> None:
        check_str(self.char, "char", max_bytes=4)
        if len(self.char) != 1 or self.char == " ":
            raise DocumentError(f"char must be one visible character, got {show(self.char)}", field="char")
        check_int(self.width, "width", 1, 8)


@dataclass(frozen=True, kw_only=True, slots=True)
class ColumnsItem:
    """One line with ``left`` flush left and ``right`` flush right (item and price); ``left`` is cut short
    when both do not fit."""

    TYPE: ClassVar[str] = "columns"

    left: str = ""
    right: str = ""
    bold: bool = False
    width: int = 1

    def __post_init__(self) -> None:
        check_str(self.left, "left")
        check_str(self.right, "right")
        check_bool(self.bold, "bold")
        check_int(self.width, "width", 1, 8)


@dataclass(frozen=True, kw_only=True, slots=True)
class BarcodeItem:
    """A 1D barcode. EAN/UPC data may carry its check digit (then it is verified) or not."""

    TYPE: ClassVar[str] = "barcode"

    symbology: Symbology
    data: str
    height: int = 80
    hri: Hri = "below"
    align: Align = "center"

    def __post_init__(self) -> None:
        check_choice(self.symbology, "symbology", SYMBOLOGIES)
        check_int(self.height, "height", 1, 255)
        check_choice(self.hri, "hri", HRI_POSITIONS)
        check_choice(self.align, "align", ALIGNS)
        check_str(self.data, "data", max_bytes=255)
        _BARCODE_CHECKS[self.symbology](self.data)

    @property
    def payload(self) -> str:
        """The data as sent to the printer: EAN/UPC without the check digit (the printer adds it)."""
        full = _GTIN_LENGTHS.get(self.symbology)
        if full is not None and len(self.data) == full:
            return self.data[:-1]
        return self.data


_GTIN_LENGTHS: Final[Mapping[str, int]] = {"EAN13": 13, "EAN8": 8, "UPCA": 12}


def _gtin_check(symbology: str) -> Callable[[str], None]:
    full = _GTIN_LENGTHS[symbology]

    def check(data: str) -> None:
        check_digits(data, "data", symbology, (full - 1, full))
        if len(data) == full:
            expected = gtin_check_digit(data[:-1])
            if int(data[-1]) != expected:
                raise DocumentError(
                    f"{symbology} check digit is {data[-1]}, expected {expected}", field="data"
                )

    return check


def _code128_check(data: str) -> None:
    if not data or any(not " " <= ch <= "~" for ch in data):
        raise DocumentError("CODE128 data must be 1 or more printable ASCII characters", field="data")
    if len(data) + data.count("{") + 2 > 255:
        raise DocumentError("CODE128 data is too long (at most 253 characters)", field="data")


def _code39_check(data: str) -> None:
    if not data or any(ch not in CODE39_CHARS for ch in data):
        raise DocumentError(
            "CODE39 data must be 1 or more of 0-9, A-Z, space and - . $ / + % (no '*': the printer adds it)",
            field="data",
        )


def _itf_check(data: str) -> None:
    if not (data.isascii() and data.isdigit()) or len(data) % 2 or len(data) > 254:
        raise DocumentError(
            f"ITF data must be an even number of digits (2 to 254), got {show(data)}", field="data"
        )


_BARCODE_CHECKS: Final[Mapping[str, Callable[[str], None]]] = {
    "EAN13": _gtin_check("EAN13"),
    "EAN8": _gtin_check("EAN8"),
    "UPCA": _gtin_check("UPCA"),
    "CODE128": _code128_check,
    "CODE39": _code39_check,
    "ITF": _itf_check,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class QrItem:
    """A QR code of ``data`` (UTF-8), ``size`` dots per module, error correction ``ec``."""

    TYPE: ClassVar[str] = "qr"

    data: str
    size: int = 6
    ec: ErrorCorrection = "M"
    align: Align = "center"

    def __post_init__(self) -> None:
        check_str(self.data, "data", newlines=True)
        if not self.data:
            raise DocumentError("data must not be empty", field="data")
        check_int(self.size, "size", 1, 16)
        check_choice(self.ec, "ec", ERROR_CORRECTIONS)
        check_choice(self.align, "align", ALIGNS)
        capacity = QR_BYTE_CAPACITY[self.ec]
        size = utf8_len(self.data)
        if size > capacity:
            raise DocumentError(
                f"data of {size} bytes does not fit a QR code at error correction {self.ec} "
                f"(at most {capacity})",
                field="data",
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageItem:
    """A PNG image, printed in black and white, scaled down to the paper width when wider."""

    TYPE: ClassVar[str] = "image"

    png: bytes
    align: Align = "center"
    pixel_width: int = field(init=False, repr=False, compare=False)
    pixel_height: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.png, bytes):
            raise DocumentError(f"png must be bytes, got {show(self.png)}", field="png")
        check_choice(self.align, "align", ALIGNS)
        width, height = decode_png_size(self.png)
        if scaled_height(width, height, REFERENCE_PAPER_DOTS) > MAX_IMAGE_ROWS:
            raise DocumentError(
                f"image of {width}x{height} px is over {MAX_IMAGE_ROWS} dots tall once scaled to paper width",
                field="png",
            )
        object.__setattr__(self, "pixel_width", width)
        object.__setattr__(self, "pixel_height", height)

    @classmethod
    def from_base64(cls, text: str, *, align: Align = "center") -> ImageItem:
        return cls(png=decode_base64_png(text), align=align)


def decode_base64_png(text: object) -> bytes:
    """The bytes of a base64 PNG field (whitespace allowed), within :data:`MAX_IMAGE_B64`."""
    if not isinstance(text, str):
        raise DocumentError(f"png must be a base64 string, got {show(text)}", field="png")
    if len(text) > MAX_IMAGE_B64:
        raise DocumentError(
            f"png is {len(text)} base64 characters, over the {MAX_IMAGE_B64} limit", field="png"
        )
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DocumentError("png is not valid base64", field="png") from exc


def open_png(png: bytes) -> PILImage.Image:
    """The PNG decoded in full, within :data:`MAX_IMAGE_PIXELS`; :class:`DocumentError` otherwise."""
    try:
        img = PILImage.open(io.BytesIO(png), formats=["PNG"])
        width, height = img.size
        if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
            raise DocumentError(
                f"image of {width}x{height} px is over the {MAX_IMAGE_PIXELS}-pixel limit", field="png"
            )
        img.load()
    except DocumentError:
        raise
    except Exception as exc:
        # Pillow raises a wide and undocumented range of exceptions (OSError, ValueError,
        # SyntaxError, struct.error, EOFError, ...) on hostile input: map them all at this boundary.
        raise DocumentError(f"png is not a readable PNG image ({type(exc).__name__})", field="png") from exc
    return img


def decode_png_size(png: bytes) -> tuple[int, int]:
    """Validate that ``png`` decodes as a PNG within the limits; return its (width, height) in pixels."""
    img = open_png(png)
    try:
        return img.size
    finally:
        img.close()


def scaled_height(width: int, height: int, paper_dots: int) -> int:
    """An image's height in dots once scaled down (never up) to ``paper_dots`` wide."""
    if width <= paper_dots:
        return height
    return max(1, round(height * paper_dots / width))


@dataclass(frozen=True, kw_only=True, slots=True)
class FeedItem:
    """Feed ``lines`` blank lines."""

    TYPE: ClassVar[str] = "feed"

    lines: int = 1

    def __post_init__(self) -> None:
        check_int(self.lines, "lines", 1, 255)


@dataclass(frozen=True, kw_only=True, slots=True)
class CutItem:
    """Feed ``feed`` lines (so the last line clears the cutter), then cut; only the feed on printers
    without a cutter."""

    TYPE: ClassVar[str] = "cut"

    partial: bool = False
    feed: int = 4

    def __post_init__(self) -> None:
        check_bool(self.partial, "partial")
        check_int(self.feed, "feed", 0, 255)


@dataclass(frozen=True, kw_only=True, slots=True)
class DrawerItem:
    """Kick the cash drawer on connector pin 2 or 5 (skipped on printers without a drawer port)."""

    TYPE: ClassVar[str] = "drawer"

    pin: Literal[2, 5] = 2

    def __post_init__(self) -> None:
        if not is_int(self.pin) or self.pin not in (2, 5):
            raise DocumentError(f"pin must be 2 or 5, got {show(self.pin)}", field="pin")


@dataclass(frozen=True, kw_only=True, slots=True)
class BuzzerItem:
    """Sound the buzzer ``times`` times for ``duration`` x 50 ms (skipped on printers without one)."""

    TYPE: ClassVar[str] = "buzzer"

    times: int = 1
    duration: int = 1

    def __post_init__(self) -> None:
        check_int(self.times, "times", 1, 9)
        check_int(self.duration, "duration", 1, 9)


Item: TypeAlias = (
    TextItem
    | LineItem
    | ColumnsItem
    | BarcodeItem
    | QrItem
    | ImageItem
    | FeedItem
    | CutItem
    | DrawerItem
    | BuzzerItem
)
ITEM_TYPES: Final[tuple[type[Item], ...]] = (
    TextItem,
    LineItem,
    ColumnsItem,
    BarcodeItem,
    QrItem,
    ImageItem,
    FeedItem,
    CutItem,
    DrawerItem,
    BuzzerItem,
)


def _weight(item: Item) -> int:
    """An item's contribution to the document size limit (its content, as it would be in JSON)."""
    match item:
        case TextItem(text=text):
            return utf8_len(text)
        case ColumnsItem(left=left, right=right):
            return utf8_len(left) + utf8_len(right)
        case QrItem(data=data) | BarcodeItem(data=data):
            return utf8_len(data)
        case ImageItem(png=png):
            return (len(png) + 2) // 3 * 4
        case _:
            return 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Document:
    """A validated receipt document: 1 to :data:`MAX_ITEMS` items, printed in order."""

    items: tuple[Item, ...]
    version: int = DOCUMENT_VERSION

    def __post_init__(self) -> None:
        if not is_int(self.version) or self.version != DOCUMENT_VERSION:
            raise DocumentError(f"unsupported document version {show(self.version)} (expected 1)")
        if not isinstance(self.items, tuple):
            raise DocumentError("items must be a tuple")
        if not self.items:
            raise DocumentError("document has no items")
        if len(self.items) > MAX_ITEMS:
            raise DocumentError(f"document has {len(self.items)} items, over the {MAX_ITEMS}-item limit")
        for index, item in enumerate(self.items):
            if not isinstance(item, ITEM_TYPES):
                raise DocumentError(f"item {index} is not a document item: {type(item).__name__}", item=index)
        total = sum(_weight(item) for item in self.items)
        if total > MAX_DOCUMENT_BYTES:
            raise DocumentError(
                f"document content of {total} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit"
            )
