"""The agent's configuration file (TOML), written by `printfleet devices add` and read once at start."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent.errors import AgentConfigError, AgentError  # noqa: F401 - AgentError: callers import it from here
from kernel import wire
from kernel.config import BrokerAddress, TlsSettings, dump_config, parse_tls, write_secret_file
from kernel.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    device: str
    brokers: tuple[BrokerAddress, ...]
    username: str
    password: str
    keepalive: int
    controller_http: str
    controller_name: str
    public_keys: Mapping[str, Ed25519PublicKey]
    state_dir: Path
    printers: tuple[wire.PrinterSpec, ...] = ()
    heartbeat_s: float = 0.0
    status_poll_s: float = 5.0
    #: Added to the host's clock (tests simulate a host whose clock is wrong; 0 in production).
    clock_skew_ms: int = 0
    tls: TlsSettings | None = None
    #: System commands for the reboot/shutdown maintenance actions; unset means refused (safe).
    reboot_command: str | None = None
    shutdown_command: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def peer(self) -> wire.Peer:
        return wire.Peer(role=wire.Role.DEVICE, name=self.device)

    @property
    def controller(self) -> wire.Peer:
        return wire.Peer(role=wire.Role.CONTROLLER, name=self.controller_name)

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_s or max(0.5, self.keepalive / 2)

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.db"


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if not isinstance(value, Mapping):
        raise AgentConfigError(f"agent config: missing [{name}] section")
    return value


def _str(sec: Mapping[str, Any], key: str, where: str) -> str:
    value = sec.get(key)
    if not isinstance(value, str) or not value:
        raise AgentConfigError(f"agent config: [{where}] {key} must be a non-empty string")
    return value


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> AgentConfig:
    """Validate a parsed TOML document into an :class:`AgentConfig` (clear error on bad input)."""
    dev = _section(data, "device")
    name = _str(dev, "name", "device")
    try:
        wire.check_name(name, "device name")
    except wire.WireError as exc:
        raise AgentConfigError(f"agent config: {exc}") from exc
    mqtt = _section(data, "mqtt")
    urls = mqtt.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise AgentConfigError("agent config: [mqtt] urls must be a non-empty list of mqtt:// URLs")
    try:
        brokers = tuple(BrokerAddress.parse(u) for u in urls)
    except ConfigError as exc:
        raise AgentConfigError(f"agent config: {exc}") from exc
    username = _str(mqtt, "username", "mqtt")
    if username != wire.Peer(role=wire.Role.DEVICE, name=name).client_id:
        raise AgentConfigError(f"agent config: [mqtt] username must be 'dev-{name}'")
    password = _str(mqtt, "password", "mqtt")
    keepalive = mqtt.get("keepalive", 10)
    if not isinstance(keepalive, int) or isinstance(keepalive, bool) or not 2 <= keepalive <= 1200:
        raise AgentConfigError("agent config: [mqtt] keepalive must be an integer between 2 and 1200 seconds")
    ctl = _section(data, "controller")
    http = _str(ctl, "http", "controller")
    if urlsplit(http).scheme not in ("http", "https"):
        raise AgentConfigError("agent config: [controller] http must be an http:// or https:// URL")
    ctl_name = ctl.get("name", "main")
    if not isinstance(ctl_name, str):
        raise AgentConfigError("agent config: [controller] name must be a string")
    keys = ctl.get("public_keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise AgentConfigError(
            "agent config: [controller] public_keys must be a non-empty list of base64 Ed25519 keys"
        )
    try:
        public_keys = wire.parse_public_keys(keys)
    except wire.WireError as exc:
        raise AgentConfigError(f"agent config: [controller] public_keys: {exc}") from exc
    agent = data.get("agent", {})
    if not isinstance(agent, Mapping):
        raise AgentConfigError("agent config: [agent] must be a table")
    state_raw = agent.get("state_dir")
    if state_raw is None:
        systemd_state = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
        if systemd_state:
            state_dir = Path(systemd_state.split(":")[0]) / name
        else:
            state_dir = Path(platformdirs.user_state_dir("printfleet-agent", appauthor=False)) / name
    elif isinstance(state_raw, str) and state_raw:
        state_dir = Path(state_raw).expanduser()
        if not state_dir.is_absolute() and base_dir is not None:
            state_dir = base_dir / state_dir
    else:
        raise AgentConfigError("agent config: [agent] state_dir must be a path")
    hb = agent.get("heartbeat_s", 0.0)
    if not isinstance(hb, int | float) or isinstance(hb, bool) or not 0 <= hb <= 600:
        raise AgentConfigError(
            "agent config: [agent] heartbeat_s must be a number of seconds (0 = keepalive/2)"
        )
    skew = agent.get("clock_skew_ms", 0)
    if not isinstance(skew, int) or isinstance(skew, bool):
        raise AgentConfigError("agent config: [agent] clock_skew_ms must be an integer")
    poll = agent.get("status_poll_s", 5.0)
    if not isinstance(poll, int | float) or isinstance(poll, bool) or not 0.2 <= poll <= 600:
        raise AgentConfigError("agent config: [agent] status_poll_s must be between 0.2 and 600 seconds")
    printers_raw = data.get("printers", [])
    if not isinstance(printers_raw, list):
        raise AgentConfigError("agent config: [[printers]] must be an array of tables")
    printers: list[wire.PrinterSpec] = []
    for i, p in enumerate(printers_raw):
        try:
            printers.append(wire.validate_model(wire.PrinterSpec, p, f"printers[{i}]"))
        except wire.WireError as exc:
            raise AgentConfigError(f"agent config: {exc}") from exc
    try:
        tls = parse_tls(data.get("tls"), base_dir, label="agent config")
    except ConfigError as exc:
        raise AgentConfigError(str(exc)) from exc
    if any(b.tls for b in brokers) and tls is None:
        raise AgentConfigError(
            "agent config: mqtts:// brokers need a [tls] section with the fleet's CA (ca or ca_pem)"
        )
    maint = data.get("maintenance", {})
    if not isinstance(maint, Mapping):
        raise AgentConfigError("agent config: [maintenance] must be a table")
    host_cmds: dict[str, str | None] = {}
    for key in ("reboot_command", "shutdown_command"):
        value = maint.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise AgentConfigError(f"agent config: [maintenance] {key} must be a command line")
        host_cmds[key] = value
    return AgentConfig(
        reboot_command=host_cmds["reboot_command"],
        shutdown_command=host_cmds["shutdown_command"],
        tls=tls,
        device=name,
        brokers=brokers,
        username=username,
        password=password,
        keepalive=keepalive,
        controller_http=http,
        controller_name=ctl_name,
        public_keys=public_keys,
        state_dir=state_dir,
        printers=tuple(printers),
        heartbeat_s=float(hb),
        status_poll_s=float(poll),
        clock_skew_ms=skew,
    )


def load_config(path: Path) -> AgentConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AgentConfigError(f"cannot read agent config {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AgentConfigError(f"agent config {path} is not valid TOML: {exc}") from exc
    return parse_config(data, base_dir=path.parent)


# -- writing ------------------------------------------------------------------------------------


def write_config(path: Path, data: Mapping[str, Any]) -> None:
    """Write an agent config (0600: it holds the device's credentials); never one the agent would refuse."""
    text = dump_config(data, what="device agent")
    parse_config(tomllib.loads(text), base_dir=path.parent)
    write_secret_file(path, text)
