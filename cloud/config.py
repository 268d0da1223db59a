"""Controller configuration and the layout of its data directory."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from cloud.errors import ControllerError

ENV_HOME = "PRINTFLEET_HOME"


def default_data_dir() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("printfleet", appauthor=False))


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``:PORT`` / ``PORT``); port 0 asks the OS for a free port."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = "", text
    host = host.strip("[]") or default_host
    try:
        port = int(port_s)
    except ValueError as exc:
        raise ControllerError(f"invalid address {text!r}: expected HOST:PORT") from exc
    if not 0 <= port <= 65535:
        raise ControllerError(f"invalid port in {text!r}")
    return host, port


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` or ``mqtts://host:port`` -> (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ControllerError(f"invalid broker URL {url!r}: expected mqtt://HOST:PORT")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ControllerError(f"invalid port in broker URL {url!r}") from exc
    return parts.hostname, port, tls


@dataclass(frozen=True, kw_only=True)
class DataDir:
    """Files the controller keeps: database, keys, credentials, and the addresses it bound."""

    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "printfleet.db"

    @property
    def db_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.db_path}"

    @property
    def signing_key_path(self) -> Path:
        return self.root / "keys" / "signing-ed25519.pem"

    @property
    def admin_token_path(self) -> Path:
        return self.root / "admin.token"

    @property
    def controller_secret_path(self) -> Path:
        return self.root / "controller.secret"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "keys").mkdir(exist_ok=True, mode=0o700)

    def read_or_create_secret(self, path: Path) -> str:
        if path.exists():
            return path.read_text().strip()
        value = secrets.token_urlsafe(32)
        write_private(path, value + "\n")
        return value

    def write_state(self, state: dict[str, Any]) -> None:
        write_private(self.state_path, json.dumps(state, indent=2) + "\n")

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def clear_state(self) -> None:
        self.state_path.unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True, kw_only=True)
class ControllerConfig:
    data_dir: DataDir
    db_url: str
    mqtt_bind: tuple[str, int] = ("127.0.0.1", 1883)
    http_bind: tuple[str, int] = ("127.0.0.1", 8080)
    external_broker: str | None = None
    advertise: tuple[str, ...] = ()
    controller_name: str = "main"
    #: MQTT keep-alive written into agent configs; the heartbeat deadline is 1.5x this.
    agent_keepalive: int = 10
    heartbeat_timeout_s: float = 15.0
    #: Outbox: first resend after this many seconds, doubling up to the cap.
    resend_initial_s: float = 2.0
    resend_max_s: float = 30.0
    #: Payloads of finished jobs are purged after this many seconds (receipts carry personal data).
    payload_retention_s: float = 7 * 24 * 3600.0
    #: How long an agent may hold the right to print a job without hearing from the controller.
    lease_s: float = 30.0
    #: A printer's path is degraded (jobs go to a phone bridge) above this host round trip, unless
    #: the printer sets its own threshold (`printers set --latency-threshold`).
    latency_threshold_ms: int = 1000
    #: How long a bridge has to connect to the printer after an offer; the lease it then gets.
    bridge_offer_s: float = 30.0
    bridge_lease_s: float = 120.0
    idempotency_keep_s: float = 48 * 3600.0
    #: How long an instruction (envelope) stays valid; a later delivery is refused as stale.
    instruction_ttl_s: float = 600.0
    #: TLS on the MQTT link: the embedded broker listens with TLS (a local CA is created in
    #: ``tls_dir``, default DATA_DIR/tls); ``mtls`` also requires client certificates.
    tls: bool = False
    tls_dir: Path | None = None
    mtls: bool = False
    #: With an external mosquitto: the directory of its passwd/acl files, kept in step with the
    #: registry, and the command that makes it reload them (e.g. "systemctl reload mosquitto").
    mosquitto_dir: Path | None = None
    mosquitto_reload: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
