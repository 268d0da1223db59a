"""SSL contexts for the fleet's MQTT links: the broker's side and a client's side."""

from __future__ import annotations

import ssl
from pathlib import Path

from kernel.tls.files import TlsError, write_file


def server_context(
    certfile: Path, keyfile: Path, cafile: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """The broker's side: TLS 1.2 minimum; with ``require_client_cert``, mutual TLS against ``cafile``.

    A client without a certificate, or with one that does not chain to ``cafile``, is expired,
    not yet valid or not for clientAuth, then fails the handshake.
    """
    if require_client_cert and cafile is None:
        raise TlsError("require_client_cert needs a cafile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile)
        if cafile is not None:
            ctx.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS files {certfile}, {keyfile}, {cafile}: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def client_context(cafile: Path, certfile: Path | None = None, keyfile: Path | None = None) -> ssl.SSLContext:
    """A client's side: TLS 1.2 minimum, the broker verified against ``cafile`` only, hostname checked.

    ``certfile``/``keyfile`` add a client certificate (mutual TLS). Pass the result as aiomqtt's
    ``tls_context=``.
    """
    if (certfile is None) != (keyfile is None):
        raise TlsError("a client certificate needs both certfile and keyfile")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if certfile is not None and keyfile is not None:
            ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS files {cafile}, {certfile}, {keyfile}: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context_from_pem(
    ca_pem: str, cert_pem: str | None = None, key_pem: str | None = None
) -> ssl.SSLContext:
    """:func:`client_context` from PEM text (a bridge keeps its config in one file).

    The client key only touches disk in a private temporary directory, removed at once.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="printfleet-tls-") as tmp:
        directory = Path(tmp)
        ca = directory / "ca.pem"
        write_file(ca, ca_pem.encode(), secret=False)
        cert = key = None
        if cert_pem is not None and key_pem is not None:
            cert, key = directory / "client.pem", directory / "client.key"
            write_file(cert, cert_pem.encode(), secret=False)
            write_file(key, key_pem.encode(), secret=True)
        return client_context(ca, cert, key)
