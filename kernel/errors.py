"""The exception root shared by every printfleet package.

::

    PrintfleetError
     +-- WireError            (kernel.wire: a message that does not follow the contract)
     +-- ConfigError          (kernel.config: a config file that cannot be used)
     +-- DocumentError        (kernel.escpos profiles, cloud.render: a document that cannot be rendered)
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


class ConfigError(PrintfleetError):
    """A config file or section that cannot be used; the message names the file's kind and the field."""


class DocumentError(PrintfleetError):
    """A receipt document or printer profile that cannot be parsed or rendered.

    ``item`` is the index of the offending item (``None`` for the document as a whole), ``item_type``
    its type, ``field`` the field at fault when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        item: int | None = None,
        item_type: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, retryable=False)
        self.item = item
        self.item_type = item_type
        self.field = field

    def at_item(self, index: int, item_type: str) -> DocumentError:
        """This error re-raised for the item at ``index``: the message gains an ``item N (type):`` prefix."""
        return DocumentError(
            f"item {index} ({item_type}): {self.message}", item=index, item_type=item_type, field=self.field
        )
