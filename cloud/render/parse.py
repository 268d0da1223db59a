"""Parsing untrusted JSON into a :class:`~cloud.render.items.Document`: :func:`parse_document`,
:func:`load_document`, and :func:`text_document` for plain text. Every refusal is a
:class:`~kernel.errors.DocumentError` naming the item (numbered from 0) and the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from cloud.render.items import (
    BarcodeItem,
    BuzzerItem,
    ColumnsItem,
    CutItem,
    Document,
    DrawerItem,
    FeedItem,
    ImageItem,
    Item,
    LineItem,
    QrItem,
    TextItem,
    decode_base64_png,
)
from cloud.render.limits import (
    ALIGNS,
    DOCUMENT_VERSION,
    MAX_DOCUMENT_BYTES,
    MAX_ITEMS,
    MAX_TEXT_BYTES,
    check_choice,
    is_int,
    show,
    utf8_len,
)
from kernel.errors import DocumentError

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
            shown = ", ".join(repr(k) if isinstance(k, str) else show(k) for k in unknown[:5])
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
    check_choice(align, "align", ALIGNS)
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
    return sum(utf8_len(v) for v in obj.values() if isinstance(v, str))


def _parse_item(index: int, obj: object) -> Item:
    if not isinstance(obj, dict):
        raise DocumentError(f"item {index} must be an object, got {show(obj)}", item=index)
    kind = obj.get("type", _REQUIRED)
    if kind is _REQUIRED:
        raise DocumentError(f"item {index} has no type", item=index, field="type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise DocumentError(
            f"item {index} has unknown type {show(kind)} (expected one of {', '.join(ITEM_TYPE_NAMES)})",
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
        raise DocumentError(f"a document must be a JSON object, got {show(obj)}")
    unknown = [k for k in obj if k not in ("version", "items")]
    if unknown:
        raise DocumentError(f"unknown document field {show(unknown[0])}")
    version = obj.get("version", _REQUIRED)
    if version is _REQUIRED:
        raise DocumentError("document has no version (expected 1)")
    if not is_int(version) or version != DOCUMENT_VERSION:
        raise DocumentError(f"unsupported document version {show(version)} (expected 1)")
    raw_items = obj.get("items", _REQUIRED)
    if raw_items is _REQUIRED:
        raise DocumentError("document has no items list")
    if not isinstance(raw_items, list | tuple):
        raise DocumentError(f"items must be a list, got {show(raw_items)}")
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
        size = utf8_len(data)
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
        raise DocumentError(f"text must be a string, got {show(text)}")
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
        if utf8_len(line) > MAX_TEXT_BYTES:
            pieces = _split_long(line)
        for piece in pieces:
            piece_size = utf8_len(piece) + (1 if current else 0)
            if current and size + piece_size > MAX_TEXT_BYTES:
                out.append("\n".join(current))
                current, size = [], 0
                piece_size = utf8_len(piece)
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
