"""Hostile input, generated: HTTP request bodies against a running controller, and agent configs.

Every run is bounded (a fixed number of examples, no deadline flakiness); each asserts that bad
input gets a clear error and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.config import AgentError, parse_config

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)
FIELDS = ["printer", "text", "document", "raw_base64", "copies", "priority", "ttl", "idempotency_key"]
JOB_BODIES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON, max_size=6)


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("fuzz-controller")
    env = {**os.environ, "PRINTFLEET_HOME": str(home)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "printfleet",
            "up",
            "--mqtt-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        state = home / "state.json"
        while not state.exists():
            assert proc.poll() is None, "printfleet up exited"
            assert time.monotonic() < deadline, "printfleet up did not start"
            time.sleep(0.1)  # waiting for a subprocess to write its state file, bounded
        url = json.loads(state.read_text())["http"]
        token = (home / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            r = c.post("/v1/devices", json={"name": "p1", "serial_url": "/dev/ttyUSB9"})
            assert r.status_code == 201
        yield url, token
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow  # a controller process, 150 examples
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JOB_BODIES)
def test_job_bodies(controller: tuple[str, str], body: dict[str, Any]) -> None:
    url, token = controller
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        before = len(c.get("/v1/jobs", params={"limit": 1000}).json())
        resp = c.post("/v1/jobs", json=body)
        assert resp.status_code < 500, resp.text
        after = len(c.get("/v1/jobs", params={"limit": 1000}).json())
        if resp.status_code >= 400:
            assert isinstance(resp.json()["error"], str) and resp.json()["error"]
            assert after == before  # refused: nothing changed
        else:
            assert resp.status_code in (200, 201) and after == before + (resp.status_code == 201)


@pytest.mark.slow  # a controller process, 100 examples
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_raw_bodies_on_every_write_route(controller: tuple[str, str], body: bytes) -> None:
    url, token = controller
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        devices_before = c.get("/v1/devices").json()
        for path in ("/v1/devices", "/v1/printers", "/v1/tokens", "/v1/enroll"):
            resp = c.post(path, content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code < 500 and resp.status_code != 201, (path, resp.status_code, resp.text)
        assert c.get("/v1/devices").json() == devices_before


SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "device": st.dictionaries(st.sampled_from(["name"]) | st.text(max_size=5), JSON, max_size=3),
        "mqtt": st.dictionaries(
            st.sampled_from(["urls", "username", "password", "keepalive"]) | st.text(max_size=5),
            JSON,
            max_size=5,
        ),
        "controller": st.dictionaries(st.sampled_from(["http", "name", "public_keys"]), JSON, max_size=4),
        "agent": st.dictionaries(
            st.sampled_from(["state_dir", "heartbeat_s", "clock_skew_ms"]), JSON, max_size=3
        ),
        "printers": JSON,
        "tls": JSON,
    },
)


@pytest.mark.slow  # 300 examples
@settings(max_examples=300, deadline=None)
@given(data=SECTIONS)
def test_agent_config_only_raises_agent_error(data: dict[str, Any]) -> None:
    try:
        parse_config(data, base_dir=Path("/nonexistent"))
    except AgentError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("agent config")
