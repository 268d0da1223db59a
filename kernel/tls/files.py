"""The TLS package's error, and the file handling every part of it shares: atomic writes (secrets
never readable by others), reads and certificate loads that fail with :class:`TlsError`."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kernel.errors import PrintfleetError


class TlsError(PrintfleetError):
    """A certificate or key could not be created, loaded or used; ``path`` names the file if any."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc}", path=path) from exc


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(read_bytes(path))
    except ValueError as exc:
        raise TlsError(f"{path} is not a PEM certificate: {exc}", path=path) from exc


def make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TlsError(f"cannot create {directory}: {exc}", path=directory) from exc


def write_file(path: Path, data: bytes, *, secret: bool) -> None:
    """Write atomically; a secret is never readable by others, not even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o600 if secret else 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise TlsError(f"cannot write {path}: {exc}", path=path) from exc
