"""The fleet's own certificate authority: creating and loading it, issuing the broker's and the
clients' certificates, signing a device's request, and keeping a TLS directory current."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kernel.tls.files import TlsError, key_pem, load_cert, make_dir, read_bytes, write_file
from kernel.tls.identity import CLIENT_URI_PREFIX, check_client_id

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


CA_VALIDITY = dt.timedelta(days=3650)
#: Leaf certificates: 825 days, the longest validity common TLS clients accept.
LEAF_VALIDITY = dt.timedelta(days=825)
#: :func:`ensure_local_ca` re-issues a server certificate that expires sooner than this.
RENEW_BEFORE = dt.timedelta(days=30)
#: Loopback names every server certificate from :meth:`LocalCA.issue_server` carries by default.
LOOPBACK_HOSTNAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
#: Tolerance for clocks slightly behind the issuer's: certificates start this long before "now".
_BACKDATE = dt.timedelta(minutes=5)


class CertPair(NamedTuple):
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, certfile: Path, keyfile: Path) -> None:
        """Write both files (the key with mode 0600), each atomically; parent folders are created."""
        write_file(keyfile, self.key_pem, secret=True)
        write_file(certfile, self.cert_pem, secret=False)


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """The files of a TLS directory, as :func:`ensure_local_ca` leaves it."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TlsFiles:
        """The standard file names inside ``directory`` (whether or not they exist)."""
        return cls(
            directory=directory,
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
        )

    def client(self, client_id: str) -> tuple[Path, Path]:
        """``(<client id>.pem, <client id>.key)`` in the directory (see ``ensure_local_ca(clients=)``)."""
        check_client_id(client_id)
        return self.directory / f"{client_id}.pem", self.directory / f"{client_id}.key"


class LocalCA:
    """A small certificate authority for one fleet: issues the broker's and the clients' certificates.

    ``LocalCA.create()`` makes a new one (nothing is written until :meth:`save`); ``LocalCA.load(dir)``
    reads ``ca.pem`` and ``ca.key`` from a directory.
    """

    def __init__(self, *, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if cert.public_key() != key.public_key():
            raise TlsError("the CA certificate does not belong to the CA key")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise TlsError("the CA certificate is not a CA (basicConstraints CA=true is missing)")
        self._cert = cert
        self._key = key

    # -- creating and loading -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        common_name: str | None = None,
        *,
        validity: dt.timedelta = CA_VALIDITY,
        now: dt.datetime | None = None,
    ) -> LocalCA:
        """A new CA: ECDSA P-256, ``validity`` long (10 years), basicConstraints CA=true, keyCertSign.

        The default name, ``printfleet local CA <8 hex digits>``, differs from fleet to fleet, so a
        client trusting two fleets' CAs never confuses their certificates while building a chain.
        """
        if common_name is None:
            common_name = f"printfleet local CA {secrets.token_hex(4)}"
        key = ec.generate_private_key(ec.SECP256R1())
        start = (now or _utcnow()) - _BACKDATE
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "printfleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, directory: Path) -> LocalCA:
        """Read ``ca.pem`` and ``ca.key`` from ``directory``."""
        files = TlsFiles.in_directory(directory)
        return cls.from_files(files.ca_cert, files.ca_key)

    @classmethod
    def from_files(cls, certfile: Path, keyfile: Path) -> LocalCA:
        cert = load_cert(certfile)
        try:
            key = serialization.load_pem_private_key(read_bytes(keyfile), password=None)
        except (ValueError, TypeError) as exc:
            raise TlsError(f"{keyfile} is not an unencrypted PEM private key: {exc}", path=keyfile) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{keyfile} is not an ECDSA key", path=keyfile)
        return cls(cert=cert, key=key)

    def save(self, directory: Path) -> TlsFiles:
        """Write ``ca.pem`` (0644) and ``ca.key`` (0600) into ``directory`` (created 0700 if missing)."""
        files = TlsFiles.in_directory(directory)
        make_dir(directory)
        write_file(files.ca_key, key_pem(self._key), secret=True)
        write_file(files.ca_cert, self.cert_pem, secret=False)
        return files

    # -- what it offers -------------------------------------------------------------------------

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate: what every client and the broker trust (``ca.pem``)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issued(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` carries this CA's valid signature."""
        if cert.issuer != self._cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issue_server(
        self,
        hostnames: Sequence[str] = (),
        ips: Sequence[str] = (),
        *,
        loopback: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CertPair:
        """A broker certificate (serverAuth) for these DNS names and IP addresses.

        With ``loopback`` (the default) ``localhost``, ``127.0.0.1`` and ``::1`` are added. The
        validity is :data:`LEAF_VALIDITY` from now unless ``not_before``/``not_after`` say otherwise
        (tests use a past window).
        """
        dns = _unique([*(LOOPBACK_HOSTNAMES if loopback else ()), *hostnames])
        try:
            addresses = _unique(
                [ipaddress.ip_address(a) for a in (*(LOOPBACK_IPS if loopback else ()), *ips)]
            )
        except ValueError as exc:
            raise TlsError(f"not an IP address: {exc}") from exc
        if not dns and not addresses:
            raise TlsError("a server certificate needs at least one hostname or IP address")
        for name in dns:
            _check_dns_name(name)
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        san += [x509.IPAddress(a) for a in addresses]
        common_name = dns[0] if dns else str(addresses[0])
        return self._issue(
            common_name=common_name,
            san=san,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            key_encipherment=True,
            not_before=not_before,
            not_after=not_after,
        )

    def issue_client(
        self,
        common_name: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CertPair:
        """A client certificate (clientAuth) whose identity is the MQTT client id ``common_name``.

        The id is the subject CN and a SAN URI ``urn:printfleet:client:<id>`` (see the module's
        identity rule).
        """
        check_client_id(common_name)
        return self._issue(
            common_name=common_name,
            san=[x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + common_name)],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            key_encipherment=False,
            not_before=not_before,
            not_after=not_after,
        )

    def sign_client_request(
        self,
        csr_pem: bytes,
        common_name: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> bytes:
        """Sign a device's certificate request (see :func:`client_request`) for ``common_name``.

        The private key stays on the device. The subject the request asks for is ignored: the
        certificate names ``common_name``, the client id the caller has authenticated (for example
        by an enrolment token). Returns the certificate PEM.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise TlsError(f"not a PEM certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise TlsError("the certificate request's signature is invalid")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise TlsError("the certificate request must carry an ECDSA P-256 key")
        check_client_id(common_name)
        return self._build(
            public=public,
            common_name=common_name,
            san=[x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + common_name)],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            key_encipherment=False,
            not_before=not_before,
            not_after=not_after,
        )

    def _issue(
        self,
        *,
        common_name: str,
        san: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        key_encipherment: bool,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
    ) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        cert_pem = self._build(
            public=key.public_key(),
            common_name=common_name,
            san=san,
            usage=usage,
            key_encipherment=key_encipherment,
            not_before=not_before,
            not_after=not_after,
        )
        return CertPair(cert_pem=cert_pem, key_pem=key_pem(key))

    def _build(
        self,
        *,
        public: ec.EllipticCurvePublicKey,
        common_name: str,
        san: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        key_encipherment: bool,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
    ) -> bytes:
        start = not_before or (_utcnow() - _BACKDATE)
        end = not_after or (start + LEAF_VALIDITY)
        if end <= start:
            raise TlsError("not_after must be later than not_before")
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(digital_signature=True, key_encipherment=key_encipherment), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def client_request(common_name: str) -> CertPair:
    """A new device key and a certificate request for it: ``(csr_pem, key_pem)``.

    The device keeps ``key_pem`` (write it 0600) and sends ``csr_pem`` to the controller, which
    answers with :meth:`LocalCA.sign_client_request`.
    """
    check_client_id(common_name)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert_pem=csr.public_bytes(serialization.Encoding.PEM), key_pem=key_pem(key))


# ----------------------------------------------------------------------------------------------
# The TLS directory of `printfleet up --tls`.


def ensure_local_ca(
    directory: Path,
    *,
    hostnames: Sequence[str] = (),
    ips: Sequence[str] = (),
    clients: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Make ``directory`` hold ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key``; idempotent.

    * No ``ca.pem`` and no ``ca.key``: a new :class:`LocalCA` is created.
    * ``server.pem``/``server.key`` are (re-)issued by the CA when missing, not issued by this CA,
      expiring within :data:`RENEW_BEFORE`, or lacking one of ``hostnames``/``ips`` (plus the
      loopback names). Running it again is how the server certificate is rotated.
    * ``clients`` (e.g. the controller's own ``ctl-main`` for mutual TLS): ``<id>.pem``/``<id>.key``
      (see :meth:`TlsFiles.client`) are issued when missing, not issued by this CA or expiring soon.
    * A directory with ``ca.pem``, ``server.pem`` and ``server.key`` but no ``ca.key`` (a CA kept
      elsewhere) is used as it is, as long as nothing needs issuing.

    Raises :class:`TlsError` when the files are inconsistent (a key without its certificate, a server
    certificate that needs issuing but no CA key).
    """
    files = TlsFiles.in_directory(directory)
    make_dir(directory)
    has_cert, has_key = files.ca_cert.exists(), files.ca_key.exists()
    if has_key and not has_cert:
        raise TlsError(f"{files.ca_key} exists without {files.ca_cert}", path=files.ca_cert)
    if not has_cert:
        LocalCA.create(now=now).save(directory)
        logger.info("created a local certificate authority in %s", directory)
    when = now or _utcnow()
    todo: list[tuple[str | None, str]] = []
    reason = _server_renewal_reason(files, hostnames, ips, when)
    if reason is not None:
        todo.append((None, reason))
    for client_id in _unique(list(clients)):
        certfile, keyfile = files.client(client_id)
        reason = _leaf_renewal_reason(certfile, keyfile, files.ca_cert, when)
        if reason is not None:
            todo.append((client_id, reason))
    if not todo:
        return files
    if not files.ca_key.exists():
        what = ", ".join(f"{cid or 'server'} ({why})" for cid, why in todo)
        raise TlsError(f"{directory}: must issue {what} but {files.ca_key} is missing", path=files.ca_key)
    ca = LocalCA.load(directory)
    for subject, why in todo:
        if subject is None:
            ca.issue_server(hostnames, ips).write(files.server_cert, files.server_key)
        else:
            ca.issue_client(subject).write(*files.client(subject))
        logger.info("issued the %s certificate in %s (%s)", subject or "server", directory, why)
    return files


def _leaf_renewal_reason(certfile: Path, keyfile: Path, cafile: Path, now: dt.datetime) -> str | None:
    if not certfile.exists() or not keyfile.exists():
        return "missing"
    cert = load_cert(certfile)
    try:
        cert.verify_directly_issued_by(load_cert(cafile))
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by ca.pem"
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return "expires soon"
    return None


def _server_renewal_reason(
    files: TlsFiles, hostnames: Sequence[str], ips: Sequence[str], now: dt.datetime
) -> str | None:
    reason = _leaf_renewal_reason(files.server_cert, files.server_key, files.ca_cert, now)
    if reason is not None:
        return reason
    cert = load_cert(files.server_cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    want_dns = {n.lower() for n in (*LOOPBACK_HOSTNAMES, *hostnames)}
    try:
        want_ips = {ipaddress.ip_address(a) for a in (*LOOPBACK_IPS, *ips)}
    except ValueError as exc:
        raise TlsError(f"not an IP address: {exc}") from exc
    if not want_dns <= have_dns or not want_ips <= have_ips:
        return "new hostnames or addresses"
    return None


# ----------------------------------------------------------------------------------------------
# Helpers.


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _unique(items: Sequence[_T]) -> list[_T]:
    return list(dict.fromkeys(items))


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """keyUsage with every bit off except those named."""
    bits = "digital_signature content_commitment key_encipherment data_encipherment key_agreement"
    bits += " key_cert_sign crl_sign encipher_only decipher_only"
    return x509.KeyUsage(**{bit: allowed.get(bit, False) for bit in bits.split()})


def _check_dns_name(name: str) -> None:
    labels = name.rstrip(".").split(".")
    if not name or not all(0 < len(label) <= 63 for label in labels) or not name.isascii():
        raise TlsError(f"{name!r} is not a DNS name")
