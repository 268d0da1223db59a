"""The agent's side of `update`: wheel checks, the version store and its trials, the URL rule, the
bounded download, and the launcher's rollback (with real child processes)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from device_agent.launcher import Launcher
from device_agent.update import UpdateFailed, Updater, UpdateRefused, trusted_url
from device_agent.versions import VersionError, VersionStore
from kernel.wheel import WheelError, read_wheel
from tests.wheels import sha256_of, tiny_wheel, write_wheel

CONTROLLER = "http://10.0.0.5:8080"


# -- wheels ------------------------------------------------------------------------------------


def test_a_good_wheel_is_read(tmp_path: Path) -> None:
    info = read_wheel(tiny_wheel(tmp_path, "0.2.0"))
    assert info.version == "0.2.0"
    assert set(info.files.values()) >= {"printfleet/__init__.py", "printfleet-0.2.0.dist-info/METADATA"}


def _tampered(tmp_path: Path) -> Path:
    good = tiny_wheel(tmp_path, "0.2.0")
    bad = tmp_path / "bad" / good.name
    bad.parent.mkdir()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(
                item, b"__version__ = 'evil'\n" if item.filename == "printfleet/__init__.py" else data
            )
    return bad


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: (d / "x.whl").write_bytes(b"not a zip") and d / "x.whl", "not a valid wheel"),
        (lambda d: write_wheel(d, "1.0", {"other/__init__.py": b""}, name="other"), "not a printfleet wheel"),
        (lambda d: write_wheel(d, "1.0", {"cloud/x.py": b""}), "no printfleet/__init__.py"),
        (lambda d: write_wheel(d, "1.0", {"../evil.py": b"", "printfleet/__init__.py": b""}), "unsafe path"),
        (
            lambda d: write_wheel(
                d, "1.0", {"printfleet/__init__.py": b"", "printfleet-1.0.data/scripts/run": b"#!/bin/sh"}
            ),
            "installs scripts files",
        ),
        (_tampered, "does not match its RECORD hash"),
    ],
    ids=["not-a-zip", "other-project", "no-package", "path-traversal", "scripts", "tampered"],
)
def test_bad_wheels_are_refused(tmp_path: Path, make: object, reason: str) -> None:
    wheel = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(WheelError, match=reason):
        read_wheel(wheel)
    store = VersionStore(tmp_path / "versions")
    with pytest.raises(VersionError, match=reason):
        store.install_wheel(wheel, sha256_of(wheel), now_ms=1)
    assert store.installs() == []


# -- the version store -------------------------------------------------------------------------


def test_trial_confirm_and_rollback_keep_the_previous_version(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "versions")
    assert not store.exists() and store.boot(0).install is None  # nothing installed: the base env
    w2 = tiny_wheel(tmp_path, "0.2.0")
    v2 = store.install_wheel(w2, sha256_of(w2), now_ms=1)
    assert (v2.path / "printfleet" / "__init__.py").read_text() == '__version__ = "0.2.0"\n'
    assert store.install_wheel(w2, sha256_of(w2), now_ms=2) == v2  # the same package: reused
    store.begin_trial(v2, previous_version="0.1.0", command_id="c1", health_s=30)
    assert store.exists()
    boot = store.boot(1000)
    assert boot.install == v2 and boot.trial is not None and boot.trial.deadline == 31_000
    assert store.confirm(command_id="c1", version="0.1.0", now_ms=1500) is None  # not the trial's version
    done = store.confirm(command_id="c1", version="0.2.0", now_ms=2000)
    assert done is not None and done.confirmed and (done.old_version, done.new_version) == ("0.1.0", "0.2.0")
    assert store.boot(3000) == type(boot)(install=v2)  # 0.2.0 is current now

    w3 = tiny_wheel(tmp_path, "0.3.0")
    v3 = store.install_wheel(w3, sha256_of(w3), now_ms=3)
    store.begin_trial(v3, previous_version="0.2.0", command_id="c2", health_s=5)
    with pytest.raises(VersionError, match="another update"):
        store.begin_trial(v3, previous_version="0.2.0", command_id="c3", health_s=5)
    assert store.boot(10_000).install == v3
    failed = store.fail_trial("version 0.3.0 exited with code 1", 11_000)
    assert failed is not None and not failed.confirmed and failed.reason == "version 0.3.0 exited with code 1"
    assert store.outcome("c2") == failed and store.outcome("c1") == done
    assert store.boot(12_000).install == v2  # back to the previous version, which was never unselected
    assert {i.name for i in store.installs()} == {v2.name, v3.name}  # and 0.3.0 is still on disk

    store.use(None)  # an operator may go back to the base environment by hand
    assert store.boot(13_000).install is None
    store.use(v3.name)
    assert store.boot(13_000).install == v3
    with pytest.raises(VersionError, match="no install named"):
        store.use("9.9.9-000000000000")


def test_a_trial_past_its_deadline_or_its_starts_is_rolled_back_at_boot(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "versions", max_trial_starts=2)
    wheel = tiny_wheel(tmp_path, "0.2.0")
    v2 = store.install_wheel(wheel, sha256_of(wheel), now_ms=1)
    store.begin_trial(v2, previous_version="0.1.0", command_id="late", health_s=10)
    assert store.boot(0).trial is not None
    assert store.boot(10_001).install is None  # the deadline passed while nobody watched
    assert "did not report healthy within 10 s" in (store.outcome("late").reason or "")  # type: ignore[union-attr]

    store.begin_trial(v2, previous_version="0.1.0", command_id="loop", health_s=600)
    assert store.boot(0).trial is not None
    assert store.boot(1).trial is not None
    assert store.boot(2).trial is None  # started twice without confirming: given up
    assert "was started 2 times" in (store.outcome("loop").reason or "")  # type: ignore[union-attr]


def test_prune_keeps_the_current_and_the_newest_previous(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "versions")
    installs = []
    for i in range(5):
        wheel = tiny_wheel(tmp_path, f"0.{i}.0")
        installs.append(store.install_wheel(wheel, sha256_of(wheel), now_ms=i))
    store.use(installs[0].name)
    assert sorted(store.prune()) == [installs[1].name, installs[2].name]
    assert {i.name for i in store.installs()} == {installs[0].name, installs[3].name, installs[4].name}


def test_an_unreadable_state_file_starts_the_base_environment(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "versions")
    store.root.mkdir()
    store.state_path.write_text("{not json")
    assert store.boot(0).install is None


# -- the package URL ---------------------------------------------------------------------------


def test_package_urls_must_lead_to_the_controller_or_use_https() -> None:
    assert (
        trusted_url("/v1/packages/ab/p.whl?grant=x", CONTROLLER)
        == f"{CONTROLLER}/v1/packages/ab/p.whl?grant=x"
    )
    assert trusted_url("http://10.0.0.5:8080/p.whl", CONTROLLER) == "http://10.0.0.5:8080/p.whl"
    assert trusted_url("https://downloads.example.org/p.whl", CONTROLLER).startswith("https://")
    for url, reason in [
        ("http://10.0.0.6:8080/p.whl", "not on this agent's controller"),
        ("http://10.0.0.5:8081/p.whl", "not on this agent's controller"),
        ("file:///etc/passwd", "not http"),
        ("ftp://10.0.0.5/p.whl", "not http"),
        ("https://user:pw@example.org/p.whl", "credentials"),
    ]:
        with pytest.raises(UpdateRefused, match=reason):
            trusted_url(url, CONTROLLER)


# -- the download ------------------------------------------------------------------------------


def _updater(tmp_path: Path, handler: object, **kw: object) -> Updater:
    return Updater(
        VersionStore(tmp_path / "versions"),
        controller_http=CONTROLLER,
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def test_download_verify_install_and_trial(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path, "0.2.0")
    body = wheel.read_bytes()
    seen: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=body)

    updater = _updater(tmp_path, serve)
    args = {"url": "/v1/packages/x/p.whl?grant=g", "sha256": sha256_of(wheel), "health_s": 30}
    assert await updater.start(args, command_id="c1", running_version="0.1.0", now_ms=5) is None
    assert seen == [f"{CONTROLLER}/v1/packages/x/p.whl?grant=g"]
    trial = updater.store.trial()
    assert trial is not None and trial.version == "0.2.0" and trial.previous_version == "0.1.0"
    assert not (updater.store.root / ".downloads" / f"{sha256_of(wheel)}.whl").exists()
    # the same package again on the same host: installed already, nothing downloaded
    updater.store.use(None)
    assert await updater.start(args, command_id="c2", running_version="0.1.0", now_ms=6) is None
    assert len(seen) == 1
    # the version that already runs: nothing to restart for
    other = _updater(tmp_path / "o", serve)
    (tmp_path / "o").mkdir()
    result = await other.start(args, command_id="c3", running_version="0.2.0", now_ms=7)
    assert result == {"old_version": "0.2.0", "new_version": "0.2.0", "unchanged": True}


async def test_a_package_whose_sha256_differs_is_not_installed(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path, "0.2.0")
    updater = _updater(tmp_path, lambda _r: httpx.Response(200, content=wheel.read_bytes() + b"x"))
    with pytest.raises(
        UpdateFailed, match=f"sha256 mismatch: expected {sha256_of(wheel)}, got .*nothing installed"
    ):
        await updater.start(
            {"url": "/p.whl", "sha256": sha256_of(wheel)}, command_id="c", running_version="0.1.0", now_ms=1
        )
    assert updater.store.installs() == [] and updater.store.trial() is None


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(404, content=b"no"), "HTTP 404"),
        (httpx.Response(302, headers={"location": "http://elsewhere/p.whl"}), "HTTP 302"),
        (httpx.Response(200, content=b"x" * 5000), "over the 4096-byte limit"),
        (httpx.Response(200, headers={"content-length": "999999"}, content=b""), "over the 4096-byte limit"),
    ],
    ids=["not-found", "redirect", "too-big", "too-big-announced"],
)
async def test_bad_downloads_fail_clearly(tmp_path: Path, response: httpx.Response, reason: str) -> None:
    updater = _updater(tmp_path, lambda _r: response, max_bytes=4096)
    with pytest.raises(UpdateFailed, match=reason):
        await updater.start(
            {"url": "/p.whl?grant=secret", "sha256": "0" * 64}, command_id="c", running_version="0", now_ms=1
        )


async def test_unreachable_download_and_bad_arguments(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    updater = _updater(tmp_path, refuse)
    with pytest.raises(
        UpdateFailed, match=re.escape("download of http://10.0.0.5:8080/p.whl failed: ConnectError")
    ) as info:
        await updater.start(
            {"url": "/p.whl?grant=secret", "sha256": "0" * 64}, command_id="c", running_version="0", now_ms=1
        )
    assert "secret" not in str(info.value)  # the grant never shows in a detail or a log
    for args, reason in [
        ({"sha256": "0" * 64}, "url"),
        ({"url": "/p.whl", "sha256": "XYZ"}, "sha256"),
        ({"url": "/p.whl", "sha256": "0" * 64, "run": "rm -rf /"}, "run"),
        ({"url": "http://evil.example/p.whl", "sha256": "0" * 64}, "not on this agent's controller"),
    ]:
        with pytest.raises(UpdateRefused, match=reason):
            await updater.start(args, command_id="c", running_version="0", now_ms=1)


async def test_settle_reports_confirmed_rolled_back_or_undecided(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path, "0.2.0")
    updater = _updater(tmp_path, lambda _r: httpx.Response(200, content=wheel.read_bytes()))
    args = {"url": "/p.whl", "sha256": sha256_of(wheel)}
    await updater.start(args, command_id="ok", running_version="0.1.0", now_ms=1)
    assert await updater.settle("ok", running_version="0.1.0", now_ms=2) is None  # not the new version
    done = await updater.settle("ok", running_version="0.2.0", now_ms=3)
    assert done is not None and done.state == "succeeded"
    assert done.result == {
        "old_version": "0.1.0",
        "new_version": "0.2.0",
        "install": f"0.2.0-{sha256_of(wheel)[:12]}",
    }

    wheel3 = tiny_wheel(tmp_path, "0.3.0")
    updater3 = _updater(tmp_path, lambda _r: httpx.Response(200, content=wheel3.read_bytes()))
    await updater3.start(
        {"url": "/p.whl", "sha256": sha256_of(wheel3)}, command_id="bad", running_version="0.2.0", now_ms=4
    )
    updater3.store.fail_trial("version 0.3.0 exited with code 1 before reporting healthy", 5)
    back = await updater3.settle("bad", running_version="0.2.0", now_ms=6)
    assert back is not None and back.state == "failed"
    assert back.detail == "rolled back: version 0.3.0 exited with code 1 before reporting healthy"
    assert back.result["attempted_version"] == "0.3.0" and back.result["new_version"] == "0.2.0"

    never = await updater3.settle("unknown", running_version="0.2.0", now_ms=7)
    assert (
        never is not None
        and never.state == "failed"
        and "before the update was put on trial" in str(never.detail)
    )


# -- the launcher ------------------------------------------------------------------------------

#: A stand-in agent process: on trial (PYTHONPATH set) it misbehaves as told, otherwise it exits 3.
CHILD = """
import os, sys, time
if os.environ.get("PYTHONPATH"):
    mode = open(os.path.join(os.environ["PYTHONPATH"], "mode")).read()
    if mode == "hang":
        time.sleep(60)
    sys.exit(1)
sys.exit(3)
"""


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("crash", "exited with code 1 before reporting healthy"), ("hang", "did not report healthy within 1 s")],
)
async def test_launcher_rolls_back_a_trial_that_crashes_or_stays_silent(
    tmp_path: Path, mode: str, reason: str
) -> None:
    store = VersionStore(tmp_path / "versions")
    wheel = tiny_wheel(tmp_path, "0.2.0")
    v2 = store.install_wheel(wheel, sha256_of(wheel), now_ms=1)
    (v2.path / "mode").write_text(mode)
    store.begin_trial(v2, previous_version="0.1.0", command_id="c", health_s=1)
    launcher = Launcher(store, tmp_path / "agent.toml", command=[sys.executable, "-c", CHILD])
    assert await launcher.run() == 3  # the previous version (here: the base environment) ran next
    outcome = store.outcome("c")
    assert outcome is not None and not outcome.confirmed and reason in (outcome.reason or "")
    assert store.trial() is None and store.current() is None
    assert json.loads(store.state_path.read_text())["current"] is None
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == v2.sha256
