"""The phone bridge: prints over Bluetooth LE when the cloud path to a printer is down.

Lives here: the bridge daemon and its MQTT session (:mod:`.bridge`), its config file
(:mod:`.config`), the BLE printer side (:mod:`.ble` and its ``ble_*`` modules), and the simulated
radio and printer for tests and demos (:mod:`.bleak_bumble`, :mod:`.virtual_printer`). Public API
(see docs/ble.md):

* :mod:`kernel.gatt` (pure data, no I/O): :data:`PROFILES` in the order the bridge tries
  them, :func:`resolve_profile` (with the fallback rule), the identity challenge
  (:data:`IDENTITY_SERVICE_UUID`, :func:`identity_message`, :func:`verify_identity`).
* :mod:`phone_bridge.bleak_bumble`: :class:`BumbleRadio`, a bleak backend over bumble
  (``backend=radio.scanner_backend`` / ``radio.client_backend``).
* :mod:`phone_bridge.virtual_printer`: :class:`VirtualPrinter`, :class:`VirtualPrinterConfig`,
  :class:`Impostor`, :class:`VirtualRadioServer`.
* :mod:`phone_bridge.ble` (the bridge's printer side): :class:`PrinterTarget`, :func:`open_backend`
  (:class:`BackendSpec`: ``"bleak"`` or ``"bumble:<HCI transport>"``) giving a :class:`Backend`,
  :class:`PrinterConnection` (``async with PrinterConnection.open(target, backend) as printer``;
  ``printer.identity`` is an :class:`IdentityOutcome`; ``await printer.write(data)`` returns a
  :class:`WriteResult`), :class:`Pacing`, :class:`Backoff`, :class:`ConnectionState`, and the
  errors under :class:`BleError`: :class:`InvalidBackendSpec`, :class:`BackendUnavailable`,
  :class:`PrinterNotFound`, :class:`ConnectFailed`, :class:`ImpostorError`,
  :class:`IdentityRequired`, :class:`NoPrintChannel`, :class:`WriteFailed`.

``bleak_bumble`` and ``virtual_printer`` need ``bumble`` (a heavier import) and are imported on
first use (so does ``open_backend("bumble:...")``).

May import: the kernel (and bleak, httpx; bumble for the simulated radio); never another part or
the composition layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.gatt import (
    IDENTITY_NONCE_UUID,
    IDENTITY_SERVICE_UUID,
    IDENTITY_SIGNATURE_UUID,
    PROFILES,
    GattProfile,
    PrintChannel,
    identity_message,
    resolve_profile,
    verify_identity,
)
from phone_bridge.ble import (
    Backend,
    BackendSpec,
    BackendUnavailable,
    Backoff,
    BleError,
    ConnectFailed,
    ConnectionState,
    IdentityOutcome,
    IdentityRequired,
    ImpostorError,
    InvalidBackendSpec,
    NoPrintChannel,
    Pacing,
    PrinterConnection,
    PrinterNotFound,
    PrinterTarget,
    WriteFailed,
    WriteResult,
    open_backend,
)

if TYPE_CHECKING:
    from phone_bridge.bleak_bumble import BumbleRadio
    from phone_bridge.virtual_printer import (
        Impostor,
        VirtualPrinter,
        VirtualPrinterConfig,
        VirtualRadioServer,
    )

_LAZY = {
    "BumbleRadio": "phone_bridge.bleak_bumble",
    "Impostor": "phone_bridge.virtual_printer",
    "VirtualPrinter": "phone_bridge.virtual_printer",
    "VirtualPrinterConfig": "phone_bridge.virtual_printer",
    "VirtualRadioServer": "phone_bridge.virtual_printer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IDENTITY_NONCE_UUID",
    "IDENTITY_SERVICE_UUID",
    "IDENTITY_SIGNATURE_UUID",
    "PROFILES",
    "Backend",
    "BackendSpec",
    "BackendUnavailable",
    "Backoff",
    "BleError",
    "BumbleRadio",
    "ConnectFailed",
    "ConnectionState",
    "GattProfile",
    "IdentityOutcome",
    "IdentityRequired",
    "Impostor",
    "ImpostorError",
    "InvalidBackendSpec",
    "NoPrintChannel",
    "Pacing",
    "PrintChannel",
    "PrinterConnection",
    "PrinterNotFound",
    "PrinterTarget",
    "VirtualPrinter",
    "VirtualPrinterConfig",
    "VirtualRadioServer",
    "WriteFailed",
    "WriteResult",
    "identity_message",
    "open_backend",
    "resolve_profile",
    "verify_identity",
]
