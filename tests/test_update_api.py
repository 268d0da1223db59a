"""The update and rollout API and CLI refuse bad input with a clear reason (validators, bad input)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernel import wire
from printfleet.cli import app
from printfleet.cli_update import parse_rate
from tests.fleet import Fleet
from tests.wheels import sha256_of, tiny_wheel


def test_parse_rate() -> None:
    assert parse_rate("10/min") == 10 and parse_rate("2/s") == 120 and parse_rate("30/h") == 0.5
    assert parse_rate("7") == 7 and parse_rate(" 1.5 / min ") == 1.5
    for bad in ("", "fast", "10/day", "-1/min", "0/min", "1e3/min", "7000/min", "200/s"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["k1", "--all"], "give a TARGET"),
        ([], "give a TARGET"),
        (["k1", "--sha256", "xyz"], "--sha256 must be 64 hex digits"),
        (["k1", "--abort-above", "5"], "--abort-above is for rollouts"),
        (["k1", "--rate", "fast"], "invalid rate"),
    ],
)
def test_cli_refuses_bad_update_arguments_before_any_request(args: list[str], reason: str) -> None:
    base = ["--package", "x.whl", "--sha256", "a" * 64]
    if "--sha256" in args:
        base = ["--package", "x.whl"]
    result = CliRunner().invoke(
        app, ["--server", "http://127.0.0.1:9", "--token", "t", "cmd", "update", *args, *base]
    )
    assert result.exit_code == 2, result.output
    assert reason in result.output


async def test_api_refuses_bad_packages_updates_and_rollout_actions(
    embedded_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = embedded_fleet
    await fleet.add_device("k1", "socket://127.0.0.1:9")
    wheel = tiny_wheel(tmp_path, "0.2.0")
    sha = sha256_of(wheel)

    async def status(method: str, path: str, **kw: object) -> tuple[int, str]:
        resp = await fleet.api(method, path, **kw)
        return resp.status_code, resp.json().get("error", "") if resp.status_code >= 400 else ""

    assert await status("PUT", f"/v1/packages/{'0' * 64}", content=wheel.read_bytes()) == (
        422,
        f"sha256 mismatch: the upload hashes to {sha}, not {'0' * 64}",
    )
    assert (await status("PUT", "/v1/packages/ABC", content=b"x"))[0] == 422
    junk = b"not a wheel"
    code, error = await status("PUT", f"/v1/packages/{hashlib.sha256(junk).hexdigest()}", content=junk)
    assert code == 422 and error.startswith("not an agent package: not a valid wheel")
    assert (await fleet.api("PUT", f"/v1/packages/{sha}", content=wheel.read_bytes())).status_code == 201
    assert (await fleet.api("PUT", f"/v1/packages/{sha}", content=wheel.read_bytes())).status_code == 200
    assert (await status("GET", f"/v1/packages/{'1' * 64}"))[0] == 404

    good = {"target": "k1", "sha256": sha}
    for body, expected in [
        ({**good, "all": True}, (422, "give a target")),
        ({**good, "sha256": "1" * 64}, (404, f"no package {'1' * 64}")),
        ({**good, "target": "nobody"}, (404, "no device named 'nobody'")),
        (
            {**good, "health_s": 600, "timeout": 600},
            (422, "the health deadline must be shorter than --timeout"),
        ),
        ({**good, "url": "http://198.51.100.7/p.whl"}, (422, "agents download only over https or from this")),
        ({**good, "url": "ftp://198.51.100.7/p.whl"}, (422, "--package URL must be an http(s):// URL")),
        ({**good, "rate_per_min": 0}, (422, "rate_per_min: Input should be greater than 0")),
        ({**good, "rate_per_min": 10, "abort_above": 101}, (422, "abort_above: Input should be less than")),
        ({**good, "extra": 1}, (422, "extra: Extra inputs are not permitted")),
    ]:
        code, error = await status("POST", "/v1/updates", json=body)
        assert (code, error[: len(expected[1])]) == expected, body

    # the agents' download: only with a valid, unexpired grant, and the package's own name
    pkg = (await fleet.api("GET", f"/v1/packages/{sha}")).json()
    path = f"/v1/packages/{sha}/{pkg['filename']}"
    expired = wire.now_ms() - 1
    store = fleet.svc.packages
    assert (await status("GET", path, params={"until": expired, "grant": store.grant(sha, expired)})) == (
        403,
        "invalid or expired download grant",
    )
    later = wire.now_ms() + 60_000
    ok = await fleet.api("GET", path, params={"until": later, "grant": store.grant(sha, later)})
    assert ok.status_code == 200 and ok.content == wheel.read_bytes()
    wrong_name = f"/v1/packages/{sha}/printfleet-9.9-py3-none-any.whl"
    assert (await status("GET", wrong_name, params={"until": later, "grant": store.grant(sha, later)}))[
        0
    ] == 404
    assert (await status("GET", path, params={"until": later, "grant": "0" * 64}))[0] == 403
    denied = (await fleet.api("GET", "/v1/audit", params={"outcome": "denied"})).json()
    assert any(e["action"] == f"GET {path}"[:64] for e in denied), denied  # audited (action cut to 64)

    assert (await status("POST", "/v1/rollouts/nope/resume", json={}))[0] == 404
    created = (await fleet.api("POST", "/v1/updates", json={**good, "rate_per_min": 1})).json()["rollout"]
    assert await status("POST", f"/v1/rollouts/{created['id']}/resume", json={}) == (
        409,
        f"rollout {created['id']} is running: only an aborted rollout can be resumed",
    )
