"""GATT profiles of ESC/POS BLE printers and the printfleet identity challenge, as data (no I/O).

* :data:`PROFILES`: the known printer profiles, in the order the bridge tries them.
  :func:`resolve_profile` applies them, then the fallback rule (the first writable vendor
  characteristic), to what service discovery found.
* The identity challenge ("prove you are the right printer"): the bridge writes a 32-byte nonce to
  :data:`IDENTITY_NONCE_UUID`; the printer answers on :data:`IDENTITY_SIGNATURE_UUID` (notify, and
  readable afterwards) with an Ed25519 signature over :func:`identity_message`. The bridge checks it
  with the printer's public key from the cloud (:func:`verify_identity`). docs/ble.md is the
  specification a printer maker implements.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_SIG_BASE_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def uuid16(value: int) -> str:
    """The 128-bit form (lowercase, as bleak reports UUIDs) of a 16-bit Bluetooth SIG UUID."""
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {value:#x}")
    return f"0000{value:04x}{_SIG_BASE_SUFFIX}"


def normalize_uuid(value: str) -> str:
    """A UUID as bleak reports it: 128-bit, lowercase; 4-hex-digit forms expand on the SIG base."""
    text = value.strip().lower()
    if len(text) == 4:
        return uuid16(int(text, 16))
    return str(uuid.UUID(text))


@dataclass(frozen=True, kw_only=True)
class GattProfile:
    """One way an ESC/POS printer exposes its print channel over GATT.

    ``notify_uuid`` is where the printer sends status bytes (DLE EOT replies, ASB); it may be the
    write characteristic itself. ``None`` means the profile names none: use the first notifying
    characteristic of the service, if any.
    """

    name: str
    service_uuid: str
    write_uuid: str
    notify_uuid: str | None
    seen_on: str = ""

    def __post_init__(self) -> None:
        for field in ("service_uuid", "write_uuid", "notify_uuid"):
            value = getattr(self, field)
            if value is not None and value != normalize_uuid(value):
                raise ValueError(f"{field} must be a lowercase 128-bit UUID, got {value!r}")


def _nus(n: int) -> str:
    return f"6e40{n:04x}-b5a3-f393-e0a9-e50e24dcca9e"


#: The known profiles, in the order the bridge must try them.
PROFILES: Final[tuple[GattProfile, ...]] = (
    GattProfile(
        name="generic-18f0",
        service_uuid=uuid16(0x18F0),
        write_uuid=uuid16(0x2AF1),
        notify_uuid=uuid16(0x2AF0),
        seen_on="generic MPT-II, POS-5805, Xprinter",
    ),
    GattProfile(
        name="issc-transparent-uart",
        service_uuid="49535343-fe7d-4ae5-8fa9-9fafd205e455",
        write_uuid="49535343-8841-43f4-a8d4-ecbe34729bb3",
        notify_uuid="49535343-1e4d-4bd9-ba61-23c647249616",
        seen_on="Epson TM-P, Star SM-L, RPP02 (ISSC/Microchip modules)",
    ),
    GattProfile(
        name="nordic-uart",
        service_uuid=_nus(1),
        write_uuid=_nus(2),
        notify_uuid=_nus(3),
        seen_on="Nordic UART Service modules",
    ),
    GattProfile(
        name="hm10-ffe0",
        service_uuid=uuid16(0xFFE0),
        write_uuid=uuid16(0xFFE1),
        notify_uuid=uuid16(0xFFE1),
        seen_on="HM-10 modules (one characteristic for both directions)",
    ),
    GattProfile(
        name="vendor-ff00",
        service_uuid=uuid16(0xFF00),
        write_uuid=uuid16(0xFF02),
        notify_uuid=None,
        seen_on="various",
    ),
    GattProfile(
        name="vendor-e7810a71",
        service_uuid="e7810a71-73ae-499d-8c15-faa9aef0c3f2",
        write_uuid="bef8d6c9-9c21-4c9e-b632-bd58c1009f9f",
        notify_uuid=None,
        seen_on="various",
    ),
)

PROFILES_BY_NAME: Final = {p.name: p for p in PROFILES}

# -- identity challenge ------------------------------------------------------------------------

#: The printfleet identity service and its two characteristics.
IDENTITY_SERVICE_UUID: Final = "e4b3bce8-3560-4caa-aadb-838b0ca70001"
IDENTITY_NONCE_UUID: Final = "e4b3bce8-3560-4caa-aadb-838b0ca70002"
"""Write (with response): exactly :data:`NONCE_SIZE` bytes."""
IDENTITY_SIGNATURE_UUID: Final = "e4b3bce8-3560-4caa-aadb-838b0ca70003"
"""Read and notify: the 64-byte Ed25519 signature over :func:`identity_message` for the last nonce."""

IDENTITY_DOMAIN: Final = b"printfleet-ble-identity-v1"
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
PUBLIC_KEY_SIZE: Final = 32
MAX_UNIQUE_ID_BYTES: Final = 128


def identity_message(unique_id: str, nonce: bytes) -> bytes:
    """What the printer signs: ``b"printfleet-ble-identity-v1" || utf8(unique_id) || nonce``.

    No separators or length prefixes: the domain string and the nonce have fixed lengths, so the
    concatenation is unambiguous.
    """
    raw_id = unique_id.encode("utf-8")
    if not 1 <= len(raw_id) <= MAX_UNIQUE_ID_BYTES:
        raise ValueError(f"unique_id must be 1..{MAX_UNIQUE_ID_BYTES} bytes of UTF-8")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return IDENTITY_DOMAIN + raw_id + bytes(nonce)


def decode_public_key(value: str | bytes) -> bytes:
    """An Ed25519 public key as printfleet stores it (base64 of the raw 32 bytes), or raw bytes."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError("public key is not valid base64") from exc
    if len(value) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(value)}")
    return bytes(value)


def verify_identity(*, public_key: str | bytes, unique_id: str, nonce: bytes, signature: bytes) -> bool:
    """True when ``signature`` is the printer's answer to ``nonce`` under ``public_key``."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    key = Ed25519PublicKey.from_public_bytes(decode_public_key(public_key))
    try:
        key.verify(bytes(signature), identity_message(unique_id, nonce))
    except InvalidSignature:
        return False
    return True


# -- choosing the print channel ----------------------------------------------------------------


class CharacteristicLike(Protocol):
    """What :func:`resolve_profile` reads of a characteristic (bleak's ``BleakGATTCharacteristic`` fits)."""

    @property
    def uuid(self) -> str: ...
    @property
    def properties(self) -> Sequence[str]: ...


class ServiceLike(Protocol):
    """What :func:`resolve_profile` reads of a service (bleak's ``BleakGATTService`` fits)."""

    @property
    def uuid(self) -> str: ...
    @property
    def characteristics(self) -> Sequence[CharacteristicLike]: ...


#: Services that are never a print channel (GAP, GATT, Device Information, Battery, identity).
STANDARD_SERVICES: Final = frozenset(
    {uuid16(0x1800), uuid16(0x1801), uuid16(0x180A), uuid16(0x180F), IDENTITY_SERVICE_UUID}
)
_WRITABLE: Final = frozenset({"write", "write-without-response"})
_NOTIFYING: Final = frozenset({"notify", "indicate"})


@dataclass(frozen=True, kw_only=True)
class PrintChannel:
    """Where to write print data and where status comes back, as chosen by :func:`resolve_profile`.

    ``profile`` is ``None`` when the fallback rule chose the channel.
    """

    profile: GattProfile | None
    service_uuid: str
    write_uuid: str
    notify_uuid: str | None


def resolve_profile(services: Iterable[ServiceLike]) -> PrintChannel | None:
    """Pick the print channel: the first of :data:`PROFILES` present, else the fallback rule.

    The fallback is the first characteristic (in discovery order) with a write property in a
    service that is not a standard one (:data:`STANDARD_SERVICES`); its notify characteristic is the
    first notifying one of the same service. ``None`` when nothing is writable.
    """
    found = list(services)
    by_uuid = {normalize_uuid(s.uuid): s for s in found}
    for profile in PROFILES:
        service = by_uuid.get(profile.service_uuid)
        if service is None:
            continue
        chars = {normalize_uuid(c.uuid): c for c in service.characteristics}
        write = chars.get(profile.write_uuid)
        if write is None or not _WRITABLE.intersection(write.properties):
            continue
        notify = profile.notify_uuid if profile.notify_uuid in chars else _first_notify(service)
        return PrintChannel(
            profile=profile,
            service_uuid=profile.service_uuid,
            write_uuid=profile.write_uuid,
            notify_uuid=notify,
        )
    for service in found:
        if normalize_uuid(service.uuid) in STANDARD_SERVICES:
            continue
        for char in service.characteristics:
            if _WRITABLE.intersection(char.properties):
                return PrintChannel(
                    profile=None,
                    service_uuid=normalize_uuid(service.uuid),
                    write_uuid=normalize_uuid(char.uuid),
                    notify_uuid=_first_notify(service),
                )
    return None


def _first_notify(service: ServiceLike) -> str | None:
    for char in service.characteristics:
        if _NOTIFYING.intersection(char.properties):
            return normalize_uuid(char.uuid)
    return None


__all__ = [
    "IDENTITY_DOMAIN",
    "IDENTITY_NONCE_UUID",
    "IDENTITY_SERVICE_UUID",
    "IDENTITY_SIGNATURE_UUID",
    "NONCE_SIZE",
    "PROFILES",
    "PROFILES_BY_NAME",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "STANDARD_SERVICES",
    "GattProfile",
    "PrintChannel",
    "decode_public_key",
    "identity_message",
    "normalize_uuid",
    "resolve_profile",
    "uuid16",
    "verify_identity",
]
