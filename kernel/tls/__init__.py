"""TLS for the fleet's MQTT links: a local certificate authority, its certificates, and SSL contexts.

Pure library code on top of :mod:`cryptography.x509`; nothing happens at import time.

::

    files = ensure_local_ca(data_dir / "tls")            # ca.pem, ca.key, server.pem, server.key
    ListenerSpec(port=8883, certfile=files.server_cert, keyfile=files.server_key,
                 cafile=files.ca_cert, require_client_cert=True)
    ca = LocalCA.load(data_dir / "tls")
    ca.issue_client("dev-kiosk-1").write(cert_path, key_path)   # the agent's client certificate
    aiomqtt.Client(..., tls_context=client_context(ca_path, cert_path, key_path))

Certificate identity rule (mutual TLS): a client certificate names exactly one MQTT client id. It is
the subject's common name (CN), which must be a single value; certificates from :class:`LocalCA` also
carry it as a SAN URI ``urn:printfleet:client:<client id>``, and when a certificate has such URIs
they must all name the CN, or the certificate identifies nobody. The broker admits a connection only
when this identity equals the MQTT username (which is also the client id), and the password is valid.

Keys are ECDSA P-256. Private keys are written with mode 0600, certificates 0644, atomically.

Modules: :mod:`.contexts` (SSL contexts for the broker and its clients), :mod:`.ca` (the fleet CA:
creating it, issuing and renewing certificates, a TLS directory), :mod:`.identity` (which client id a
certificate names), :mod:`.files` (:class:`TlsError` and atomic file writes). Use it as
``from kernel import tls`` then ``tls.client_context(...)``: every public name is here.

May import: the standard library, cryptography and :mod:`kernel.errors`.
"""

from __future__ import annotations

from kernel.tls.ca import (
    CA_VALIDITY,
    LEAF_VALIDITY,
    LOOPBACK_HOSTNAMES,
    LOOPBACK_IPS,
    RENEW_BEFORE,
    CertPair,
    LocalCA,
    TlsFiles,
    client_request,
    ensure_local_ca,
)
from kernel.tls.contexts import client_context, client_context_from_pem, server_context
from kernel.tls.files import TlsError
from kernel.tls.identity import CLIENT_URI_PREFIX, SSLPeer, certificate_identity, peer_identity

__all__ = [
    "CA_VALIDITY",
    "CLIENT_URI_PREFIX",
    "LEAF_VALIDITY",
    "LOOPBACK_HOSTNAMES",
    "LOOPBACK_IPS",
    "RENEW_BEFORE",
    "CertPair",
    "LocalCA",
    "SSLPeer",
    "TlsError",
    "TlsFiles",
    "certificate_identity",
    "client_context",
    "client_context_from_pem",
    "client_request",
    "ensure_local_ca",
    "peer_identity",
    "server_context",
]
