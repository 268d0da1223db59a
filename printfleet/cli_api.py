"""The controller's HTTP API as the operator commands use it: the target from the root options."""

from __future__ import annotations

from typing import Any

from printfleet.cli_common import OPTIONS
from printfleet.client import ApiClient, ClientError, resolve_target


def api() -> ApiClient:
    """A client of the controller named by --server/--token, the environment, or the data directory."""
    if OPTIONS.data_dir is None:  # the root callback always sets it
        raise ClientError("no data directory: give --data-dir or --server URL")
    return ApiClient(resolve_target(OPTIONS.data_dir, OPTIONS.server, OPTIONS.token))


def call(method: str, path: str, **kw: Any) -> Any:
    """One request; a refusal raises :class:`ClientError` (one line and exit 1 at the root)."""
    with api() as client:
        return client.request(method, path, **kw)
