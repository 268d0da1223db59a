"""The controller's Ed25519 signing keys, and public keys in their wire form (base64, raw)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kernel.wire.model import WireError


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """The controller's Ed25519 signing key with its id (for rotation)."""

    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        priv = Ed25519PrivateKey.generate()
        return cls(kid=key_id(priv.public_key()), private=priv)

    def public_b64(self) -> str:
        return public_key_b64(self.private.public_key())


def public_key_b64(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise WireError("invalid Ed25519 public key") from exc


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(base64.b64decode(public_key_b64(pub))).hexdigest()[:16]


def parse_public_keys(encoded: Mapping[str, str] | list[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id, from a list of base64 keys (the id is derived)."""
    values = list(encoded.values()) if isinstance(encoded, Mapping) else list(encoded)
    out: dict[str, Ed25519PublicKey] = {}
    for text in values:
        pub = public_key_from_b64(text)
        out[key_id(pub)] = pub
    return out
