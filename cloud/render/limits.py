"""The receipt document format's limits and choices, and the field checks every item shares (each
raises :class:`~kernel.errors.DocumentError` naming the field)."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

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

CODE39_CHARS: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ -.$/+%")


def show(value: object) -> str:
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


def is_int(value: object) -> bool:
    """An integer proper: not a bool, not a float such as ``2.0``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DocumentError(f"{name} must be an integer from {lo} to {hi}, got {show(value)}", field=name)


def check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise DocumentError(f"{name} must be true or false, got {show(value)}", field=name)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise DocumentError(f"{name} must be one of {', '.join(choices)}; got {show(value)}", field=name)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_str(value: object, name: str, *, max_bytes: int = MAX_TEXT_BYTES, newlines: bool = False) -> None:
    """A string of printable characters (plus ``\\n`` and tab when ``newlines``), at most ``max_bytes``."""
    if not isinstance(value, str):
        raise DocumentError(f"{name} must be a string, got {show(value)}", field=name)
    size = utf8_len(value)
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


def check_digits(value: str, name: str, symbology: str, lengths: tuple[int, ...]) -> None:
    if not (value.isascii() and value.isdigit()) or len(value) not in lengths:
        spelled = " or ".join(str(n) for n in lengths)
        raise DocumentError(f"{symbology} data must be {spelled} digits, got {show(value)}", field=name)


def gtin_check_digit(payload: str) -> int:
    """The check digit of an EAN-13, EAN-8 or UPC-A payload (the digits without their check digit)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(payload)))
    return (10 - total % 10) % 10
