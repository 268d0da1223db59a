"""The one-time enrolment exchange (``POST /v1/enroll``) shared by ``agent enroll`` and ``bridge enroll``."""

from __future__ import annotations

from typing import Any, Literal

from printfleet.cli_common import fail

Kind = Literal["device", "bridge"]

_WRONG_KIND = {
    "device": "this token enrols a bridge, not a printer host: use printfleet bridge enroll",
    "bridge": "this token enrols a printer host, not a bridge: use printfleet agent enroll",
}
_CONFIG_KEY = {"device": "agent_config", "bridge": "bridge_config"}


def redeem_enrollment(server: str, token: str, kind: Kind) -> dict[str, Any]:
    """Exchange a one-time enrolment token for a device's or a bridge's config."""
    import httpx

    try:
        resp = httpx.post(f"{server.rstrip('/')}/v1/enroll", json={"token": token, "kind": kind}, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the controller at {server}: {exc}")
    if resp.status_code == 409:
        fail(_WRONG_KIND[kind])
    try:
        result = resp.json()
    except ValueError:
        fail(
            resp.text
            if resp.status_code >= 400
            else f"the controller answered HTTP {resp.status_code} without JSON"
        )
    if resp.status_code >= 400:
        fail(str(result.get("error", resp.text)) if isinstance(result, dict) else resp.text)
    if not isinstance(result, dict) or _CONFIG_KEY[kind] not in result:
        fail(_WRONG_KIND[kind])
    return result
