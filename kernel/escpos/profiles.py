"""Printer profiles: what a model of printer can do, as the renderer and the device agent need it.

A profile is chosen by name (``PrinterSpec.profile`` on the wire). :func:`get_profile` looks one up
in the built-in registry; a deployment with an unusual printer can build its own
:class:`PrinterProfile`, which validates itself.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from kernel.errors import DocumentError


@dataclass(frozen=True, kw_only=True, slots=True)
class PrinterProfile:
    """One printer model.

    ``code_page`` is the Python codec the printer's character table matches, ``code_page_number``
    the ``n`` of ``ESC t n`` that selects that table on the printer (pinned after every ``ESC @``).
    """

    name: str
    #: Printable width in dots: 384 for 58 mm paper, 576 for 80 mm (203 dpi); a multiple of 8.
    paper_width_dots: int
    #: Characters per line in font A at normal width.
    chars_per_line: int
    code_page: str = "cp858"
    code_page_number: int = 19
    #: The printer answers real-time status (DLE EOT) and GS r.
    status_queries: bool = True
    #: The printer answers GS ( H fn 48 with a print-complete response (Epson TM).
    gs_paren_h: bool = False
    cutter: bool = True
    drawer: bool = True
    #: The printer draws QR codes itself (GS ( k); otherwise they are sent as raster images.
    native_qr: bool = True
    #: The printer has a buzzer driven by ESC B n t.
    buzzer: bool = False
    #: The printer sends Automatic Status Back (GS a) blocks when enabled: status changes are
    #: learnt at once instead of at the next poll.
    asb: bool = False
    #: At most this many data bytes per GS v 0 raster band, so that a transport can pace between bands.
    raster_band_bytes: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DocumentError("profile name must be a non-empty string")
        for attr in ("paper_width_dots", "chars_per_line", "code_page_number", "raster_band_bytes"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DocumentError(f"profile {self.name}: {attr} must be an integer")
        if not 8 <= self.paper_width_dots <= 4096 or self.paper_width_dots % 8:
            raise DocumentError(
                f"profile {self.name}: paper_width_dots must be a multiple of 8 from 8 to 4096"
            )
        if not 1 <= self.chars_per_line <= 255:
            raise DocumentError(f"profile {self.name}: chars_per_line must be from 1 to 255")
        if not 0 <= self.code_page_number <= 255:
            raise DocumentError(f"profile {self.name}: code_page_number must be from 0 to 255")
        if not self.paper_width_dots // 8 <= self.raster_band_bytes <= 65535:
            raise DocumentError(
                f"profile {self.name}: raster_band_bytes must hold at least one full-width row "
                f"({self.paper_width_dots // 8} bytes) and at most 65535"
            )
        try:
            codecs.lookup(self.code_page)
            single_byte = "Az09 ".encode(self.code_page) == b"Az09 "
        except (LookupError, TypeError, UnicodeError) as exc:
            raise DocumentError(f"profile {self.name}: unknown code page {self.code_page!r}") from exc
        if not single_byte:
            raise DocumentError(f"profile {self.name}: code page {self.code_page!r} is not ASCII-compatible")


#: The built-in profiles by name.
PROFILES: Final = MappingProxyType(
    {
        p.name: p
        for p in (
            # An 80 mm ESC/POS printer (Epson-compatible clones): 576 dots, 48 columns, cutter, drawer,
            # and the ESC B buzzer that kitchen models have (the others ignore it).
            PrinterProfile(name="generic-80", paper_width_dots=576, chars_per_line=48, buzzer=True),
            # A 58 mm printer: 384 dots, 32 columns; most have neither cutter nor drawer port.
            PrinterProfile(
                name="generic-58", paper_width_dots=384, chars_per_line=32, cutter=False, drawer=False
            ),
            # Epson TM-T88 (V and later): 180 dpi, 512 dots (72 mm) printable, 42 columns in font A;
            # answers GS ( H fn 48 once a job is printed.
            PrinterProfile(
                name="epson-tm-t88", paper_width_dots=512, chars_per_line=42, gs_paren_h=True, asb=True
            ),
            # An 80 mm printer that cannot answer status queries (one-way link or a mute clone).
            PrinterProfile(name="no-status", paper_width_dots=576, chars_per_line=48, status_queries=False),
        )
    }
)
DEFAULT_PROFILE: Final = "generic-80"
PROFILE_NAMES: Final[tuple[str, ...]] = tuple(PROFILES)


def get_profile(name: str = DEFAULT_PROFILE) -> PrinterProfile:
    """The built-in profile ``name``; :class:`DocumentError` naming the known ones otherwise."""
    profile = PROFILES.get(name) if isinstance(name, str) else None
    if profile is None:
        raise DocumentError(f"unknown printer profile {name!r}; known: {', '.join(PROFILE_NAMES)}")
    return profile


__all__ = ["DEFAULT_PROFILE", "PROFILES", "PROFILE_NAMES", "PrinterProfile", "get_profile"]
