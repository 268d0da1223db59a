"""Which Bluetooth stack the BLE printer side runs on: ``bleak`` (the platform's) or
``bumble:<HCI transport>`` (bumble's host stack on a virtual radio, a USB dongle, a serial controller).

:meth:`BackendSpec.parse` checks the string; :func:`open_backend` opens the stack for as long as its
context lasts and gives a :class:`Backend`: the scanner and client classes bleak takes through
``backend=`` (``None``: bleak's platform backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from phone_bridge.ble_errors import BackendUnavailable, InvalidBackendSpec

_OPEN_ERRORS: Final = (BleakError, OSError, EOFError, ValueError)


class BackendKind(StrEnum):
    BLEAK = "bleak"  # bleak's platform backend: BlueZ, CoreBluetooth, WinRT, Android
    BUMBLE = "bumble"  # bumble's host stack over an HCI transport (a virtual radio, a USB dongle)


#: bumble HCI transport schemes: those needing an argument, and those where it is optional.
_BUMBLE_SCHEMES_WITH_ARG: Final = frozenset(
    {"serial", "udp", "tcp-client", "tcp-server", "ws-client", "ws-server", "file", "usb", "pyusb"}
    | {"unix", "unix-client", "unix-server"}
)
_BUMBLE_SCHEMES_OPTIONAL_ARG: Final = frozenset(
    {"pty", "vhci", "hci-socket", "android-emulator", "android-netsim"}
)
_HOST_PORT: Final = re.compile(r"^(?:\[[^\]]+\]|[^:\s]*):(\d{1,5})$")
_EXPECTED: Final = "expected 'bleak' or 'bumble:<HCI transport>', e.g. 'bumble:tcp-client:127.0.0.1:7000'"


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """Which Bluetooth stack the bridge uses: ``bleak`` (the platform's) or ``bumble:<transport>``."""

    kind: BackendKind = BackendKind.BLEAK
    transport: str | None = None
    """The bumble HCI transport spec (``tcp-client:HOST:PORT``, ``usb:0``, ``serial:/dev/ttyUSB0``...)."""

    def __post_init__(self) -> None:
        match self.kind:
            case BackendKind.BLEAK if self.transport is not None:
                raise InvalidBackendSpec("the bleak backend takes no transport")
            case BackendKind.BUMBLE:
                _check_bumble_transport(self.transport or "", str(self))

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """``"bleak"`` or ``"bumble:<HCI transport spec>"``; else :class:`InvalidBackendSpec`."""
        kind, sep, rest = text.partition(":")
        match kind, sep:
            case "bleak", "":
                return cls()
            case "bumble", ":":
                return cls(kind=BackendKind.BUMBLE, transport=rest)
            case "bumble", "":
                raise InvalidBackendSpec(f"BLE backend {text!r} names no HCI transport; {_EXPECTED}")
            case "bleak", ":":
                raise InvalidBackendSpec(f"BLE backend {text!r}: bleak takes no argument; {_EXPECTED}")
        raise InvalidBackendSpec(f"unknown BLE backend {text!r}; {_EXPECTED}")

    def __str__(self) -> str:
        return "bleak" if self.kind is BackendKind.BLEAK else f"bumble:{self.transport}"


def _check_bumble_transport(transport: str, text: str) -> None:
    spec = re.sub(r"^\[[^\]]*\]", "", transport)  # bumble's optional "[key=value,...]" metadata prefix
    scheme, _, arg = spec.partition(":")
    if scheme in _BUMBLE_SCHEMES_WITH_ARG:
        if not arg:
            raise InvalidBackendSpec(f"BLE backend {text!r}: the {scheme} transport needs an argument")
    elif scheme not in _BUMBLE_SCHEMES_OPTIONAL_ARG:
        known = ", ".join(sorted(_BUMBLE_SCHEMES_WITH_ARG | _BUMBLE_SCHEMES_OPTIONAL_ARG))
        raise InvalidBackendSpec(
            f"BLE backend {text!r}: unknown bumble transport {scheme or '(none)'!r}; known: {known}"
        )
    if scheme in ("tcp-client", "tcp-server", "ws-client", "ws-server"):
        port = _HOST_PORT.match(arg)
        if port is None or not 0 < int(port.group(1)) <= 65535:
            raise InvalidBackendSpec(f"BLE backend {text!r}: {scheme} needs HOST:PORT with a port 1..65535")


class RadioLike(Protocol):
    """An open radio handing bleak its backend classes (:class:`~phone_bridge.bleak_bumble.BumbleRadio`)."""

    @property
    def scanner_backend(self) -> type[BaseBleakScanner]: ...
    @property
    def client_backend(self) -> type[BaseBleakClient]: ...


@dataclass(frozen=True, kw_only=True)
class Backend:
    """What :class:`~phone_bridge.ble.PrinterConnection` passes to bleak as ``backend=``
    (``None``: the platform's)."""

    description: str
    scanner_backend: type[BaseBleakScanner] | None = None
    client_backend: type[BaseBleakClient] | None = None


@contextlib.asynccontextmanager
async def open_backend(
    spec: str | BackendSpec | RadioLike, *, open_timeout: float = 10.0
) -> AsyncIterator[Backend]:
    """Open the Bluetooth stack named by ``spec`` (a string for :meth:`BackendSpec.parse`, a parsed
    spec, or an already open radio, which stays open) for as long as the context lasts.

    A bumble transport must open and its controller answer within ``open_timeout`` seconds, else
    :class:`BackendUnavailable`. bleak's platform backend starts on the first scan: a missing
    Bluetooth stack shows there, as :class:`BackendUnavailable` from
    :class:`~phone_bridge.ble.PrinterConnection`.
    """
    if isinstance(spec, str):
        spec = BackendSpec.parse(spec)
    if not isinstance(spec, BackendSpec):
        yield Backend(
            description=type(spec).__name__,
            scanner_backend=spec.scanner_backend,
            client_backend=spec.client_backend,
        )
        return
    if spec.kind is BackendKind.BLEAK:
        yield Backend(description=str(spec))
        return
    try:
        from phone_bridge.bleak_bumble import BumbleRadio  # imported only when a bumble stack is asked for
    except ImportError as exc:
        raise BackendUnavailable(f"{spec}: bumble is not installed ({exc})") from exc
    assert spec.transport is not None
    radio = BumbleRadio(spec.transport)
    try:
        async with asyncio.timeout(open_timeout):
            await radio.__aenter__()
    except TimeoutError as exc:
        raise BackendUnavailable(f"{spec}: the HCI transport did not open within {open_timeout:g} s") from exc
    except _OPEN_ERRORS as exc:
        raise BackendUnavailable(f"{spec}: cannot open the HCI transport: {exc}") from exc
    try:
        yield Backend(
            description=str(spec), scanner_backend=radio.scanner_backend, client_backend=radio.client_backend
        )
    finally:
        await radio.__aexit__(None, None, None)


__all__ = ["Backend", "BackendKind", "BackendSpec", "RadioLike", "open_backend"]
