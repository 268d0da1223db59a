"""Who may connect to the broker: credentials, where they are looked up, and refusals to report.

This is the broker's interface for the controller (``cloud`` may import it, with
:mod:`broker.passwords` and :mod:`broker.acl`). It imports neither amqtt nor the embedded broker, so
the controller can keep credentials for mosquitto or a cluster broker without loading amqtt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kernel import wire

from .errors import BrokerError

__all__ = [
    "BrokerError",
    "Credential",
    "CredentialSource",
    "Refusal",
    "RefusalHook",
    "StaticCredentials",
]


@dataclass(frozen=True, kw_only=True)
class Credential:
    """What the broker knows about one MQTT user. The username and client id are ``peer.client_id``."""

    peer: wire.Peer
    password_hash: str  # mosquitto's $7$ format, see broker.passwords
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.password_hash.startswith("$7$"):
            raise BrokerError(f"credential for {self.peer}: password_hash is not a $7$ hash")

    @property
    def username(self) -> str:
        return self.peer.client_id


@runtime_checkable
class CredentialSource(Protocol):
    """Where the broker looks a username up, on every CONNECT (so a database-backed source is live)."""

    async def lookup(self, username: str) -> Credential | None: ...


class StaticCredentials(dict[str, Credential]):
    """An in-memory :class:`CredentialSource`: username -> credential. Mutate it while the broker runs."""

    @classmethod
    def of(cls, *credentials: Credential) -> StaticCredentials:
        return cls({c.username: c for c in credentials})

    def add(self, credential: Credential) -> None:
        self[credential.username] = credential

    async def lookup(self, username: str) -> Credential | None:
        return self.get(username)


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """Something the broker refused a client: reported to whoever audits the fleet."""

    client: str
    action: str  # "connect", "subscribe" or "publish"
    target: str | None
    reason: str


#: Called (synchronously, so it must not block) for every refused CONNECT, SUBSCRIBE and PUBLISH.
RefusalHook = Callable[[Refusal], None]
