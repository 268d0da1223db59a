"""The receipt document: a small, printer-independent JSON format and its validated values.

A document is ``{"version": 1, "items": [...]}``; each item is an object with a ``type``. See
docs/documents.md for the format. :func:`parse_document` / :func:`load_document` turn untrusted
input into a :class:`Document` or raise :class:`DocumentError` with a one-line reason that names
the item (numbered from 0, as in the JSON array) and the field. Every item class also validates
itself, so documents built in code obey the same rules.

Every name is here; they live in :mod:`cloud.render.limits` (the format's limits and the field
checks), :mod:`cloud.render.items` (the values) and :mod:`cloud.render.parse` (parsing untrusted
input). :mod:`cloud.render.escpos` turns a document into ESC/POS bytes for a
:class:`~kernel.escpos.profiles.PrinterProfile`.
"""

from __future__ import annotations

from cloud.render.items import (
    ITEM_TYPES,
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
    open_png,
    scaled_height,
)
from cloud.render.limits import (
    ALIGNS,
    DOCUMENT_VERSION,
    ERROR_CORRECTIONS,
    HRI_POSITIONS,
    MAX_DOCUMENT_BYTES,
    MAX_IMAGE_B64,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_ROWS,
    MAX_ITEMS,
    MAX_TEXT_BYTES,
    SYMBOLOGIES,
    Align,
    ErrorCorrection,
    Hri,
    Symbology,
    gtin_check_digit,
)
from cloud.render.parse import (
    ITEM_TYPE_NAMES,
    load_document,
    parse_document,
    text_document,
)
from kernel.errors import DocumentError

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
