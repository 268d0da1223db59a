"""The exception root shared by every printfleet package.

Every error printfleet raises on purpose is a :class:`PrintfleetError` (``retryable`` says whether
trying again may help); each package raises its own subclasses with structured fields, and maps
third-party errors at its boundary with ``raise ... from exc``. The tree::

    PrintfleetError                       (message, retryable)
     |  kernel
     +-- WireError                        kernel.wire: a message or name off the wire contract
     +-- ConfigError                      kernel.config: a config file that cannot be used
     |    +-- AgentConfigError            device_agent.errors (also an AgentError)
     |    +-- BridgeConfigError           phone_bridge.config
     +-- DocumentError                    kernel.errors, raised by kernel.escpos.profiles and
     |                                    cloud.render (item, item_type, field)
     +-- TlsError                         kernel.tls: a certificate or key not created/loaded (path)
     +-- WheelError                       kernel.wheel: not an installable printfleet wheel
     +-- StatusDecodeError                kernel.escpos.status: bytes that are no printer status
     |                                    (also a ValueError)
     +-- SessionError                     kernel.session: the MQTT peer session
     |    +-- ConnectFailed, ConnectionLost          (address, reason; retryable)
     |  parts
     +-- BrokerError                      broker.errors: the broker could not start or be configured
     +-- ControllerError                  cloud.errors: a request the controller refuses (HTTP status)
     |    +-- NotFound, Conflict, NotNear (cloud.jobs.intake), TaskDied (cloud.supervisor)
     +-- AgentError                       device_agent.errors (tree there)
     |    +-- AgentConfigError, PrinterLinkError (printer, reason), CommandRejected,
     |        HostCommandFailed, UpdateRefused, UpdateFailed, VersionError
     +-- BleError                         phone_bridge.ble_errors (printer, address, reason; tree there)
     +-- BridgeError                      phone_bridge.bridge: the bridge could not do what was asked
     |  composition
     +-- CliError, ClientError            printfleet.cli_common, printfleet.client: mapped to exit codes

Misuse of an API (a bad argument in code, a call in the wrong lifecycle state) stays a plain
``ValueError``/``RuntimeError``: that is a bug to fix, not an error to handle.
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
