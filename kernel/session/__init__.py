"""The one MQTT peer session: what the device agent, the phone bridge and the controller's link share.

* :mod:`.link`: :class:`Link`, one MQTT connection that stays up (ordered broker addresses with
  failover, will, subscriptions, a greeting, reconnects with backoff and jitter, a timeout on every
  exchange, TLS built one way by :func:`tls_context`); inbound messages as an async iterator.
* :mod:`.peer`: :class:`PeerSession`, a device's or a bridge's session on a link: session numbers,
  birth and will, controller presence, and instructions verified (signature, addressing, type,
  durable replay guard, expiry) before they are handed on as :class:`Instruction`.
* :mod:`.store`: :class:`SessionStore`, where the replay floors and session numbers live
  (:class:`FileStore`, :class:`MemoryStore`; the agent's journal is one too).
* :mod:`.errors`: :class:`SessionError`, :class:`ConnectFailed`, :class:`ConnectionLost`;
  :mod:`.backoff`: :class:`Backoff`.

May import: the standard library, aiomqtt, cryptography and the kernel (:mod:`kernel.wire`,
:mod:`kernel.tls`, :mod:`kernel.config`, :mod:`kernel.errors`); no part.
"""

from __future__ import annotations

from kernel.session.backoff import Backoff
from kernel.session.errors import ConnectFailed, ConnectionLost, SessionError
from kernel.session.link import (
    TRANSITIONS,
    Greeter,
    Link,
    LinkDown,
    LinkEvent,
    LinkSettings,
    LinkState,
    LinkUp,
    Outbound,
    Received,
    Send,
    tls_context,
)
from kernel.session.peer import (
    Connected,
    ControllerPresence,
    ControllerState,
    ControllerStatus,
    Disconnected,
    Instruction,
    PeerSession,
    PeerSettings,
    SessionMessage,
)
from kernel.session.store import FileStore, MemoryStore, SessionStore, StoreError

__all__ = [
    "TRANSITIONS",
    "Backoff",
    "ConnectFailed",
    "Connected",
    "ConnectionLost",
    "ControllerPresence",
    "ControllerState",
    "ControllerStatus",
    "Disconnected",
    "FileStore",
    "Greeter",
    "Instruction",
    "Link",
    "LinkDown",
    "LinkEvent",
    "LinkSettings",
    "LinkState",
    "LinkUp",
    "MemoryStore",
    "Outbound",
    "PeerSession",
    "PeerSettings",
    "Received",
    "Send",
    "SessionError",
    "SessionMessage",
    "SessionStore",
    "StoreError",
    "tls_context",
]
