"""Errors the controller raises on purpose."""

from __future__ import annotations

from kernel.errors import PrintfleetError


class ControllerError(PrintfleetError):
    """A request the controller refuses, with the HTTP status an API answer should carry."""

    def __init__(self, message: str, *, status: int = 400, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status


class NotFound(ControllerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


class Conflict(ControllerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)
