"""The broker's error root (under :class:`kernel.errors.PrintfleetError`)."""

from __future__ import annotations

from kernel.errors import PrintfleetError

__all__ = ["BrokerError"]


class BrokerError(PrintfleetError):
    """The broker could not start, stop or be configured, or a credential is malformed."""
