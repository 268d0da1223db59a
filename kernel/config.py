"""Config-file pieces every side shares: broker addresses, the ``[tls]`` section, a small TOML writer.

The agent's and the bridge's config files have the same ``[mqtt]``, ``[controller]`` and ``[tls]``
sections; the parsers here raise :class:`~kernel.errors.ConfigError` whose message starts with the
``label`` the caller gives (``"agent config"``, ``"bridge config"``), so an operator sees which file is
at fault.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kernel.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"invalid broker URL {url!r}: expected mqtt://HOST:PORT")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise ConfigError(f"invalid port in broker URL {url!r}") from exc
        return cls(host=parts.hostname, port=port, tls=parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """The fleet's CA (always) and, for mutual TLS, this peer's certificate and key, as PEM text."""

    ca_pem: str
    cert_pem: str | None = None
    key_pem: str | None = None


def _pem(sec: Mapping[str, Any], name: str, base_dir: Path | None, marker: str, label: str) -> str | None:
    """A PEM given inline (``<name>_pem``) or as a file path (``<name>``)."""
    inline, path = sec.get(f"{name}_pem"), sec.get(name)
    if inline is not None and path is not None:
        raise ConfigError(f"{label}: [tls] give {name} or {name}_pem, not both")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{label}: [tls] {name} must be a file path")
        file = Path(path).expanduser()
        if not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        try:
            inline = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{label}: [tls] cannot read {name} file {file}: {exc}") from exc
    if inline is None:
        return None
    if not isinstance(inline, str) or marker not in inline:
        raise ConfigError(f"{label}: [tls] {name} is not a PEM {marker.lower()}")
    return inline


def parse_tls(sec: Any, base_dir: Path | None, *, label: str) -> TlsSettings | None:
    """The ``[tls]`` section (``None`` when absent); relative file paths resolve against ``base_dir``."""
    if sec is None:
        return None
    if not isinstance(sec, Mapping):
        raise ConfigError(f"{label}: [tls] must be a table")
    ca = _pem(sec, "ca", base_dir, "CERTIFICATE", label)
    if ca is None:
        raise ConfigError(f"{label}: [tls] needs the fleet's CA (ca or ca_pem)")
    cert = _pem(sec, "cert", base_dir, "CERTIFICATE", label)
    key = _pem(sec, "key", base_dir, "PRIVATE KEY", label)
    if (cert is None) != (key is None):
        raise ConfigError(f"{label}: [tls] a client certificate needs its key, and the other way round")
    return TlsSettings(ca_pem=ca, cert_pem=cert, key_pem=key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_config(data: Mapping[str, Any], *, what: str = "device agent") -> str:
    """A small TOML writer for the config shape (tables of scalars and arrays of tables)."""
    lines = [
        f"# printfleet {what} configuration. Keep it secret: it holds the credentials.",
        "",
    ]
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
                lines.append("")
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (configs hold credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
