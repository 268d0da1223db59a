"""TLS with real certificates from kernel.tls.LocalCA: the library, the embedded broker, mosquitto.

Broker tests run against both brokers (``tls_broker``); the mosquitto ones carry the ``mosquitto``
marker. Messages are exchanged with aiomqtt. Failed handshakes are checked with the raw client
:func:`broker.testing.connack_code` instead, for two reasons: paho 2.2 leaks the SSL socket of a
failed handshake (an unraisable ResourceWarning at some later garbage collection), and with TLS 1.3
a server refuses the client certificate only after the client's handshake finished, which aiomqtt
reports as a connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import BrokerError, EmbeddedBroker, ListenerSpec, StaticCredentials, export_mosquitto
from broker.mosquitto import MosquittoTls
from broker.testing import Account, MessageLog, MosquittoProcess, connack_code, make_account
from kernel import tls
from kernel.tls import CertPair, LocalCA, TlsError, TlsFiles
from kernel.wire import Channel, Peer, Role
from tests.conftest import require_mosquitto

TIMEOUT = 5.0
NOT_AUTHORIZED = 5
BAD_USERNAME_PASSWORD = 4

CTL = make_account(Peer(role=Role.CONTROLLER, name="main"))
DEV_A = make_account(Peer(role=Role.DEVICE, name="a"))
DEV_B = make_account(Peer(role=Role.DEVICE, name="b"))
ACCOUNTS = (CTL, DEV_A, DEV_B)
PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Certificates (made once per module: key generation is cheap, but there are a dozen of them).


@dataclass(frozen=True, kw_only=True)
class Pki:
    files: TlsFiles  # the CA and the broker's certificate, as `printfleet up --tls` makes them
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def client(self, name: str) -> ssl.SSLContext:
        """A client context trusting the fleet CA, with the client certificate ``name`` (or none)."""
        if not name:
            return tls.client_context(self.files.ca_cert)
        return tls.client_context(self.files.ca_cert, self.path(f"{name}.pem"), self.path(f"{name}.key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    files = tls.ensure_local_ca(root / "tls")
    ca = LocalCA.load(files.directory)
    for cid in ("ctl-main", "dev-a", "dev-b"):
        ca.issue_client(cid).write(root / f"{cid}.pem", root / f"{cid}.key")
    ca.issue_client("dev-a", not_before=PAST, not_after=PAST + dt.timedelta(days=30)).write(
        root / "expired.pem", root / "expired.key"
    )
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    ca.issue_client("dev-a", not_before=future, not_after=future + dt.timedelta(days=30)).write(
        root / "future.pem", root / "future.key"
    )
    # A server certificate used as a client certificate (serverAuth only): refused by its EKU.
    ca.issue_server(["localhost"]).write(root / "server-as-client.pem", root / "server-as-client.key")
    # Server certificates the client must refuse.
    ca.issue_server(["printers.example.com"], loopback=False).write(
        root / "elsewhere.pem", root / "elsewhere.key"
    )
    ca.issue_server(not_before=PAST, not_after=PAST + dt.timedelta(days=30)).write(
        root / "server-expired.pem", root / "server-expired.key"
    )
    # Another CA, and a dev-a certificate from it.
    other = LocalCA.create("someone else's CA")
    other.save(root / "other")
    other.issue_client("dev-a").write(root / "foreign.pem", root / "foreign.key")
    return Pki(files=files, root=root)


# ----------------------------------------------------------------------------------------------
# Brokers with a TLS listener.


@dataclass(frozen=True, kw_only=True)
class TlsBroker:
    kind: str
    port: int


BROKERS = ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]


@contextlib.asynccontextmanager
async def tls_broker(
    kind: str, workdir: Path, pki: Pki, *, mtls: bool, server: str = ""
) -> AsyncIterator[TlsBroker]:
    """``kind`` with only a TLS listener; ``server`` names another server certificate of ``pki``."""
    certfile = pki.path(f"{server}.pem") if server else pki.files.server_cert
    keyfile = pki.path(f"{server}.key") if server else pki.files.server_key
    creds = [acc.credential for acc in ACCOUNTS]
    if kind == "embedded":
        spec = ListenerSpec(
            port=0, certfile=certfile, keyfile=keyfile, cafile=pki.files.ca_cert, require_client_cert=mtls
        )
        async with EmbeddedBroker(
            listeners=[spec], credentials=StaticCredentials.of(*creds), connect_timeout=2.0
        ) as broker:
            yield TlsBroker(kind=kind, port=broker.port)
        return
    require_mosquitto()
    mosq_tls = MosquittoTls(
        cafile=pki.files.ca_cert, certfile=certfile, keyfile=keyfile, require_certificate=mtls
    )
    async with MosquittoProcess(workdir, creds, tls=mosq_tls, plain_listener=False) as mosq:
        yield TlsBroker(kind=kind, port=mosq.tls_port)


async def exchange(port: int, ctl_tls: ssl.SSLContext, dev_tls: ssl.SSLContext) -> None:
    """dev-a publishes on its up topic; the controller receives it. Both over TLS."""
    topic = DEV_A.peer.topic(Channel.UP)
    async with (
        CTL.client(port, tls_context=ctl_tls) as ctl,
        MessageLog(ctl) as log,
        DEV_A.client(port, tls_context=dev_tls) as dev,
    ):
        await ctl.subscribe(topic, qos=1)
        await dev.publish(topic, b"over tls", qos=1)
        await log.wait_for(topic, b"over tls", within=TIMEOUT)


async def refused_before_connack(port: int, account: Account, context: ssl.SSLContext) -> OSError:
    """The TLS layer must end this client's connection: an SSL error or a closed connection."""
    with pytest.raises((ssl.SSLError, ConnectionError)) as excinfo:
        await connack_code(
            port,
            client_id=account.client_id,
            username=account.client_id,
            password=account.secret,
            ssl_context=context,
        )
    return excinfo.value


# ----------------------------------------------------------------------------------------------
# Server authentication.


@pytest.mark.parametrize("kind", BROKERS)
async def test_clients_exchange_a_message_over_tls(kind: str, pki: Pki, tmp_path: Path) -> None:
    async with tls_broker(kind, tmp_path, pki, mtls=False) as b:
        await exchange(b.port, pki.client(""), pki.client(""))


@pytest.mark.parametrize("kind", BROKERS)
async def test_tls_1_2_client_is_accepted(kind: str, pki: Pki, tmp_path: Path) -> None:
    ctx = pki.client("")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_broker(kind, tmp_path, pki, mtls=False) as b:
        await exchange(b.port, ctx, pki.client(""))


@pytest.mark.parametrize("kind", BROKERS)
async def test_client_not_trusting_the_ca_fails_verification(kind: str, pki: Pki, tmp_path: Path) -> None:
    stranger = tls.client_context(pki.path("other/ca.pem"))
    async with tls_broker(kind, tmp_path, pki, mtls=False) as b:
        error = await refused_before_connack(b.port, DEV_A, stranger)
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert "certificate verify failed" in str(error)


@pytest.mark.parametrize("kind", BROKERS)
async def test_wrong_hostname_fails_verification(kind: str, pki: Pki, tmp_path: Path) -> None:
    """The certificate names only printers.example.com; the client dials 127.0.0.1 or localhost."""
    async with tls_broker(kind, tmp_path, pki, mtls=False, server="elsewhere") as b:
        error = await refused_before_connack(b.port, DEV_A, pki.client(""))
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert "IP address mismatch" in str(error)
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await connack_code(b.port, client_id="dev-a", host="localhost", ssl_context=pki.client(""))


@pytest.mark.parametrize("kind", BROKERS)
async def test_expired_server_certificate_fails_verification(kind: str, pki: Pki, tmp_path: Path) -> None:
    async with tls_broker(kind, tmp_path, pki, mtls=False, server="server-expired") as b:
        error = await refused_before_connack(b.port, DEV_A, pki.client(""))
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert "certificate has expired" in str(error)


@pytest.mark.parametrize("kind", BROKERS)
async def test_tls_keeps_password_authentication(kind: str, pki: Pki, tmp_path: Path) -> None:
    async with tls_broker(kind, tmp_path, pki, mtls=False) as b:
        code = await connack_code(
            b.port, client_id="dev-a", username="dev-a", password="wrong", ssl_context=pki.client("")
        )
        assert code in (BAD_USERNAME_PASSWORD, NOT_AUTHORIZED)  # mosquitto 2.0 answers 5 for both
        assert await connack_code(b.port, client_id="dev-a", ssl_context=pki.client("")) != 0


# ----------------------------------------------------------------------------------------------
# Mutual TLS.


@pytest.mark.parametrize("kind", BROKERS)
async def test_mtls_right_certificates_exchange_a_message(kind: str, pki: Pki, tmp_path: Path) -> None:
    async with tls_broker(kind, tmp_path, pki, mtls=True) as b:
        await exchange(b.port, pki.client("ctl-main"), pki.client("dev-a"))


REFUSED_CLIENT_CERTS = {
    "": "handshake failure",  # none at all
    "expired": "certificate expired",
    "future": "bad certificate",  # not yet valid
    "foreign": "unknown ca",  # dev-a's, from another CA
    "server-as-client": "unsupported certificate",  # serverAuth only, no clientAuth
}


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("cert", list(REFUSED_CLIENT_CERTS))
@pytest.mark.parametrize("kind", BROKERS)
async def test_mtls_refuses_bad_client_certificates_at_the_handshake(
    kind: str, cert: str, version: str, pki: Pki, tmp_path: Path
) -> None:
    """Refused before any MQTT packet is read: no CONNACK, the connection ends in the TLS layer.

    With TLS 1.2 the client's own handshake fails. mosquitto sends a TLS alert saying why; the
    embedded broker (asyncio's TLS) closes the connection without an alert. With TLS 1.3 the
    client's handshake completes first and its CONNECT meets the alert or a closed connection.
    """
    ctx = pki.client(cert)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion[version]
    async with tls_broker(kind, tmp_path, pki, mtls=True) as b:
        error = await refused_before_connack(b.port, DEV_A, ctx)
    if kind == "mosquitto" and version == "TLSv1_2":
        assert REFUSED_CLIENT_CERTS[cert] in str(error).lower()
    elif version == "TLSv1_2":
        assert isinstance(error, ssl.SSLError | ConnectionError)


@pytest.mark.parametrize("kind", BROKERS)
async def test_mtls_still_needs_the_password(kind: str, pki: Pki, tmp_path: Path) -> None:
    async with tls_broker(kind, tmp_path, pki, mtls=True) as b:
        code = await connack_code(
            b.port, client_id="dev-a", username="dev-a", password="wrong", ssl_context=pki.client("dev-a")
        )
        assert code in (BAD_USERNAME_PASSWORD, NOT_AUTHORIZED)


async def test_embedded_refuses_a_certificate_of_another_client(pki: Pki, tmp_path: Path) -> None:
    """dev-a's certificate with dev-b's valid username and password: CONNACK not authorized."""
    async with tls_broker("embedded", tmp_path, pki, mtls=True) as b:
        with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
            async with DEV_B.client(b.port, tls_context=pki.client("dev-a")):
                pass
        # The same, checked on the CONNACK code; and dev-b with its own certificate is fine.
        code = await connack_code(
            b.port,
            client_id="dev-b",
            username="dev-b",
            password=DEV_B.secret,
            ssl_context=pki.client("dev-a"),
        )
        assert code == NOT_AUTHORIZED
        async with DEV_B.client(b.port, tls_context=pki.client("dev-b")):
            pass


@pytest.mark.mosquitto
async def test_mosquitto_admits_a_certificate_of_another_client(pki: Pki, tmp_path: Path) -> None:
    """Documented limitation: mosquitto 2.0 checks the chain and the password, not CN == username.

    (``use_identity_as_username true`` would bind them but then ignores the password entirely.)
    The client id is still forced to the username, and the ACLs are dev-b's.
    """
    async with tls_broker("mosquitto", tmp_path, pki, mtls=True) as b:
        code = await connack_code(
            b.port,
            client_id="dev-b",
            username="dev-b",
            password=DEV_B.secret,
            ssl_context=pki.client("dev-a"),
        )
        assert code == 0


# ----------------------------------------------------------------------------------------------
# The library: the CA, its certificates, the TLS directory.


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E:
    return cert.extensions.get_extension_for_class(kind).value


def test_local_ca_certificate(tmp_path: Path) -> None:
    ca = LocalCA.create()
    files = ca.save(tmp_path / "ca")
    cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert _ext(cert, x509.BasicConstraints).ca
    assert _ext(cert, x509.KeyUsage).key_cert_sign
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < validity < dt.timedelta(days=3651)
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    assert LocalCA.load(tmp_path / "ca").cert_pem == ca.cert_pem


def test_server_certificate(pki: Pki) -> None:
    cert = x509.load_pem_x509_certificate(pki.files.server_cert.read_bytes())
    san = _ext(cert, x509.SubjectAlternativeName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _ext(cert, x509.BasicConstraints).ca
    assert stat.S_IMODE(pki.files.server_key.stat().st_mode) == 0o600
    assert LocalCA.load(pki.files.directory).issued(cert)


def test_client_certificate_names_the_client_id(pki: Pki) -> None:
    cert = x509.load_pem_x509_certificate(pki.path("dev-a.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-a"
    uris = _ext(cert, x509.SubjectAlternativeName).get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:printfleet:client:dev-a"]
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert tls.certificate_identity(cert) == "dev-a"
    assert stat.S_IMODE(pki.path("dev-a.key").stat().st_mode) == 0o600


def _self_signed(common_names: list[str], uris: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(PAST)
        .not_valid_after(PAST + dt.timedelta(days=1))
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("common_names", "uris", "identity"),
    [
        (["dev-a"], [], "dev-a"),
        (["dev-a"], ["urn:printfleet:client:dev-a", "https://example.com/"], "dev-a"),
        (["dev-a"], ["urn:printfleet:client:dev-b"], None),  # the URI names someone else
        (["dev-a", "dev-b"], [], None),  # two CNs
        ([], ["urn:printfleet:client:dev-a"], None),  # no CN
    ],
)
def test_certificate_identity_rule(common_names: list[str], uris: list[str], identity: str | None) -> None:
    assert tls.certificate_identity(_self_signed(common_names, uris)) == identity


def test_peer_identity_without_a_verified_certificate() -> None:
    class Unverified:
        def getpeercert(self, binary_form: bool = False) -> object:
            return b"\x30\x00" if binary_form else {}

    assert tls.peer_identity(None) is None
    assert tls.peer_identity(Unverified()) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"common_name": ""}, "1-64 ASCII"),
        ({"common_name": "dev a"}, "whitespace"),
        ({"common_name": "x" * 65}, "1-64 ASCII"),
        ({"common_name": "dev-a", "not_before": PAST, "not_after": PAST}, "later than"),
    ],
)
def test_issue_client_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TlsError, match=message):
        LocalCA.create().issue_client(**kwargs)  # type: ignore[arg-type]


def test_issue_server_rejects_bad_input() -> None:
    ca = LocalCA.create()
    with pytest.raises(TlsError, match="not an IP address"):
        ca.issue_server(ips=["printers.example.com"])
    with pytest.raises(TlsError, match="at least one"):
        ca.issue_server(loopback=False)
    with pytest.raises(TlsError, match="not a DNS name"):
        ca.issue_server(["bad..name"])


def test_ensure_local_ca_is_idempotent(tmp_path: Path) -> None:
    files = tls.ensure_local_ca(tmp_path / "tls")
    before = {p: p.read_bytes() for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key)}
    assert tls.ensure_local_ca(tmp_path / "tls") == files
    assert {p: p.read_bytes() for p in before} == before
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700


def test_ensure_local_ca_reissues_the_server_certificate_only(tmp_path: Path) -> None:
    """Rotation: a missing, expiring or too narrow server certificate is re-issued by the same CA."""
    files = tls.ensure_local_ca(tmp_path / "tls")
    ca_pem = files.ca_cert.read_bytes()
    server_pem = files.server_cert.read_bytes()

    tls.ensure_local_ca(tmp_path / "tls", hostnames=["printers.example.com"], ips=["192.0.2.7"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = _ext(cert, x509.SubjectAlternativeName)
    assert "printers.example.com" in san.get_values_for_type(x509.DNSName)
    assert "192.0.2.7" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert files.server_cert.read_bytes() != server_pem

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=824)
    renewed = tls.ensure_local_ca(tmp_path / "tls", now=soon)
    assert x509.load_pem_x509_certificate(renewed.server_cert.read_bytes()).not_valid_after_utc > soon

    files.server_key.unlink()
    tls.ensure_local_ca(tmp_path / "tls")
    assert files.server_key.exists()
    assert files.ca_cert.read_bytes() == ca_pem


def test_ensure_local_ca_reissues_a_server_certificate_of_another_ca(pki: Pki, tmp_path: Path) -> None:
    files = tls.ensure_local_ca(tmp_path / "tls")
    files.server_cert.write_bytes(pki.files.server_cert.read_bytes())
    tls.ensure_local_ca(tmp_path / "tls")
    assert LocalCA.load(files.directory).issued(
        x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    )


def test_ensure_local_ca_uses_a_directory_without_the_ca_key(tmp_path: Path) -> None:
    """An operator's CA kept elsewhere: ca.pem and a valid server certificate are enough."""
    files = tls.ensure_local_ca(tmp_path / "tls")
    files.ca_key.unlink()
    assert tls.ensure_local_ca(tmp_path / "tls") == files
    with pytest.raises(TlsError, match=r"ca\.key is missing"):
        tls.ensure_local_ca(tmp_path / "tls", hostnames=["new.example.com"])


def test_ensure_local_ca_refuses_a_key_without_its_certificate(tmp_path: Path) -> None:
    files = tls.ensure_local_ca(tmp_path / "tls")
    files.ca_cert.unlink()
    with pytest.raises(TlsError, match="exists without"):
        tls.ensure_local_ca(tmp_path / "tls")


def test_load_refuses_mismatched_or_missing_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="cannot read"):
        LocalCA.load(tmp_path)
    with pytest.raises(TlsError, match="does not belong"):
        LocalCA.from_files(pki.files.ca_cert, pki.path("other/ca.key"))
    with pytest.raises(TlsError, match="not a CA"):
        LocalCA.from_files(pki.path("dev-a.pem"), pki.path("dev-a.key"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        LocalCA.from_files(tmp_path / "junk.pem", pki.files.ca_key)


def test_cert_pair_write_modes(tmp_path: Path) -> None:
    pair = LocalCA.create().issue_client("dev-x")
    pair.write(tmp_path / "sub" / "c.pem", tmp_path / "sub" / "c.key")
    assert stat.S_IMODE((tmp_path / "sub" / "c.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "sub" / "c.pem").stat().st_mode) == 0o644
    assert isinstance(pair, CertPair)
    cert_pem, key_pem = pair
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_contexts(pki: Pki) -> None:
    server = tls.server_context(pki.files.server_cert, pki.files.server_key)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2
    assert server.verify_mode is ssl.CERT_NONE
    mutual = tls.server_context(pki.files.server_cert, pki.files.server_key, pki.files.ca_cert, True)
    assert mutual.verify_mode is ssl.CERT_REQUIRED
    client = pki.client("dev-a")
    assert client.minimum_version is ssl.TLSVersion.TLSv1_2
    assert client.check_hostname
    assert client.verify_mode is ssl.CERT_REQUIRED


def test_context_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="needs a cafile"):
        tls.server_context(pki.files.server_cert, pki.files.server_key, require_client_cert=True)
    with pytest.raises(TlsError, match="cannot load"):
        tls.server_context(pki.files.server_cert, pki.path("dev-a.key"))  # key of another certificate
    with pytest.raises(TlsError, match="both certfile and keyfile"):
        tls.client_context(pki.files.ca_cert, pki.path("dev-a.pem"))
    with pytest.raises(TlsError, match="cannot load"):
        tls.client_context(tmp_path / "missing.pem")


# ----------------------------------------------------------------------------------------------
# Broker configuration errors.


async def test_embedded_broker_with_unreadable_key_does_not_start(pki: Pki, tmp_path: Path) -> None:
    spec = ListenerSpec(port=0, certfile=pki.files.server_cert, keyfile=tmp_path / "missing.key")
    broker = EmbeddedBroker(listeners=[spec], credentials=StaticCredentials())
    with pytest.raises(BrokerError, match=r"missing\.key"):
        await broker.start()


def test_mosquitto_export_with_tls_only(pki: Pki, tmp_path: Path) -> None:
    mosq_tls = MosquittoTls(
        cafile=pki.files.ca_cert,
        certfile=pki.files.server_cert,
        keyfile=pki.files.server_key,
        port=8883,
        require_certificate=True,
    )
    files = export_mosquitto(tmp_path, [DEV_A.credential], tls=mosq_tls, plain_listener=False)
    conf = files.conf.read_text().splitlines()
    assert [line for line in conf if line.startswith("listener")] == ["listener 8883 127.0.0.1"]
    block = conf[conf.index("listener 8883 127.0.0.1") :]
    for line in (
        "use_username_as_clientid true",
        f"cafile {pki.files.ca_cert.resolve()}",
        f"certfile {pki.files.server_cert.resolve()}",
        f"keyfile {pki.files.server_key.resolve()}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username false",
        "allow_anonymous false",
        f"password_file {files.passwd}",
    ):
        assert line in block


def test_mosquitto_export_plain_and_tls(pki: Pki, tmp_path: Path) -> None:
    mosq_tls = MosquittoTls(
        cafile=pki.files.ca_cert, certfile=pki.files.server_cert, keyfile=pki.files.server_key
    )
    conf = export_mosquitto(tmp_path, [DEV_A.credential], tls=mosq_tls).conf.read_text().splitlines()
    assert [line for line in conf if line.startswith("listener")] == [
        "listener 1883 127.0.0.1",
        "listener 8883 127.0.0.1",
    ]
    assert conf.count("use_username_as_clientid true") == 2  # a per-listener option in mosquitto 2.0
    assert "require_certificate true" not in conf


def test_mosquitto_export_tls_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="needs a listener"):
        export_mosquitto(tmp_path, [DEV_A.credential], plain_listener=False)
    with pytest.raises(BrokerError, match="out of range"):
        MosquittoTls(
            cafile=pki.files.ca_cert, certfile=pki.files.server_cert, keyfile=pki.files.server_key, port=0
        )
    same = MosquittoTls(
        cafile=pki.files.ca_cert, certfile=pki.files.server_cert, keyfile=pki.files.server_key, port=1883
    )
    with pytest.raises(BrokerError, match="both use port"):
        export_mosquitto(tmp_path, [DEV_A.credential], tls=same)


def test_key_files_are_not_world_readable_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = tls.ensure_local_ca(tmp_path / "tls")
    finally:
        os.umask(old)
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_sign_client_request_keeps_the_key_on_the_device() -> None:
    ca = LocalCA.create()
    csr_pem, key_pem = tls.client_request("dev-kiosk-1")
    cert = x509.load_pem_x509_certificate(ca.sign_client_request(csr_pem, "dev-kiosk-1"))
    assert tls.certificate_identity(cert) == "dev-kiosk-1"
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.issued(cert)
    # The key the device kept is the certificate's.
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    # The request's subject is ignored: the caller names the client it authenticated.
    other_csr, _ = tls.client_request("ctl-main")
    forced = x509.load_pem_x509_certificate(ca.sign_client_request(other_csr, "dev-kiosk-1"))
    assert tls.certificate_identity(forced) == "dev-kiosk-1"
    with pytest.raises(TlsError, match="not a PEM certificate request"):
        ca.sign_client_request(b"junk", "dev-kiosk-1")


def test_ensure_local_ca_issues_named_client_certificates(tmp_path: Path) -> None:
    """The controller's own client certificate for mutual TLS, kept in the TLS directory."""
    files = tls.ensure_local_ca(tmp_path / "tls", clients=["ctl-main"])
    certfile, keyfile = files.client("ctl-main")
    assert (certfile, keyfile) == (files.directory / "ctl-main.pem", files.directory / "ctl-main.key")
    assert tls.certificate_identity(x509.load_pem_x509_certificate(certfile.read_bytes())) == "ctl-main"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    pem = certfile.read_bytes()
    tls.ensure_local_ca(tmp_path / "tls", clients=["ctl-main"])
    assert certfile.read_bytes() == pem
    files.ca_key.unlink()
    with pytest.raises(TlsError, match="dev-x"):
        tls.ensure_local_ca(tmp_path / "tls", clients=["ctl-main", "dev-x"])


@pytest.mark.mosquitto
async def test_mosquitto_reloads_the_server_certificate_on_sighup(tmp_path: Path) -> None:
    """Rotation on mosquitto: re-issue server.pem/server.key, then SIGHUP; no restart."""
    require_mosquitto()
    files = tls.ensure_local_ca(tmp_path / "tls")
    mosq_tls = MosquittoTls(cafile=files.ca_cert, certfile=files.server_cert, keyfile=files.server_key)
    creds = [DEV_A.credential]
    async with MosquittoProcess(tmp_path / "m", creds, tls=mosq_tls, plain_listener=False) as mosq:

        async def served_serial() -> int:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", mosq.tls_port, ssl=tls.client_context(files.ca_cert)
            )
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return x509.load_der_x509_certificate(der).serial_number

        before = await served_serial()
        files.server_cert.unlink()
        tls.ensure_local_ca(tmp_path / "tls")
        after = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).serial_number
        mosq.reload()
        async with asyncio.timeout(TIMEOUT):
            # mosquitto announces nothing when it has reloaded: poll what it serves, bounded above.
            while (served := await served_serial()) == before:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert served == after


def _doc_example() -> str:
    text = (REPO / "docs" / "tls.md").read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1
    return blocks[0]


async def test_the_python_example_in_docs_tls_md_runs() -> None:
    example = _doc_example()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        example,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, out.decode(errors="replace")
    assert out.decode().strip().endswith("connected over mutual TLS")
