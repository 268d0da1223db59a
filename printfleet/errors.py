"""The exception root shared by every printfleet package.

::

    PrintfleetError
     +-- WireError            (printfleet.wire: a message that does not follow the contract)
     +-- DocumentError        (printfleet.escpos: a receipt document that cannot be rendered)
     +-- BrokerError          (broker: the embedded broker could not start or be configured)
     +-- ControllerError      (cloud: a request the controller refuses; carries an HTTP status)
     +-- AgentError           (device_agent: configuration or printer-link failures)

Each package raises its own subclass with structured fields; third-party errors are mapped at the
boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class PrintfleetError(Exception):
    """Root of every error printfleet raises on purpose."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    def __str__(self) -> str:
        return self.message
