"""The BLE printer side's errors (:mod:`phone_bridge.ble`): one root, structured fields.

::

    PrintfleetError
     +-- BleError                 (printer, address, reason, retryable)
          +-- InvalidBackendSpec  (also a ValueError: a backend string that does not parse)
          +-- BackendUnavailable  (the platform's Bluetooth stack or the HCI transport cannot start)
          +-- PrinterNotFound     (retryable: no advertisement matched within the scan)
          +-- ConnectFailed       (retryable: connect, discovery or the challenge's exchange failed)
          +-- ImpostorError       (the printer has the identity service; its signature does not verify)
          +-- IdentityRequired    (policy "required", and the printer cannot prove its identity)
          +-- NoPrintChannel      (no writable print characteristic, or no way to confirm delivery)
          +-- WriteFailed         (retryable: bytes_sent, bytes_confirmed, bytes_total)
"""

from __future__ import annotations

from typing import ClassVar

from kernel.errors import PrintfleetError


class BleError(PrintfleetError):
    """Root of the BLE side's errors: which printer (printfleet name), its address, why, retryable."""

    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        reason: str,
        *,
        printer: str | None = None,
        address: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        where = " ".join(part for part in (printer, f"({address})" if address else None) if part)
        super().__init__(
            f"printer {where}: {reason}" if where else reason,
            retryable=self.default_retryable if retryable is None else retryable,
        )
        self.reason = reason
        self.printer = printer
        self.address = address


class InvalidBackendSpec(BleError, ValueError):
    """A backend string that is neither ``bleak`` nor ``bumble:<HCI transport spec>``."""


class BackendUnavailable(BleError):
    """The platform's Bluetooth stack (or the bumble HCI transport) could not be used."""


class PrinterNotFound(BleError):
    """No advertisement matched the target within the scan."""

    default_retryable = True


class ConnectFailed(BleError):
    """Connecting, service discovery or the identity exchange failed on the way (the link, not the
    printer's answer)."""

    default_retryable = True


class ImpostorError(BleError):
    """The printer has the identity service, and its answer to the nonce does not verify."""


class IdentityRequired(BleError):
    """The policy is ``required`` and the printer cannot prove its identity (no service, or no key known)."""


class NoPrintChannel(BleError):
    """The printer has no writable print characteristic (or no way to confirm delivery on it)."""


class WriteFailed(BleError):
    """A write did not complete; ``bytes_confirmed`` bytes were acknowledged by a barrier."""

    default_retryable = True

    def __init__(
        self,
        reason: str,
        *,
        bytes_sent: int,
        bytes_confirmed: int,
        bytes_total: int,
        printer: str | None = None,
        address: str | None = None,
    ) -> None:
        super().__init__(
            f"{reason} (sent {bytes_sent}, confirmed {bytes_confirmed} of {bytes_total} bytes)",
            printer=printer,
            address=address,
        )
        self.bytes_sent = bytes_sent
        """Bytes handed to the Bluetooth stack without error (not all of them reached the printer)."""
        self.bytes_confirmed = bytes_confirmed
        """Bytes up to the last acknowledged barrier: the printer has these."""
        self.bytes_total = bytes_total


__all__ = [
    "BackendUnavailable",
    "BleError",
    "ConnectFailed",
    "IdentityRequired",
    "ImpostorError",
    "InvalidBackendSpec",
    "NoPrintChannel",
    "PrinterNotFound",
    "WriteFailed",
]
