"""``printfleet tokens ...``, ``printfleet keys ...`` and ``printfleet audit``: who may do what, the
instruction-signing keys, and the record of what was asked."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from printfleet.cli_api import call
from printfleet.cli_common import JsonOpt, emit_json, out, ts

tokens_app = typer.Typer(no_args_is_help=True, help="Operator API tokens (admin, print, read).")


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[
        str, typer.Option(help="admin, print (submit and follow jobs) or read (look only).")
    ] = "print",
) -> None:
    """Create a scoped API token; it is shown once."""
    result = call("POST", "/v1/tokens", json={"name": name, "scope": scope})
    out.print(f"token {name} ({scope}); keep it secret, it is not shown again:")
    out.print(result["token"], markup=False)


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    """API tokens and their scopes (never their values)."""
    tokens = call("GET", "/v1/tokens")
    if as_json:
        emit_json(tokens)
        return
    table = Table("name", "scope", "created", "revoked")
    for t in tokens:
        table.add_row(t["name"], t["scope"], ts(t["created_at"]), ts(t["revoked_at"]))
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke a token at once."""
    call("DELETE", f"/v1/tokens/{name}")
    out.print(f"token {name} revoked")


keys_app = typer.Typer(no_args_is_help=True, help="The controller's instruction-signing keys.")


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Signing keys, the active one first, with the devices that trust each."""
    keys = call("GET", "/v1/keys")
    if as_json:
        emit_json(keys)
        return
    table = Table("key id", "active", "trusted by")
    for k in keys:
        table.add_row(k["kid"], "yes" if k["active"] else "", ", ".join(k["devices_trusting"]) or "-")
    out.print(table)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; devices learn it (signed by a key they trust) without being cut off."""
    result = call("POST", "/v1/keys/rotate")
    out.print(f"active signing key is now {result['active']}; still trusted: {', '.join(result['keys'][1:])}")
    out.print("retire the old key with `printfleet keys retire KID` once every device trusts the new one")


@keys_app.command("retire")
def keys_retire(kid: str) -> None:
    """Stop using an old signing key (refused while a device trusts only that key)."""
    call("DELETE", f"/v1/keys/{kid}")
    out.print(f"key {kid} retired")


def audit_cmd(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    actor: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, error, denied or refused.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The controller's audit log: who asked for what, and every refusal."""
    params = {
        k: v for k, v in {"limit": limit, "actor": actor, "action": action, "outcome": outcome}.items() if v
    }
    events = call("GET", "/v1/audit", params=params)
    if as_json:
        emit_json(events)
        return
    table = Table("time", "actor", "action", "target", "outcome", "detail")
    for e in events:
        table.add_row(
            ts(e["at"]), e["actor"], e["action"], e["target"] or "", e["outcome"], e["detail"] or ""
        )
    out.print(table)
