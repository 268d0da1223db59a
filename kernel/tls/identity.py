"""Who a client certificate names: the identity rule of mutual TLS (see :mod:`kernel.tls`)."""

from __future__ import annotations

from typing import Any, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from kernel.tls.files import TlsError

#: SAN URI prefix naming the MQTT client id in a client certificate.
CLIENT_URI_PREFIX = "urn:printfleet:client:"


def check_client_id(common_name: str) -> None:
    """:class:`TlsError` unless ``common_name`` can be a certificate identity."""
    if not common_name or len(common_name) > 64 or not common_name.isascii():
        raise TlsError(f"client id {common_name!r} cannot be a certificate identity (1-64 ASCII)")
    if any(c.isspace() or c in "/:" for c in common_name):
        raise TlsError(f"client id {common_name!r} contains whitespace, '/' or ':'")


class SSLPeer(Protocol):
    """What :func:`peer_identity` needs: ``ssl.SSLObject`` and ``ssl.SSLSocket`` both qualify."""

    def getpeercert(self, binary_form: bool = False) -> Any: ...


def peer_identity(ssl_object: SSLPeer | None) -> str | None:
    """The client id of a connection's *verified* client certificate, or None.

    None when there is no TLS, no certificate, the certificate was not verified (the context did not
    require one) or it breaks the identity rule (see the module docstring).
    """
    if ssl_object is None:
        return None
    # The dict form is empty unless the certificate was verified by the handshake.
    if not ssl_object.getpeercert():
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return certificate_identity(x509.load_der_x509_certificate(der))


def certificate_identity(cert: x509.Certificate) -> str | None:
    """The identity a client certificate claims (the rule in the module docstring), or None."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        return None
    common_name = names[0].value
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return common_name
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(CLIENT_URI_PREFIX)
    ]
    if any(u != CLIENT_URI_PREFIX + common_name for u in uris):
        return None
    return common_name
