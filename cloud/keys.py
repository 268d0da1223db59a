"""The controller's signing keys: one active key, and older keys still trusted by some peers.

Rotation never cuts a device off: ``rotate()`` makes a new active key, and every peer is sent the
new key list (``keys.update``) signed by a key it already trusts. A peer reports the key ids it
trusts in each heartbeat, and the controller signs for it with the newest of those. ``retire()``
drops an old key once no peer needs it (or when the operator decides).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.config import DataDir, write_private
from cloud.errors import ControllerError, NotFound
from kernel import wire

log = logging.getLogger(__name__)


def _load(path: Path) -> wire.SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ControllerError(f"{path} is not an Ed25519 private key")
    return wire.SigningKey(kid=wire.key_id(key.public_key()), private=key)


def _save(path: Path, key: wire.SigningKey) -> None:
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem.decode())


class Keyring:
    def __init__(self, data_dir: DataDir) -> None:
        self._active_path = data_dir.signing_key_path
        self._older_dir = self._active_path.parent / "older"
        if not self._active_path.exists():
            _save(self._active_path, wire.SigningKey.generate())
        self.active = _load(self._active_path)
        self.older: list[wire.SigningKey] = [
            _load(p) for p in sorted(self._older_dir.glob("*.pem"), key=lambda p: p.stat().st_mtime)
        ]

    @property
    def keys(self) -> list[wire.SigningKey]:
        """Every key a peer may still trust, newest first."""
        return [self.active, *reversed(self.older)]

    def public_keys(self) -> list[str]:
        return [k.public_b64() for k in self.keys]

    def for_peer(self, trusted: Iterable[str] | None) -> wire.SigningKey:
        """The newest key the peer trusts (the active key when the peer's trust is not known)."""
        if trusted is None:
            return self.active
        kids = set(trusted)
        for key in self.keys:
            if key.kid in kids:
                return key
        return self.active

    def rotate(self) -> wire.SigningKey:
        self._older_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        old = self.active
        _save(self._older_dir / f"{old.kid}.pem", old)
        new = wire.SigningKey.generate()
        _save(self._active_path, new)
        self.older.append(old)
        self.active = new
        log.info("signing key rotated: %s -> %s", old.kid, new.kid)
        return new

    def retire(self, kid: str) -> None:
        if kid == self.active.kid:
            raise ControllerError("the active key cannot be retired; rotate first", status=409)
        for key in self.older:
            if key.kid == kid:
                self.older.remove(key)
                (self._older_dir / f"{kid}.pem").unlink(missing_ok=True)
                return
        raise NotFound(f"no signing key {kid!r}")

    def describe(self, peers_trust: Sequence[tuple[str, Sequence[str] | None]]) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for key in self.keys:
            out.append(
                {
                    "kid": key.kid,
                    "active": key is self.active,
                    "public_key": key.public_b64(),
                    "devices_trusting": sorted(
                        name for name, kids in peers_trust if kids and key.kid in kids
                    ),
                }
            )
        return out
