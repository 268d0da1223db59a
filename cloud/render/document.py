"""The receipt document: a small, printer-independent JSON format and its validated values.

A document is ``{"version": 1, "items": [...]}``; each item is an object with a ``type``. See
docs/documents.md for the format. :func:`parse_document` / :func:`load_document` turn untrusted
input into a :class:`Document` or raise :class:`DocumentError` with a one-line reason that names
the item (numbered from 0, as in the JSON array) and the field. Every item class also validates
itself, so documents built in code obey the same rules.

This module holds values only; :mod:`cloud.render.escpos` turns them into ESC/POS bytes for
a :class:`~kernel.escpos.profiles.PrinterProfile`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeAlias

from PIL import Image as PILImage

from kernel.errors import DocumentError

#: The only document version this module reads.
DOCUMENT_VERSION: Final = 1
#: At most this many items per document.
MAX_ITEMS: Final = 500
#: Text of one item, UTF-8 encoded, at most this many bytes (also QR data and columns).
MAX_TEXT_BYTES: Final = 8 * 1024
#: The base64 of one image, at most this many characters.
MAX_IMAGE_B64: Final = 2 * 1024 * 1024
#: An image, once scaled to the paper width, at most this many dots tall.
MAX_IMAGE_ROWS: Final = 4096
#: A source image of at most this many pixels (decoded before scaling; guards against PNG bombs).
MAX_IMAGE_PIXELS: Final = 4096 * 4096
#: The whole document: its JSON (``load_document``) or the sum of its contents, at most this many bytes.
MAX_DOCUMENT_BYTES: Final = 4 * 1024 * 1024
#: The paper width images are checked against when parsing (an 80 mm printer); render re-checks
#: against the real profile.
REFERENCE_PAPER_DOTS: Final = 576


Align: TypeAlias = Literal["left", "center", "right"]
Hri: TypeAlias = Literal["none", "above", "below", "both"]
Symbology: TypeAlias = Literal["CODE128", "EAN13", "EAN8", "UPCA", "CODE39", "ITF"]
ErrorCorrection: TypeAlias = Literal["L", "M", "Q", "H"]

ALIGNS: Final[tuple[Align, ...]] = ("left", "center", "right")
HRI_POSITIONS: Final[tuple[Hri, ...]] = ("none", "above", "below", "both")
SYMBOLOGIES: Final[tuple[Symbology, ...]] = ("CODE128", "EAN13", "EAN8", "UPCA", "CODE39", "ITF")
ERROR_CORRECTIONS: Final[tuple[ErrorCorrection, ...]] = ("L", "M", "Q", "H")
#: QR capacity in byte mode (version 40) per error-correction level.
QR_BYTE_CAPACITY: Final[Mapping[str, int]] = {"L": 2953, "M": 2331, "Q": 1663, "H": 1273}

_CODE39_CHARS: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ -.$/+%")


# ----------------------------------------------------------------------------------------------
# Field checks shared by the item classes. Each raises DocumentError naming the field.


def _show(value: object) -> str:
    """A short, safe description of a bad value for an error message (never a huge or deep repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**18 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 30 else repr(value[:30]) + "..."
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_int(value: object) -> bool:
    """An integer proper: not a bool, not a float such as ``2.0``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: object, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DocumentError(f"{name} must be an integer from {lo} to {hi}, got {_show(value)}", field=name)


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise DocumentError(f"{name} must be true or false, got {_show(value)}", field=name)


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise DocumentError(f"{name} must be one of {', '.join(choices)}; got {_show(value)}", field=name)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_str(value: object, name: str, *, max_bytes: int = MAX_TEXT_BYTES, newlines: bool = False) -> None:
    """A string of printable characters (plus ``\\n`` and tab when ``newlines``), at most ``max_bytes``."""
    if not isinstance(value, str):
        raise DocumentError(f"{name} must be a string, got {_show(value)}", field=name)
    size = _utf8_len(value)
    if size > max_bytes:
        raise DocumentError(f"{name} is {size} bytes, over the {max_bytes}-byte limit", field=name)
    for ch in value:
        if newlines and ch in "\n\t":
            continue
        category = unicodedata.category(ch)
        if category == "Cs":
            raise DocumentError(f"{name} contains an unpaired surrogate U+{ord(ch):04X}", field=name)
        if category == "Cc":
            raise DocumentError(f"{name} contains the control character U+{ord(ch):04X}", field=name)


def _check_digits(value: str, name: str, symbology: str, lengths: tuple[int, ...]) -> None:
    if not (value.isascii() and value.isdigit()) or len(value) not in lengths:
        spelled = " or ".join(str(n) for n in lengths)
        raise DocumentError(f"{symbology} data must be {spelled} digits, got {_show(value)}", field=name)


def gtin_check_digit(payload: str) -> int:
    """The check digit of an EAN-13, EAN-8 or UPC-A payload (the digits without their check digit)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(payload)))
    return (10 - total % 10) % 10


# ----------------------------------------------------------------------------------------------
# Items.


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
        _check_str(self.text, "text", newlines=True)
        _check_bool(self.bold, "bold")
        _check_int(self.underline, "underline", 0, 2)
        _check_int(self.width, "width", 1, 8)
        _check_int(self.height, "height", 1, 8)
        _check_choice(self.align, "align", ALIGNS)
        _check_bool(self.invert, "invert")


@dataclass(frozen=True, kw_only=True, slots=True)
class LineItem:
    """A separator: ``char`` repeated across the paper (fewer times when ``width`` > 1)."""

    TYPE: ClassVar[str] = "line"

    char: str = "-"
    width: int = 1

    def __post_init__(self) -> None:
        _check_str(self.char, "char", max_bytes=4)
        if len(self.char) != 1 or self.char == " ":
            raise DocumentError(f"char must be one visible character, got {_show(self.char)}", field="char")
        _check_int(self.width, "width", 1, 8)


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
        _check_str(self.left, "left")
        _check_str(self.right, "right")
        _check_bool(self.bold, "bold")
        _check_int(self.width, "width", 1, 8)


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
        _check_choice(self.symbology, "symbology", SYMBOLOGIES)
        _check_int(self.height, "height", 1, 255)
        _check_choice(self.hri, "hri", HRI_POSITIONS)
        _check_choice(self.align, "align", ALIGNS)
        _check_str(self.data, "data", max_bytes=255)
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
        _check_digits(data, "data", symbology, (full - 1, full))
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
    if not data or any(ch not in _CODE39_CHARS for ch in data):
        raise DocumentError(
            "CODE39 data must be 1 or more of 0-9, A-Z, space and - . $ / + % (no '*': the printer adds it)",
            field="data",
        )


def _itf_check(data: str) -> None:
    if not (data.isascii() and data.isdigit()) or len(data) % 2 or len(data) > 254:
        raise DocumentError(
            f"ITF data must be an even number of digits (2 to 254), got {_show(data)}", field="data"
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
        _check_str(self.data, "data", newlines=True)
        if not self.data:
            raise DocumentError("data must not be empty", field="data")
        _check_int(self.size, "size", 1, 16)
        _check_choice(self.ec, "ec", ERROR_CORRECTIONS)
        _check_choice(self.align, "align", ALIGNS)
        capacity = QR_BYTE_CAPACITY[self.ec]
        size = _utf8_len(self.data)
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
            raise DocumentError(f"png must be bytes, got {_show(self.png)}", field="png")
        _check_choice(self.align, "align", ALIGNS)
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
        raise DocumentError(f"png must be a base64 string, got {_show(text)}", field="png")
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
        _check_int(self.lines, "lines", 1, 255)


@dataclass(frozen=True, kw_only=True, slots=True)
class CutItem:
    """Feed ``feed`` lines (so the last line clears the cutter), then cut; only the feed on printers
    without a cutter."""

    TYPE: ClassVar[str] = "cut"

    partial: bool = False
    feed: int = 4

    def __post_init__(self) -> None:
        _check_bool(self.partial, "partial")
        _check_int(self.feed, "feed", 0, 255)


@dataclass(frozen=True, kw_only=True, slots=True)
class DrawerItem:
    """Kick the cash drawer on connector pin 2 or 5 (skipped on printers without a drawer port)."""

    TYPE: ClassVar[str] = "drawer"

    pin: Literal[2, 5] = 2

    def __post_init__(self) -> None:
        if not _is_int(self.pin) or self.pin not in (2, 5):
            raise DocumentError(f"pin must be 2 or 5, got {_show(self.pin)}", field="pin")


@dataclass(frozen=True, kw_only=True, slots=True)
class BuzzerItem:
    """Sound the buzzer ``times`` times for ``duration`` x 50 ms (skipped on printers without one)."""

    TYPE: ClassVar[str] = "buzzer"

    times: int = 1
    duration: int = 1

    def __post_init__(self) -> None:
        _check_int(self.times, "times", 1, 9)
        _check_int(self.duration, "duration", 1, 9)


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
            return _utf8_len(text)
        case ColumnsItem(left=left, right=right):
            return _utf8_len(left) + _utf8_len(right)
        case QrItem(data=data) | BarcodeItem(data=data):
            return _utf8_len(data)
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
        if not _is_int(self.version) or self.version != DOCUMENT_VERSION:
            raise DocumentError(f"unsupported document version {_show(self.version)} (expected 1)")
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


# ----------------------------------------------------------------------------------------------
# Parsing untrusted JSON values.

_REQUIRED: Final = object()


class _Fields:
    """Reads an item's fields, remembering which were read so that unknown ones can be refused."""

    def __init__(self, obj: dict[Any, Any]) -> None:
        self._obj = obj
        self._read: set[Any] = {"type"}

    def get(self, key: str, default: object = _REQUIRED) -> Any:
        self._read.add(key)
        if key in self._obj:
            return self._obj[key]
        if default is _REQUIRED:
            raise DocumentError(f"{key} is required", field=key)
        return default

    def text(self, key: str, default: object = _REQUIRED) -> Any:
        """A text field with line endings normalised to ``\\n``."""
        value = self.get(key, default)
        if isinstance(value, str) and "\r" in value:
            value = value.replace("\r\n", "\n").replace("\r", "\n")
        return value

    def finish(self) -> None:
        unknown = [key for key in self._obj if key not in self._read]
        if unknown:
            shown = ", ".join(repr(k) if isinstance(k, str) else _show(k) for k in unknown[:5])
            raise DocumentError(f"unknown field {shown}", field=str(unknown[0]))


def _parse_text(f: _Fields) -> Item:
    return TextItem(
        text=f.text("text"),
        bold=f.get("bold", False),
        underline=f.get("underline", 0),
        width=f.get("width", 1),
        height=f.get("height", 1),
        align=f.get("align", "left"),
        invert=f.get("invert", False),
    )


def _parse_line(f: _Fields) -> Item:
    return LineItem(char=f.get("char", "-"), width=f.get("width", 1))


def _parse_columns(f: _Fields) -> Item:
    return ColumnsItem(
        left=f.get("left", ""), right=f.get("right", ""), bold=f.get("bold", False), width=f.get("width", 1)
    )


def _parse_barcode(f: _Fields) -> Item:
    return BarcodeItem(
        symbology=f.get("symbology"),
        data=f.get("data"),
        height=f.get("height", 80),
        hri=f.get("hri", "below"),
        align=f.get("align", "center"),
    )


def _parse_qr(f: _Fields) -> Item:
    return QrItem(
        data=f.text("data"), size=f.get("size", 6), ec=f.get("ec", "M"), align=f.get("align", "center")
    )


def _parse_image(f: _Fields) -> Item:
    align = f.get("align", "center")
    _check_choice(align, "align", ALIGNS)
    png = decode_base64_png(f.get("png"))
    f.finish()  # refuse unknown fields before the costly decode
    return ImageItem(png=png, align=align)


def _parse_feed(f: _Fields) -> Item:
    return FeedItem(lines=f.get("lines", 1))


def _parse_cut(f: _Fields) -> Item:
    return CutItem(partial=f.get("partial", False), feed=f.get("feed", 4))


def _parse_drawer(f: _Fields) -> Item:
    return DrawerItem(pin=f.get("pin", 2))


def _parse_buzzer(f: _Fields) -> Item:
    return BuzzerItem(times=f.get("times", 1), duration=f.get("duration", 1))


_PARSERS: Final[Mapping[str, Callable[[_Fields], Item]]] = {
    TextItem.TYPE: _parse_text,
    LineItem.TYPE: _parse_line,
    ColumnsItem.TYPE: _parse_columns,
    BarcodeItem.TYPE: _parse_barcode,
    QrItem.TYPE: _parse_qr,
    ImageItem.TYPE: _parse_image,
    FeedItem.TYPE: _parse_feed,
    CutItem.TYPE: _parse_cut,
    DrawerItem.TYPE: _parse_drawer,
    BuzzerItem.TYPE: _parse_buzzer,
}
ITEM_TYPE_NAMES: Final[tuple[str, ...]] = tuple(_PARSERS)


def _raw_weight(obj: dict[Any, Any]) -> int:
    """The size of an item's string fields before parsing, for the running document-size check."""
    return sum(_utf8_len(v) for v in obj.values() if isinstance(v, str))


def _parse_item(index: int, obj: object) -> Item:
    if not isinstance(obj, dict):
        raise DocumentError(f"item {index} must be an object, got {_show(obj)}", item=index)
    kind = obj.get("type", _REQUIRED)
    if kind is _REQUIRED:
        raise DocumentError(f"item {index} has no type", item=index, field="type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise DocumentError(
            f"item {index} has unknown type {_show(kind)} (expected one of {', '.join(ITEM_TYPE_NAMES)})",
            item=index,
            field="type",
        )
    assert isinstance(kind, str)
    fields = _Fields(obj)
    try:
        item = parser(fields)
        fields.finish()
    except DocumentError as exc:
        raise exc.at_item(index, kind) from exc
    return item


def parse_document(obj: Any) -> Document:
    """Validate a decoded JSON value as a document; :class:`DocumentError` for anything else."""
    if not isinstance(obj, dict):
        raise DocumentError(f"a document must be a JSON object, got {_show(obj)}")
    unknown = [k for k in obj if k not in ("version", "items")]
    if unknown:
        raise DocumentError(f"unknown document field {_show(unknown[0])}")
    version = obj.get("version", _REQUIRED)
    if version is _REQUIRED:
        raise DocumentError("document has no version (expected 1)")
    if not _is_int(version) or version != DOCUMENT_VERSION:
        raise DocumentError(f"unsupported document version {_show(version)} (expected 1)")
    raw_items = obj.get("items", _REQUIRED)
    if raw_items is _REQUIRED:
        raise DocumentError("document has no items list")
    if not isinstance(raw_items, list | tuple):
        raise DocumentError(f"items must be a list, got {_show(raw_items)}")
    if len(raw_items) > MAX_ITEMS:
        raise DocumentError(f"document has {len(raw_items)} items, over the {MAX_ITEMS}-item limit")
    items: list[Item] = []
    total = 0
    for index, raw in enumerate(raw_items):
        if isinstance(raw, dict):
            total += _raw_weight(raw)
            if total > MAX_DOCUMENT_BYTES:
                raise DocumentError(
                    f"document content is over the {MAX_DOCUMENT_BYTES}-byte limit at item {index}",
                    item=index,
                )
        items.append(_parse_item(index, raw))
    return Document(items=tuple(items))


def load_document(data: bytes | str) -> Document:
    """Parse a document from its JSON text (at most :data:`MAX_DOCUMENT_BYTES`)."""
    if isinstance(data, bytes | bytearray):
        size = len(data)
    elif isinstance(data, str):
        size = _utf8_len(data)
    else:
        raise DocumentError(f"a document must be JSON text or bytes, got {type(data).__name__}")
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"document of {size} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit")
    try:
        obj = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DocumentError(f"document is not valid JSON: {_first_line(exc)}") from exc
    return parse_document(obj)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:200] if text else type(exc).__name__


def text_document(text: str) -> Document:
    """A plain-text job: ``text`` (one trailing newline dropped, split into items of at most
    :data:`MAX_TEXT_BYTES`), then a cut (which feeds first)."""
    if not isinstance(text, str):
        raise DocumentError(f"text must be a string, got {_show(text)}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n")
    items: list[Item] = [TextItem(text=chunk) for chunk in _chunks(text.split("\n"))]
    items.append(CutItem())
    return Document(items=tuple(items))


def _chunks(lines: list[str]) -> list[str]:
    """Join lines into chunks of at most MAX_TEXT_BYTES (UTF-8); overlong lines are split."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        pieces = [line]
        if _utf8_len(line) > MAX_TEXT_BYTES:
            pieces = _split_long(line)
        for piece in pieces:
            piece_size = _utf8_len(piece) + (1 if current else 0)
            if current and size + piece_size > MAX_TEXT_BYTES:
                out.append("\n".join(current))
                current, size = [], 0
                piece_size = _utf8_len(piece)
            current.append(piece)
            size += piece_size
    out.append("\n".join(current))
    return out


def _split_long(line: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    while start < len(line):
        end = min(len(line), start + MAX_TEXT_BYTES // 4)  # 4 bytes per character at most
        pieces.append(line[start:end])
        start = end
    return pieces


__all__ = [
    "ALIGNS",
    "DOCUMENT_VERSION",
    "ERROR_CORRECTIONS",
    "HRI_POSITIONS",
    "ITEM_TYPES",
    "ITEM_TYPE_NAMES",
    "MAX_DOCUMENT_BYTES",
    "MAX_IMAGE_B64",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_ROWS",
    "MAX_ITEMS",
    "MAX_TEXT_BYTES",
    "SYMBOLOGIES",
    "Align",
    "BarcodeItem",
    "BuzzerItem",
    "ColumnsItem",
    "CutItem",
    "Document",
    "DocumentError",
    "DrawerItem",
    "ErrorCorrection",
    "FeedItem",
    "Hri",
    "ImageItem",
    "Item",
    "LineItem",
    "QrItem",
    "Symbology",
    "TextItem",
    "gtin_check_digit",
    "load_document",
    "open_png",
    "parse_document",
    "scaled_height",
    "text_document",
]
