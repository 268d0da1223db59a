"""The session's errors, under :class:`~kernel.errors.PrintfleetError`::

    SessionError                 (kernel.session: the MQTT peer session)
     +-- ConnectFailed           a broker address could not be connected to (the next one is tried)
     +-- ConnectionLost          an established connection ended: broker gone, keep-alive silence, kicked

aiomqtt's ``MqttError`` is mapped to these at the boundary (``raise ... from exc``); both are
retryable and carry the broker address and the reason.
"""

from __future__ import annotations

from kernel.config import BrokerAddress
from kernel.errors import PrintfleetError


class SessionError(PrintfleetError):
    """Root of the MQTT peer session's errors."""


class ConnectFailed(SessionError):
    """Connecting to ``address`` failed before the session was online there."""

    def __init__(self, address: BrokerAddress, reason: str) -> None:
        super().__init__(f"cannot connect to {address}: {reason}", retryable=True)
        self.address = address
        self.reason = reason


class ConnectionLost(SessionError):
    """The connection to ``address`` ended after it was online (silence past the keep-alive
    included: the MQTT client closes a connection whose broker stopped answering pings)."""

    def __init__(self, address: BrokerAddress, reason: str) -> None:
        super().__init__(f"lost {address}: {reason}", retryable=True)
        self.address = address
        self.reason = reason
