"""A small HTTP client of the controller's API, used by the CLI (and usable by scripts)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kernel.errors import PrintfleetError

ENV_SERVER = "PRINTFLEET_SERVER"
ENV_TOKEN = "PRINTFLEET_TOKEN"


class ClientError(PrintfleetError):
    """The controller refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, retryable=status is None)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Target:
    server: str
    token: str


def resolve_target(data_dir: Path, server: str | None, token: str | None) -> Target:
    """Flags, then environment, then the local controller's data directory."""
    server = server or os.environ.get(ENV_SERVER)
    token = token or os.environ.get(ENV_TOKEN)
    if server is None:
        try:
            state = json.loads((data_dir / "state.json").read_text())
            server = str(state["http"])
        except (OSError, ValueError, KeyError) as exc:
            raise ClientError(
                f"no running controller found in {data_dir} (start one with `printfleet up`,"
                f" or give --server URL / {ENV_SERVER})"
            ) from exc
    if token is None:
        try:
            token = (data_dir / "admin.token").read_text().strip()
        except OSError as exc:
            raise ClientError(f"no API token: give --token or {ENV_TOKEN}") from exc
    return Target(server=server.rstrip("/"), token=token)


class ApiClient:
    def __init__(
        self, target: Target, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.target = target
        self._http = httpx.Client(
            base_url=target.server,
            headers={"Authorization": f"Bearer {target.token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        try:
            if timeout is not None:
                kw["timeout"] = timeout
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the controller at {self.target.server}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                message = resp.json().get("error") or resp.text
            except ValueError:
                message = resp.text or resp.reason_phrase
            raise ClientError(str(message), status=resp.status_code)
        return resp.json()

    def stream_lines(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(30.0, read=60.0)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ClientError(resp.text, status=resp.status_code)
                for line in resp.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise ClientError(f"lost the controller at {self.target.server}: {exc}") from exc
