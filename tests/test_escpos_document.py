"""Parsing and validation of receipt documents, the printer profiles, and the docs' example."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from cloud.render.document import (
    ITEM_TYPE_NAMES,
    MAX_DOCUMENT_BYTES,
    MAX_ITEMS,
    MAX_TEXT_BYTES,
    BarcodeItem,
    BuzzerItem,
    ColumnsItem,
    CutItem,
    Document,
    DocumentError,
    DrawerItem,
    FeedItem,
    ImageItem,
    LineItem,
    QrItem,
    TextItem,
    gtin_check_digit,
    load_document,
    parse_document,
    text_document,
)
from cloud.render.escpos import render
from kernel.errors import PrintfleetError
from kernel.escpos.profiles import PROFILE_NAMES, PrinterProfile, get_profile

DOCS = Path(__file__).resolve().parent.parent / "docs" / "documents.md"
PRE = b"\x1b\x40\x1b\x74\x13"  # ESC @, ESC t 19


def png_b64(img: Image.Image, pnginfo: PngImagePlugin.PngInfo | None = None) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=pnginfo)
    return base64.b64encode(buf.getvalue()).decode()


def one(item: dict[str, Any]) -> Any:
    """The single item of a parsed one-item document."""
    return parse_document({"version": 1, "items": [item]}).items[0]


# ----------------------------------------------------------------------------------------------
# The example in docs/documents.md is run here.


def docs_example() -> str:
    match = re.search(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert match, "docs/documents.md has no ```json block"
    return match.group(1)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_the_docs_example_loads_and_renders_on_every_profile(name: str) -> None:
    document = load_document(docs_example())
    out = render(document, get_profile(name))
    assert out.startswith(PRE)
    assert "€".encode("cp858") in out  # the prices' euro sign, as 0xD5


def test_the_docs_python_snippets_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})
    assert "item 0 (barcode): EAN8 data must be 7 or 8 digits, got '1234'" in capsys.readouterr().out


def test_the_docs_example_shows_every_item_type() -> None:
    document = load_document(docs_example())
    assert {item.TYPE for item in document.items} == set(ITEM_TYPE_NAMES)


# ----------------------------------------------------------------------------------------------
# Parsing: defaults and normalisation.


def test_defaults() -> None:
    assert one({"type": "text", "text": "hi"}) == TextItem(text="hi")
    assert TextItem(text="hi") == TextItem(
        text="hi", bold=False, underline=0, width=1, height=1, align="left", invert=False
    )
    assert one({"type": "line"}) == LineItem(char="-", width=1)
    assert one({"type": "columns"}) == ColumnsItem(left="", right="")
    assert one({"type": "barcode", "symbology": "ITF", "data": "12"}) == BarcodeItem(
        symbology="ITF", data="12", height=80, hri="below", align="center"
    )
    assert one({"type": "qr", "data": "x"}) == QrItem(data="x", size=6, ec="M", align="center")
    assert one({"type": "feed"}) == FeedItem(lines=1)
    assert one({"type": "cut"}) == CutItem(partial=False, feed=4)
    assert one({"type": "drawer"}) == DrawerItem(pin=2)
    assert one({"type": "buzzer"}) == BuzzerItem(times=1, duration=1)


def test_line_endings_are_normalised() -> None:
    assert one({"type": "text", "text": "a\r\nb\rc"}) == TextItem(text="a\nb\nc")


def test_image_item_keeps_the_png_and_its_size() -> None:
    b64 = png_b64(Image.new("1", (30, 7), 1))
    item = one({"type": "image", "png": b64, "align": "left"})
    assert isinstance(item, ImageItem)
    assert (item.png, item.align, item.pixel_width, item.pixel_height) == (
        base64.b64decode(b64),
        "left",
        30,
        7,
    )
    # Base64 wrapped over lines (as many encoders do) is accepted.
    wrapped = "\n".join(b64[i : i + 20] for i in range(0, len(b64), 20))
    assert one({"type": "image", "png": wrapped}) == ImageItem(png=base64.b64decode(b64))


def test_load_document_accepts_text_and_bytes() -> None:
    text = '{"version": 1, "items": [{"type": "text", "text": "5 €"}]}'
    assert load_document(text) == load_document(text.encode()) == Document(items=(TextItem(text="5 €"),))


def test_values_are_frozen() -> None:
    item = TextItem(text="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.text = "y"  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# Parsing: errors name the item, its type and the field.


@pytest.mark.parametrize(
    ("item", "message", "field"),
    [
        ({"type": "text"}, "text is required", "text"),
        ({"type": "text", "text": 5}, "text must be a string, got 5", "text"),
        ({"type": "text", "text": "\x1b@"}, "text contains the control character U+001B", "text"),
        ({"type": "text", "text": "\ud800"}, "text contains an unpaired surrogate U+D800", "text"),
        ({"type": "text", "text": "x", "bold": 1}, "bold must be true or false, got 1", "bold"),
        (
            {"type": "text", "text": "x", "underline": 3},
            "underline must be an integer from 0 to 2, got 3",
            "underline",
        ),
        (
            {"type": "text", "text": "x", "width": True},
            "width must be an integer from 1 to 8, got true",
            "width",
        ),
        (
            {"type": "text", "text": "x", "height": 2.0},
            "height must be an integer from 1 to 8, got 2.0",
            "height",
        ),
        (
            {"type": "text", "text": "x", "height": "2"},
            "height must be an integer from 1 to 8, got '2'",
            "height",
        ),
        (
            {"type": "text", "text": "x", "align": "middle"},
            "align must be one of left, center, right",
            "align",
        ),
        ({"type": "text", "text": "x", "heigth": 2}, "unknown field 'heigth'", "heigth"),
        ({"type": "line", "char": "ab"}, "char must be one visible character", "char"),
        ({"type": "line", "char": " "}, "char must be one visible character", "char"),
        ({"type": "columns", "left": "a\nb"}, "left contains the control character U+000A", "left"),
        ({"type": "barcode", "data": "1"}, "symbology is required", "symbology"),
        (
            {"type": "barcode", "symbology": "QR", "data": "1"},
            "symbology must be one of CODE128",
            "symbology",
        ),
        (
            {"type": "barcode", "symbology": "ITF", "data": "12", "height": 0},
            "height must be an integer",
            "height",
        ),
        (
            {"type": "barcode", "symbology": "ITF", "data": "12", "hri": "left"},
            "hri must be one of none",
            "hri",
        ),
        ({"type": "qr", "data": ""}, "data must not be empty", "data"),
        ({"type": "qr", "data": "x", "size": 17}, "size must be an integer from 1 to 16, got 17", "size"),
        ({"type": "qr", "data": "x", "ec": "X"}, "ec must be one of L, M, Q, H", "ec"),
        ({"type": "qr", "data": "x", "align": "middle"}, "align must be one of", "align"),
        (
            {"type": "qr", "data": "é" * 1000, "ec": "H"},
            "data of 2000 bytes does not fit a QR code at",
            "data",
        ),
        ({"type": "image"}, "png is required", "png"),
        ({"type": "image", "png": 5}, "png must be a base64 string", "png"),
        ({"type": "image", "png": "not base64!"}, "png is not valid base64", "png"),
        (
            {"type": "image", "png": base64.b64encode(b"GIF89a...").decode()},
            "png is not a readable PNG",
            "png",
        ),
        ({"type": "feed", "lines": 0}, "lines must be an integer from 1 to 255, got 0", "lines"),
        ({"type": "feed", "lines": 256}, "lines must be an integer from 1 to 255, got 256", "lines"),
        ({"type": "cut", "partial": "yes"}, "partial must be true or false", "partial"),
        ({"type": "cut", "feed": -1}, "feed must be an integer from 0 to 255", "feed"),
        ({"type": "drawer", "pin": 3}, "pin must be 2 or 5, got 3", "pin"),
        ({"type": "drawer", "pin": 2.0}, "pin must be 2 or 5, got 2.0", "pin"),
        ({"type": "buzzer", "times": 10}, "times must be an integer from 1 to 9", "times"),
        ({"type": "buzzer", "duration": 0}, "duration must be an integer from 1 to 9", "duration"),
    ],
)
def test_item_errors_name_item_type_and_field(item: dict[str, Any], message: str, field: str) -> None:
    doc = {"version": 1, "items": [{"type": "feed"}, {"type": "feed"}, {"type": "feed"}, item]}
    with pytest.raises(DocumentError) as info:
        parse_document(doc)
    err = info.value
    assert str(err).startswith(f"item 3 ({item['type']}): {message}")
    assert (err.item, err.item_type, err.field) == (3, item["type"], field)
    assert isinstance(err, PrintfleetError)


@pytest.mark.parametrize(
    ("symbology", "data", "message"),
    [
        ("EAN13", "12345", "EAN13 data must be 12 or 13 digits, got '12345'"),
        ("EAN13", "40063813339x1", "EAN13 data must be 12 or 13 digits"),
        ("EAN13", "4006381333932", "EAN13 check digit is 2, expected 1"),
        ("EAN13", "٤٠٠٦٣٨١٣٣٣٩٣١", "EAN13 data must be 12 or 13 digits"),  # Arabic-Indic digits are not ASCII
        ("EAN8", "123456789", "EAN8 data must be 7 or 8 digits"),
        ("EAN8", "96385075", "EAN8 check digit is 5, expected 4"),
        ("UPCA", "03600029145", None),
        ("UPCA", "036000291453", "UPCA check digit is 3, expected 2"),
        ("UPCA", "0360002914", "UPCA data must be 11 or 12 digits"),
        ("CODE39", "abc", "CODE39 data must be 1 or more of 0-9, A-Z"),
        ("CODE39", "*ABC*", "no '*'"),
        ("CODE39", "", "CODE39 data must be 1 or more"),
        ("ITF", "123", "ITF data must be an even number of digits"),
        ("ITF", "", "ITF data must be an even number of digits"),
        ("ITF", "12" * 128, "data is 256 bytes, over the 255-byte limit"),
        ("CODE128", "", "CODE128 data must be 1 or more printable ASCII characters"),
        ("CODE128", "naïve", "CODE128 data must be 1 or more printable ASCII characters"),
        ("CODE128", "{" * 127, "CODE128 data is too long"),
        ("CODE128", "x" * 253, None),
    ],
)
def test_barcode_validation(symbology: str, data: str, message: str | None) -> None:
    item = {"type": "barcode", "symbology": symbology, "data": data}
    if message is None:
        assert one(item) == BarcodeItem(symbology=symbology, data=data)  # type: ignore[arg-type]
        return
    with pytest.raises(DocumentError, match=r"^item 0 \(barcode\): .*" + re.escape(message)) as info:
        one(item)
    assert info.value.field == "data"


def test_gtin_check_digits_of_known_codes() -> None:
    assert gtin_check_digit("400638133393") == 1  # EAN-13 4006381333931
    assert gtin_check_digit("9638507") == 4  # EAN-8 96385074
    assert gtin_check_digit("03600029145") == 2  # UPC-A 036000291452


def test_items_validate_themselves_when_built_in_code() -> None:
    with pytest.raises(DocumentError, match="width must be an integer from 1 to 8, got 9") as info:
        TextItem(text="x", width=9)
    assert info.value.field == "width"
    with pytest.raises(DocumentError, match="EAN8 check digit"):
        BarcodeItem(symbology="EAN8", data="96385075")
    with pytest.raises(DocumentError, match="png is not a readable PNG"):
        ImageItem(png=b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DocumentError, match="document has no items"):
        Document(items=())
    with pytest.raises(DocumentError, match="item 0 is not a document item: str"):
        Document(items=("text",))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "a document must be a JSON object, got a list"),
        ("text", "a document must be a JSON object, got 'text'"),
        ({"items": []}, "document has no version"),
        ({"version": 2, "items": []}, "unsupported document version 2"),
        ({"version": 1.0, "items": []}, "unsupported document version 1.0"),
        ({"version": True, "items": []}, "unsupported document version true"),
        ({"version": 1}, "document has no items list"),
        ({"version": 1, "items": {}}, "items must be a list, got an object"),
        ({"version": 1, "items": []}, "document has no items"),
        ({"version": 1, "items": [], "title": "x"}, "unknown document field 'title'"),
        (
            {"version": 1, "items": [{"type": "feed"}] * (MAX_ITEMS + 1)},
            "document has 501 items, over the 500-item limit",
        ),
        ({"version": 1, "items": [{"type": "feed"}, 7]}, "item 1 must be an object, got 7"),
        ({"version": 1, "items": [{"lines": 2}]}, "item 0 has no type"),
        (
            {"version": 1, "items": [{"type": "logo"}]},
            "item 0 has unknown type 'logo' (expected one of text, line",
        ),
        ({"version": 1, "items": [{"type": ["text"]}]}, "item 0 has unknown type a list"),
    ],
)
def test_document_errors(obj: Any, message: str) -> None:
    with pytest.raises(DocumentError, match="^" + re.escape(message)):
        parse_document(obj)


def test_max_items_is_accepted() -> None:
    assert len(parse_document({"version": 1, "items": [{"type": "feed"}] * MAX_ITEMS}).items) == MAX_ITEMS


# ----------------------------------------------------------------------------------------------
# Size limits.


def test_text_limit_is_8_kib_of_utf8() -> None:
    assert one({"type": "text", "text": "x" * MAX_TEXT_BYTES}) == TextItem(text="x" * MAX_TEXT_BYTES)
    with pytest.raises(
        DocumentError, match=r"^item 0 \(text\): text is 8193 bytes, over the 8192-byte limit"
    ):
        one({"type": "text", "text": "x" * (MAX_TEXT_BYTES + 1)})
    with pytest.raises(DocumentError, match="text is 8193 bytes"):
        one({"type": "text", "text": "€" * 2731})  # 3 bytes each


def test_image_base64_limit() -> None:
    with pytest.raises(DocumentError, match=r"png is 2097156 base64 characters, over the 2097152 limit"):
        one({"type": "image", "png": "A" * (2 * 1024 * 1024 + 4)})


def test_image_pixel_limit_guards_against_png_bombs() -> None:
    bomb = png_b64(Image.new("1", (5000, 4000), 1))  # 20 megapixels in a few kilobytes
    assert len(bomb) < 20_000
    with pytest.raises(DocumentError, match=r"image of 5000x4000 px is over the 16777216-pixel limit"):
        one({"type": "image", "png": bomb})


def test_image_height_limit_applies_after_scaling() -> None:
    # 1152 x 8000 scales to 576 x 4000 on 80 mm paper: accepted.
    assert isinstance(one({"type": "image", "png": png_b64(Image.new("1", (1152, 8000), 1))}), ImageItem)
    with pytest.raises(DocumentError, match=r"image of 100x4097 px is over 4096 dots tall once scaled"):
        one({"type": "image", "png": png_b64(Image.new("1", (100, 4097), 1))})


def test_document_content_limit_is_4_mib() -> None:
    # A valid PNG padded with a 1.5 MB private ancillary chunk, which decoders skip.
    info = PngImagePlugin.PngInfo()
    info.add(b"prVt", b"\x00" * 1_500_000)
    padded = png_b64(Image.new("1", (8, 8), 1), info)
    assert 2_000_000 < len(padded) < 2 * 1024 * 1024
    two = {"version": 1, "items": [{"type": "image", "png": padded}] * 2}
    assert len(parse_document(two).items) == 2
    with pytest.raises(DocumentError, match=r"document content is over the 4194304-byte limit at item 2"):
        parse_document({"version": 1, "items": [{"type": "image", "png": padded}] * 3})
    item = ImageItem.from_base64(padded)
    with pytest.raises(DocumentError, match=r"document content of .* bytes is over the 4194304-byte limit"):
        Document(items=(item, item, item))


def test_load_document_limits_and_json_errors() -> None:
    with pytest.raises(DocumentError, match="document of 4194305 bytes is over the 4194304-byte limit"):
        load_document(b" " * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(DocumentError, match=r"^document is not valid JSON: Expecting"):
        load_document("{")
    with pytest.raises(DocumentError, match=r"^document is not valid JSON"):
        load_document(b"\xff\xfe{}")
    with pytest.raises(DocumentError, match="NaN is not a JSON number"):
        load_document('{"version": 1, "items": [{"type": "feed", "lines": NaN}]}')
    with pytest.raises(DocumentError, match=r"^document is not valid JSON"):
        load_document("[" * 200_000 + "]" * 200_000)  # deeper than the JSON parser recurses
    with pytest.raises(DocumentError, match="must be JSON text or bytes"):
        load_document(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Plain-text jobs.


def test_text_document_is_the_text_then_a_cut() -> None:
    assert text_document("Hello\r\nWorld\n") == Document(items=(TextItem(text="Hello\nWorld"), CutItem()))
    assert text_document("") == Document(items=(TextItem(text=""), CutItem()))


def test_long_text_documents_are_split_into_items_within_the_text_limit() -> None:
    lines = [f"line {i:05d} " + "é" * 40 for i in range(1000)]  # about 91 KB of UTF-8
    text = "\n".join(lines) + "\n"
    document = text_document(text)
    texts = [item for item in document.items if isinstance(item, TextItem)]
    assert len(texts) > 1
    assert all(len(t.text.encode()) <= MAX_TEXT_BYTES for t in texts)
    assert "\n".join(t.text for t in texts) == text.removesuffix("\n")
    single = "x" * 20_000  # one line longer than an item: split inside the line
    pieces = [item.text for item in text_document(single).items if isinstance(item, TextItem)]
    assert "".join(p.replace("\n", "") for p in pieces) == single


def test_text_document_refuses_control_characters() -> None:
    with pytest.raises(DocumentError, match="control character U\\+000C"):
        text_document("page 1\fpage 2")


# ----------------------------------------------------------------------------------------------
# Profiles.


def test_profile_registry() -> None:
    assert {"generic-80", "generic-58", "epson-tm-t88", "no-status"} <= set(PROFILE_NAMES)
    assert get_profile() is get_profile("generic-80")
    g80, g58 = get_profile("generic-80"), get_profile("generic-58")
    assert (g80.paper_width_dots, g80.chars_per_line, g80.cutter) == (576, 48, True)
    assert (g58.paper_width_dots, g58.chars_per_line, g58.cutter) == (384, 32, False)
    assert get_profile("epson-tm-t88").gs_paren_h is True
    assert get_profile("no-status").status_queries is False
    for name in PROFILE_NAMES:
        profile = get_profile(name)
        assert profile.name == name
        assert (profile.code_page, profile.code_page_number) == ("cp858", 19)
        assert profile.raster_band_bytes == 1024


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(DocumentError, match="unknown printer profile 'tm-x'; known: generic-80, generic-58"):
        get_profile("tm-x")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paper_width_dots": 500}, "paper_width_dots must be a multiple of 8"),
        ({"chars_per_line": 0}, "chars_per_line must be from 1 to 255"),
        ({"code_page": "no-such-codec"}, "unknown code page 'no-such-codec'"),
        ({"code_page": "utf-16"}, "is not ASCII-compatible"),
        ({"code_page_number": 256}, "code_page_number must be from 0 to 255"),
        ({"raster_band_bytes": 71}, "raster_band_bytes must hold at least one full-width row (72 bytes)"),
        ({"name": ""}, "profile name must be a non-empty string"),
    ],
)
def test_profiles_validate_themselves(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DocumentError, match=re.escape(message)):
        dataclasses.replace(get_profile("generic-80"), **changes)


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile().cutter = False  # type: ignore[misc]
    assert isinstance(get_profile(), PrinterProfile)


# ----------------------------------------------------------------------------------------------
# Properties: parsing arbitrary JSON-like input raises DocumentError or nothing.

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
_FIELD_NAMES = sorted(
    {f.name for cls in (TextItem, LineItem, ColumnsItem, BarcodeItem, QrItem, FeedItem, CutItem, DrawerItem,
                        BuzzerItem) for f in dataclasses.fields(cls)} | {"png", "colour"}
)  # fmt: skip
_item_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from([*ITEM_TYPE_NAMES, "", "Text"]) | _json,
    st.dictionaries(st.sampled_from(_FIELD_NAMES), _json, max_size=6),
)
_doc_like = st.fixed_dictionaries(
    {"version": st.just(1) | _json, "items": st.lists(_item_like, max_size=6) | _json},
    optional={"extra": _json},
)


@settings(max_examples=200, deadline=None)
@given(obj=_json | _doc_like)
def test_parse_document_raises_only_document_error(obj: Any) -> None:
    try:
        document = parse_document(obj)
    except DocumentError as exc:
        message = str(exc)
    else:
        assert isinstance(document, Document)
        return
    assert message
    assert "\n" not in message


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200) | _doc_like.map(json.dumps))
def test_load_document_raises_only_document_error(data: bytes | str) -> None:
    with contextlib.suppress(DocumentError):
        load_document(data)
