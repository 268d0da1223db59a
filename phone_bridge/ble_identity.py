"""GATT look-ups on a connected printer and the identity challenge: the printer proves it is the
printer the cloud knows by signing a fresh nonce (docs/ble.md).

Identity policy (the printer proves its identity by signing a fresh 32-byte nonce, docs/ble.md):

========================================  ==============  ==============  =========
the printer ...                           ``required``    ``preferred``   ``off``
========================================  ==============  ==============  =========
signs the nonce with the known key        VERIFIED        VERIFIED        SKIPPED
has no identity service, or no key known  IdentityRequired UNVERIFIED     SKIPPED
has the service, signature does not fit   ImpostorError   ImpostorError   SKIPPED
========================================  ==============  ==============  =========
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable
from typing import Final, TypeVar

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError

from kernel.gatt import (
    IDENTITY_NONCE_UUID,
    IDENTITY_SERVICE_UUID,
    IDENTITY_SIGNATURE_UUID,
    NONCE_SIZE,
    normalize_uuid,
    uuid16,
    verify_identity,
)
from phone_bridge.ble_errors import ConnectFailed, IdentityRequired, ImpostorError
from phone_bridge.ble_target import IdentityOutcome, PrinterTarget

log = logging.getLogger(__name__)

_GAP_DEVICE_NAME: Final = uuid16(0x2A00)
#: What bleak and the OS raise when the radio link fails (mapped to :class:`ConnectFailed` and kin).
TRANSPORT_ERRORS: Final = (BleakError, TimeoutError, OSError, EOFError)

_T = TypeVar("_T")


async def _gatt(timeout: float, operation: Awaitable[_T]) -> _T:
    async with asyncio.timeout(timeout):
        return await operation


async def check_identity(
    client: BleakClient, device: BLEDevice, target: PrinterTarget, *, gatt_timeout: float
) -> IdentityOutcome:
    """Run the identity challenge as ``target.identity`` says (the table in :mod:`phone_bridge.ble`)."""
    if target.identity == "off":
        return IdentityOutcome.SKIPPED
    nonce_char = characteristic(client.services, IDENTITY_SERVICE_UUID, IDENTITY_NONCE_UUID)
    signature_char = characteristic(client.services, IDENTITY_SERVICE_UUID, IDENTITY_SIGNATURE_UUID)
    if nonce_char is None or signature_char is None or target.public_key is None:
        reason = (
            "no public key is known" if target.public_key is None else "the printer has no identity service"
        )
        if target.identity == "required":
            raise IdentityRequired(
                f"identity required: {reason}", printer=target.name, address=device.address
            )
        log.warning("printer %s: identity not verified: %s", target.name, reason)
        return IdentityOutcome.UNVERIFIED
    nonce = secrets.token_bytes(NONCE_SIZE)
    try:
        signature = await _challenge(client, nonce_char, signature_char, nonce, gatt_timeout)
    except BleakGATTProtocolError as exc:
        raise ImpostorError(
            f"the printer refused the identity challenge: {exc}",
            printer=target.name,
            address=device.address,
        ) from exc
    except TRANSPORT_ERRORS as exc:
        raise ConnectFailed(
            f"identity challenge failed: {exc or type(exc).__name__}",
            printer=target.name,
            address=device.address,
        ) from exc
    if not verify_identity(
        public_key=target.public_key, unique_id=target.unique_id, nonce=nonce, signature=signature
    ):
        raise ImpostorError(
            "the identity signature does not verify with the printer's public key",
            printer=target.name,
            address=device.address,
        )
    return IdentityOutcome.VERIFIED


async def _challenge(
    client: BleakClient,
    nonce_char: BleakGATTCharacteristic,
    signature_char: BleakGATTCharacteristic,
    nonce: bytes,
    gatt_timeout: float,
) -> bytes:
    """Write the nonce; the signature comes as a notification, else by reading the characteristic."""
    notified: asyncio.Queue[bytes] = asyncio.Queue()
    notify = bool({"notify", "indicate"} & set(signature_char.properties))
    if notify:
        await _gatt(
            gatt_timeout,
            client.start_notify(signature_char, lambda _c, data: notified.put_nowait(bytes(data))),
        )
    await _gatt(gatt_timeout, client.write_gatt_char(nonce_char, nonce, response=True))
    signature: bytes | None = None
    if notify:
        with contextlib.suppress(TimeoutError):
            signature = await asyncio.wait_for(notified.get(), gatt_timeout)
        await _gatt(gatt_timeout, client.stop_notify(signature_char))
    if signature is None:
        signature = bytes(await _gatt(gatt_timeout, client.read_gatt_char(signature_char)))
    return signature


def characteristic(
    services: BleakGATTServiceCollection, service_uuid: str, char_uuid: str
) -> BleakGATTCharacteristic | None:
    service = find_service(services, service_uuid)
    if service is None:
        return None
    return next((c for c in service.characteristics if normalize_uuid(c.uuid) == char_uuid), None)


def find_service(services: BleakGATTServiceCollection, service_uuid: str) -> BleakGATTService | None:
    return next((s for s in services if normalize_uuid(s.uuid) == service_uuid), None)


def readable(
    services: BleakGATTServiceCollection, char: BleakGATTCharacteristic
) -> BleakGATTCharacteristic | None:
    """Something to read as a barrier: the print characteristic, a readable one of its service, or
    the device name (GAP; BlueZ hides that service)."""
    candidates: list[BleakGATTCharacteristic] = [char]
    service = services.get_service(char.service_handle)
    if service is not None:
        candidates.extend(service.characteristics)
    gap = characteristic(services, uuid16(0x1800), _GAP_DEVICE_NAME)
    if gap is not None:
        candidates.append(gap)
    return next((c for c in candidates if "read" in c.properties), None)
