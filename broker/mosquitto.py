"""Export the fleet's credentials and ACLs as mosquitto 2.0 configuration.

mosquitto is the production single-node broker; it gets exactly the rules the embedded broker
enforces, from the same source (:func:`kernel.wire.access_rules`):

* ``allow_anonymous false`` and a ``password_file`` of ``$7$`` hashes (disabled credentials left out);
* an ``acl_file`` with one explicit ``user`` block per credential;
* ``use_username_as_clientid true``: mosquitto 2.0 has no option that *refuses* a client id other
  than the username; this one replaces the client id by the username, so one credential can never
  take over another client's session. Our client ids equal the usernames, so nothing else changes.
* ``max_packet_size`` (the wire contract's message limit plus headers) and ``max_queued_messages``
  raised from mosquitto's default of 1000.
* optionally (:class:`MosquittoTls`) a TLS listener: ``cafile``/``certfile``/``keyfile``,
  ``tls_version tlsv1.2`` (the minimum: mosquitto 2.0 also accepts TLS 1.3 there), and for mutual
  TLS ``require_certificate true`` with ``use_identity_as_username false``. Password authentication
  stays on for TLS clients. mosquitto 2.0 cannot tie the certificate to the username: with
  ``use_identity_as_username true`` the certificate's CN *replaces* the username and the password is
  not checked at all, so the export keeps it false and any valid fleet certificate plus a valid
  password is admitted (the embedded broker additionally requires CN == username).

Retained messages: mosquitto checks the read ACL before delivering one, so a device never gets
another's. Unlike the embedded broker it stores retained messages from anyone allowed to write the
topic; the ACL keeps devices to their own ``up``/``presence`` topics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .acl import render_acl, render_passwd
from .credentials import BrokerError, Credential
from .listener import DEFAULT_MAX_PACKET_BYTES

__all__ = ["MosquittoFiles", "MosquittoTls", "export_mosquitto", "render_acl", "render_passwd"]


@dataclass(frozen=True, kw_only=True)
class MosquittoFiles:
    """The files :func:`export_mosquitto` wrote; run ``mosquitto -c <conf>``."""

    conf: Path
    passwd: Path
    acl: Path


@dataclass(frozen=True, kw_only=True)
class MosquittoTls:
    """A TLS listener for :func:`export_mosquitto` (files as :func:`kernel.tls.ensure_local_ca` writes).

    ``host`` defaults to the plain listener's host. mosquitto reads the key file itself (and again
    on SIGHUP, after dropping to ``run_as_user``), so that user must be able to read it.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    port: int = 8883
    host: str | None = None
    require_certificate: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.port <= 65535:
            raise BrokerError(f"mosquitto TLS listener port {self.port} is out of range")

    def lines(self, default_host: str) -> list[str]:
        """The listener block (the ``listener`` line first)."""
        out = [
            f"listener {self.port} {self.host or default_host}",
            "use_username_as_clientid true",
            f"cafile {self.cafile.resolve()}",
            f"certfile {self.certfile.resolve()}",
            f"keyfile {self.keyfile.resolve()}",
            "tls_version tlsv1.2",
        ]
        if self.require_certificate:
            # Verify the client's certificate against cafile; keep the password check (see above).
            out += ["require_certificate true", "use_identity_as_username false"]
        return out


def export_mosquitto(
    out_dir: Path,
    credentials: Iterable[Credential],
    *,
    listener_host: str = "127.0.0.1",
    listener_port: int = 1883,
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
    persistence_dir: Path | None = None,
    run_as_user: str | None = None,
    tls: MosquittoTls | None = None,
    plain_listener: bool = True,
) -> MosquittoFiles:
    """Write ``mosquitto.conf``, ``passwd`` and ``acl`` into ``out_dir`` (created if missing).

    ``run_as_user`` sets mosquitto's ``user`` option: the account it drops to when started as root
    (it must be able to read these files again on SIGHUP). ``tls`` adds a TLS listener;
    ``plain_listener=False`` leaves the plain one (``listener_host``:``listener_port``) out.
    """
    if not 0 < listener_port <= 65535:
        raise BrokerError(f"mosquitto listener port {listener_port} is out of range")
    if not plain_listener and tls is None:
        raise BrokerError("mosquitto needs a listener: keep the plain one or add a TLS one")
    if tls is not None and plain_listener and tls.port == listener_port:
        raise BrokerError(f"the TLS and plain listeners both use port {listener_port}")
    creds = list(credentials)
    names = [c.username for c in creds]
    if len(set(names)) != len(names):
        raise BrokerError("duplicate usernames in the credentials")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = MosquittoFiles(conf=out_dir / "mosquitto.conf", passwd=out_dir / "passwd", acl=out_dir / "acl")
    _write(files.passwd, render_passwd(creds), secret=True)
    _write(files.acl, render_acl(creds), secret=False)

    lines = [
        "# Generated by printfleet (broker.mosquitto); regenerate instead of editing.",
        "per_listener_settings false",
    ]
    # Each listener line comes before its options: a listener option placed before any `listener`
    # line makes mosquitto open a default listener on port 1883 on every interface, and applies there.
    # use_username_as_clientid is a per-listener option in mosquitto 2.0, so each block repeats it:
    # mosquitto cannot refuse a client id != username; this forces the id to the username.
    if plain_listener:
        lines += [f"listener {listener_port} {listener_host}", "use_username_as_clientid true"]
    if tls is not None:
        lines += tls.lines(listener_host)
    # Global options (per_listener_settings false): they apply to every listener.
    lines += [
        "allow_anonymous false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        f"max_packet_size {max_packet_bytes}",
        "max_queued_messages 10000",
    ]
    if run_as_user is not None:
        lines.append(f"user {run_as_user}")
    if persistence_dir is not None:
        persistence_dir = persistence_dir.resolve()
        persistence_dir.mkdir(parents=True, exist_ok=True)
        lines += ["persistence true", f"persistence_location {persistence_dir}/", "autosave_interval 60"]
    else:
        lines.append("persistence false")
    _write(files.conf, "\n".join(lines) + "\n", secret=False)
    return files


def _write(path: Path, text: str, *, secret: bool) -> None:
    """Write atomically (mosquitto may re-read on SIGHUP at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o600 if secret else 0o644)
    os.replace(tmp, path)
