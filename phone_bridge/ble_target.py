"""What the bridge prints to, as the cloud describes it (:class:`PrinterTarget`), what the identity
challenge established (:class:`IdentityOutcome`), and a BLE connection's lifecycle states."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal, get_args

from kernel.gatt import MAX_UNIQUE_ID_BYTES, PROFILES_BY_NAME, decode_public_key

IdentityPolicy = Literal["required", "preferred", "off"]
_POLICIES: Final = frozenset(get_args(IdentityPolicy))


class IdentityOutcome(StrEnum):
    """What the identity challenge established (a failed verification is an :class:`ImpostorError`)."""

    VERIFIED = "verified"  # signed the fresh nonce with the key the cloud knows
    UNVERIFIED = "unverified"  # no identity service on the printer, or no public key known
    SKIPPED = "skipped"  # policy "off"


@dataclass(frozen=True, kw_only=True)
class PrinterTarget:
    """The printer to print to, as the cloud describes it."""

    name: str
    """The printer's name in printfleet (for errors and logs)."""
    unique_id: str
    """The printer's unique id: what the identity challenge signs."""
    ble_address: str | None = None
    ble_name: str | None = None
    """Find by advertised name (plus print service) when no address is given (macOS/iOS hide them)."""
    ble_profile: str | None = None
    """A name from :data:`~kernel.gatt.PROFILES` to prefer; ``None``: the order and the fallback."""
    public_key: str | None = None
    """The printer's Ed25519 public key, base64 of the raw 32 bytes."""
    identity: IdentityPolicy = "preferred"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if not 1 <= len(self.unique_id.encode("utf-8")) <= MAX_UNIQUE_ID_BYTES:
            raise ValueError(f"unique_id must be 1..{MAX_UNIQUE_ID_BYTES} bytes of UTF-8")
        if not self.ble_address and not self.ble_name:
            raise ValueError("give ble_address or ble_name (or both)")
        if self.ble_profile is not None and self.ble_profile not in PROFILES_BY_NAME:
            raise ValueError(
                f"unknown ble_profile {self.ble_profile!r}; known: {', '.join(PROFILES_BY_NAME)}"
            )
        if self.public_key is not None:
            decode_public_key(self.public_key)  # raises ValueError on a malformed key
        if self.identity not in _POLICIES:
            raise ValueError(f"identity must be one of {', '.join(sorted(_POLICIES))}, got {self.identity!r}")


class ConnectionState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    WRITING = "writing"
    LOST = "lost"
    CLOSING = "closing"
    CLOSED = "closed"


_S = ConnectionState
#: The allowed lifecycle transitions.
TRANSITIONS: Final[dict[ConnectionState, frozenset[ConnectionState]]] = {
    _S.IDLE: frozenset({_S.CONNECTING}),
    _S.CONNECTING: frozenset({_S.READY, _S.CLOSED}),
    _S.READY: frozenset({_S.WRITING, _S.LOST, _S.CLOSING}),
    _S.WRITING: frozenset({_S.READY, _S.LOST, _S.CLOSING}),
    _S.LOST: frozenset({_S.CLOSING}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}
