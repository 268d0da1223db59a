"""What a broker listens on: :class:`ListenerSpec` (TCP or TLS, port 0 for a free port) and the
packet-size limit both brokers apply (the embedded one and the exported mosquitto configuration)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from kernel import tls, wire

from .errors import BrokerError

__all__ = ["DEFAULT_MAX_PACKET_BYTES", "ListenerSpec"]

#: Largest packet the broker accepts by default: one envelope plus room for the MQTT headers.
DEFAULT_MAX_PACKET_BYTES = wire.MAX_MESSAGE_BYTES + 4096


@dataclass(frozen=True, kw_only=True)
class ListenerSpec:
    """One TCP listener. Port 0 picks a free port (see :attr:`EmbeddedBroker.bound_addresses`).

    With ``certfile``/``keyfile`` the listener speaks TLS; ``require_client_cert`` additionally
    demands a client certificate signed by ``cafile``.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if not self.host:
            raise BrokerError("listener host must not be empty")
        if not 0 <= self.port <= 65535:
            raise BrokerError(f"listener port {self.port} is out of range")
        if (self.certfile is None) != (self.keyfile is None):
            raise BrokerError("a TLS listener needs both certfile and keyfile")
        if self.require_client_cert and (self.certfile is None or self.cafile is None):
            raise BrokerError("require_client_cert needs a TLS listener (certfile, keyfile) and a cafile")

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's server context (:func:`kernel.tls.server_context`), or None for plain TCP."""
        if self.certfile is None or self.keyfile is None:
            return None
        try:
            return tls.server_context(self.certfile, self.keyfile, self.cafile, self.require_client_cert)
        except tls.TlsError as exc:
            raise BrokerError(f"listener {self.host}:{self.port}: {exc}") from exc
