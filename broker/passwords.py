"""Password hashes in mosquitto 2.0's ``$7$`` format, so one hash serves both brokers.

Format: ``$7$<iterations>$<base64 salt>$<base64 key>`` where the key is PBKDF2-HMAC-SHA512 of the
UTF-8 secret over a 12-byte random salt, 64 bytes long (standard base64 with padding, as written by
``mosquitto_passwd``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = ["generate_secret", "hash_password", "verify_password"]

_PREFIX = "7"
_SALT_BYTES = 12
_KEY_BYTES = 64
#: Refuse absurd work factors when verifying a hash that came from outside (a DoS guard).
_MAX_ITERATIONS = 10_000_000


def hash_password(secret: str, iterations: int = 1000) -> str:
    """Hash ``secret`` with a fresh salt; the result is accepted by mosquitto's ``password_file``."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {_MAX_ITERATIONS}, got {iterations}")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, _KEY_BYTES)
    return f"${_PREFIX}${iterations}${_b64(salt)}${_b64(key)}"


def verify_password(secret: str, hashed: str) -> bool:
    """True when ``secret`` matches ``hashed``. Constant-time; malformed hashes give False, never raise."""
    try:
        empty, prefix, iter_s, salt_s, key_s = hashed.split("$")
        if empty or prefix != _PREFIX or not iter_s.isdigit():
            return False
        iterations = int(iter_s)
        salt = base64.b64decode(salt_s, validate=True)
        expected = base64.b64decode(key_s, validate=True)
        if not 1 <= iterations <= _MAX_ITERATIONS or not salt or len(expected) != _KEY_BYTES:
            return False
        key = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, _KEY_BYTES)
    except (AttributeError, ValueError, binascii.Error, UnicodeError):
        return False
    return hmac.compare_digest(key, expected)


def generate_secret() -> str:
    """A new random password for a device or bridge (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
