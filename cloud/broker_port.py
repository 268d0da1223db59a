"""The embedded broker as the controller sees it: a small interface the composition layer fills.

``cloud`` does not build a broker (the parts do not know each other): ``printfleet`` passes a
:class:`BrokerFactory` to :class:`~cloud.service.ControllerService`, which calls it once it knows
the listener, the credentials (the registry's) and where refusals go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from cloud.registry import DbCredentials


class BrokerRefusal(Protocol):
    """A CONNECT, SUBSCRIBE or PUBLISH the broker refused (the embedded broker reports each one)."""

    @property
    def client(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def target(self) -> str | None: ...
    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class Listener:
    """Where the broker listens; with TLS when ``certfile`` is set."""

    host: str
    port: int
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_client_cert: bool = False


class LocalBroker(Protocol):
    """A broker running in this process: started by ``async with``, stopped at its exit."""

    @property
    def bound_addresses(self) -> Sequence[tuple[str, int]]: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...

    def kick(self, client_id: str) -> Awaitable[object]:
        """Drop a client's live session (its credentials were revoked or changed)."""
        ...


class BrokerFactory(Protocol):
    def __call__(
        self,
        *,
        listener: Listener,
        credentials: DbCredentials,
        on_refusal: Callable[[BrokerRefusal], None],
    ) -> LocalBroker: ...
