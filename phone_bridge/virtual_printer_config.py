"""What a virtual BLE printer looks like and how it behaves (:class:`VirtualPrinterConfig`), how an
impostor answers the identity challenge, and the public key in the form printfleet stores it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import StrEnum

from bumble import hci
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kernel.gatt import PROFILES, GattProfile


class Impostor(StrEnum):
    """How an impostor (right name and profile, not the right printer) handles the challenge."""

    WRONG_KEY = "wrong-key"  # answers, signed with a key of its own
    NO_KEY = "no-key"  # has no identity service


@dataclass(frozen=True, kw_only=True)
class VirtualPrinterConfig:
    """What the virtual printer looks like and how it behaves."""

    name: str = "MPT-II"
    profile: GattProfile = PROFILES[0]
    address: str = "F0:C0:00:00:00:01"
    """Random static address (the two top bits set)."""
    buffer_size: int = 512
    drain_bytes_per_s: float = 8000.0
    max_mtu: int = 517
    disconnect_after_bytes: int | None = None
    """Drop the connection once this many bytes of print data arrived (the rest is lost)."""
    drop_first_connections: int = 0
    """Hang up at once on this many connections before accepting one (a flaky link, a busy module)."""
    write_with_response: bool = True
    """The write characteristic has the ``write`` property; without it write requests get the ATT
    error *Write Not Permitted*."""
    write_without_response: bool = True
    """The write characteristic has ``write-without-response``; without it write commands are ignored
    (a write command has no reply, so the sender never learns)."""
    unique_id: str = "printer-1"
    identity_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    """Answers the identity challenge with this key; ``None``: no identity service."""
    impostor: Impostor | None = None
    advertising_interval_ms: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.name.encode()) <= 20:
            raise ValueError("name must be 1..20 bytes of UTF-8 (it must fit the advertisement)")
        if self.buffer_size < 16:
            raise ValueError("buffer_size must be at least 16")
        if self.drain_bytes_per_s <= 0:
            raise ValueError("drain_bytes_per_s must be positive")
        if not 23 <= self.max_mtu <= 517:
            raise ValueError("max_mtu must be within 23..517")
        if self.disconnect_after_bytes is not None and self.disconnect_after_bytes < 0:
            raise ValueError("disconnect_after_bytes must not be negative")
        if self.drop_first_connections < 0:
            raise ValueError("drop_first_connections must not be negative")
        if not (self.write_with_response or self.write_without_response):
            raise ValueError("the write characteristic needs write, write-without-response or both")
        hci.Address(self.address)  # raises on a malformed address


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The public half as printfleet stores it: base64 of the raw 32 bytes."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
