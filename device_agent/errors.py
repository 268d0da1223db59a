"""The device agent's errors, all under :class:`AgentError` (and so under the project's root)::

    PrintfleetError (kernel.errors)
     +-- AgentError                 device_agent: anything the agent refuses or fails at
          +-- AgentConfigError      an agent config file that cannot be used (also a kernel ConfigError)
          +-- PrinterLinkError      the printer could not be opened, stopped answering, or its port
          |                         broke (printer, reason, retryable)
          +-- CommandRejected       a maintenance command the agent will not run (bad arguments, not
          |                         configured, not allowed): reported ``rejected``
          +-- HostCommandFailed     a host command (reboot, shutdown) exited non-zero (command, returncode)
          +-- UpdateRefused         an update that cannot be attempted (bad arguments, an untrusted URL)
          +-- UpdateFailed          an update attempted that failed; nothing was installed or selected
          +-- VersionError          a package that cannot be installed, a version store that cannot change

Each is importable from the module that raises it too (``device_agent.printer.PrinterLinkError``,
``device_agent.update.UpdateFailed``...).
"""

from __future__ import annotations

from kernel.errors import ConfigError, PrintfleetError


class AgentError(PrintfleetError):
    """Configuration or runtime failure of the device agent."""


class AgentConfigError(AgentError, ConfigError):
    """An agent config file or section that cannot be used; the message names the section and key."""


class PrinterLinkError(AgentError):
    """The printer could not be opened, stopped answering, or the port broke."""

    def __init__(self, printer: str, reason: str, *, retryable: bool) -> None:
        super().__init__(f"printer {printer}: {reason}", retryable=retryable)
        self.printer = printer
        self.reason = reason


class CommandRejected(AgentError):
    """The agent will not run this command (bad arguments, not configured, not allowed)."""


class HostCommandFailed(AgentError):
    """A host command (``reboot``, ``shutdown``) exited non-zero; the tail of its output is kept."""

    def __init__(self, command: str, returncode: int | None, output: str) -> None:
        super().__init__(f"{command!r} exited {returncode}: {output}")
        self.command = command
        self.returncode = returncode
        self.output = output


class UpdateRefused(AgentError):
    """The update cannot be attempted (bad arguments, an untrusted URL): the command is rejected."""


class UpdateFailed(AgentError):
    """The update was attempted and failed; nothing was installed or selected. The message is the detail."""


class VersionError(AgentError):
    """A package that cannot be installed, or a version store that cannot be changed."""


__all__ = [
    "AgentConfigError",
    "AgentError",
    "CommandRejected",
    "HostCommandFailed",
    "PrinterLinkError",
    "UpdateFailed",
    "UpdateRefused",
    "VersionError",
]
