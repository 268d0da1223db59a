"""The bridge's configuration file (TOML), written by `printfleet bridge register` or `bridge enroll`.

The same shape as a device agent's (``[mqtt]``, ``[controller]``, optional ``[tls]``), with a
``[bridge]`` section instead of ``[device]``::

    [bridge]
    name = "phone-1"
    ble_backend = "bleak"          # or "bumble:tcp-client:127.0.0.1:PORT" (simulated radio)
    auto_approve = true            # `bridge run` takes every instruction; an app may ask its user
    state_dir = "phone-1.state"    # what survives a restart (the replay guard); default below

``state_dir`` (relative paths resolve against the config file's directory) defaults to
``<name>.state`` beside the config file, or to the user's state directory
(``printfleet-bridge/<name>``) for a config that is not read from a file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kernel import wire
from kernel.config import BrokerAddress, TlsSettings, dump_config, parse_tls
from kernel.errors import ConfigError


class BridgeConfigError(ConfigError):
    """A bridge configuration file that cannot be used (the message names the field).

    A :class:`kernel.errors.ConfigError`, and so a ``PrintfleetError``.
    """


@dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    name: str
    brokers: tuple[BrokerAddress, ...]
    username: str
    password: str
    controller_http: str
    controller_name: str
    public_keys: Mapping[str, Ed25519PublicKey]
    keepalive: int = 10
    ble_backend: str = "bleak"
    auto_approve: bool = True
    tls: TlsSettings | None = None
    #: Where the bridge keeps what must survive a restart (its session store: the replay guard).
    state_dir: Path | None = None

    @property
    def peer(self) -> wire.Peer:
        return wire.Peer(role=wire.Role.BRIDGE, name=self.name)

    @property
    def state_path(self) -> Path:
        """``state_dir``, or the user's state directory when the config named none."""
        if self.state_dir is not None:
            return self.state_dir
        return Path(platformdirs.user_state_dir("printfleet-bridge", appauthor=False)) / self.name

    @property
    def controller(self) -> wire.Peer:
        return wire.Peer(role=wire.Role.CONTROLLER, name=self.controller_name)


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    if not isinstance(value, Mapping):
        raise BridgeConfigError(f"bridge config: missing [{name}] section")
    return value


def _text(sec: Mapping[str, Any], key: str, where: str) -> str:
    value = sec.get(key)
    if not isinstance(value, str) or not value:
        raise BridgeConfigError(f"bridge config: [{where}] {key} must be a non-empty string")
    return value


def parse_bridge_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> BridgeConfig:
    """Validate a parsed TOML document (a clear error names the first bad field)."""
    sec = _table(data, "bridge")
    name = _text(sec, "name", "bridge")
    try:
        peer = wire.Peer(role=wire.Role.BRIDGE, name=name)
    except wire.WireError as exc:
        raise BridgeConfigError(f"bridge config: {exc}") from exc
    backend = sec.get("ble_backend", "bleak")
    if not isinstance(backend, str) or not (backend == "bleak" or backend.startswith("bumble:")):
        raise BridgeConfigError("bridge config: [bridge] ble_backend must be 'bleak' or 'bumble:SPEC'")
    auto = sec.get("auto_approve", True)
    if not isinstance(auto, bool):
        raise BridgeConfigError("bridge config: [bridge] auto_approve must be true or false")
    state_raw = sec.get("state_dir")
    state_dir: Path | None = None
    if state_raw is not None:
        if not isinstance(state_raw, str) or not state_raw:
            raise BridgeConfigError("bridge config: [bridge] state_dir must be a path")
        state_dir = Path(state_raw).expanduser()
        if not state_dir.is_absolute() and base_dir is not None:
            state_dir = base_dir / state_dir
    elif base_dir is not None:
        state_dir = base_dir / f"{name}.state"
    mqtt = _table(data, "mqtt")
    urls = mqtt.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise BridgeConfigError("bridge config: [mqtt] urls must be a non-empty list of mqtt:// URLs")
    try:
        brokers = tuple(BrokerAddress.parse(u) for u in urls)
    except ConfigError as exc:
        raise BridgeConfigError(f"bridge config: {exc}") from exc
    username = _text(mqtt, "username", "mqtt")
    if username != peer.client_id:
        raise BridgeConfigError(f"bridge config: [mqtt] username must be {peer.client_id!r}")
    password = _text(mqtt, "password", "mqtt")
    keepalive = mqtt.get("keepalive", 10)
    if not isinstance(keepalive, int) or isinstance(keepalive, bool) or not 2 <= keepalive <= 1200:
        raise BridgeConfigError("bridge config: [mqtt] keepalive must be between 2 and 1200 seconds")
    ctl = _table(data, "controller")
    http = _text(ctl, "http", "controller")
    if urlsplit(http).scheme not in ("http", "https"):
        raise BridgeConfigError("bridge config: [controller] http must be an http:// or https:// URL")
    ctl_name = ctl.get("name", "main")
    if not isinstance(ctl_name, str):
        raise BridgeConfigError("bridge config: [controller] name must be a string")
    keys = ctl.get("public_keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise BridgeConfigError("bridge config: [controller] public_keys must be a list of base64 keys")
    try:
        public_keys = wire.parse_public_keys(keys)
    except wire.WireError as exc:
        raise BridgeConfigError(f"bridge config: [controller] public_keys: {exc}") from exc
    try:
        tls = parse_tls(data.get("tls"), base_dir, label="bridge config")
    except ConfigError as exc:
        raise BridgeConfigError(str(exc)) from exc
    if any(b.tls for b in brokers) and tls is None:
        raise BridgeConfigError("bridge config: mqtts:// brokers need a [tls] section with the fleet's CA")
    return BridgeConfig(
        name=name,
        brokers=brokers,
        username=username,
        password=password,
        keepalive=keepalive,
        controller_http=http,
        controller_name=ctl_name,
        public_keys=public_keys,
        ble_backend=backend,
        auto_approve=auto,
        tls=tls,
        state_dir=state_dir,
    )


def load_bridge_config(path: Path) -> BridgeConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BridgeConfigError(f"cannot read bridge config {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BridgeConfigError(f"bridge config {path} is not valid TOML: {exc}") from exc
    return parse_bridge_config(data, base_dir=path.parent)


def write_bridge_config(path: Path, data: Mapping[str, Any]) -> None:
    """Write a bridge config (0600: it holds the bridge's credentials); never one it would refuse."""
    text = dump_config(data, what="phone bridge")
    parse_bridge_config(tomllib.loads(text), base_dir=path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
