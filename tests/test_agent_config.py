"""The agent's config file: every validator refuses bad input with a clear message."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from device_agent.config import AgentError, dump_config, load_config, parse_config, write_config
from kernel import wire

KEY = wire.SigningKey.generate().public_b64()


def good() -> dict[str, Any]:
    return {
        "device": {"name": "kiosk-1"},
        "mqtt": {
            "urls": ["mqtt://127.0.0.1:1883"],
            "username": "dev-kiosk-1",
            "password": "s3cret",
            "keepalive": 10,
        },
        "controller": {"http": "http://127.0.0.1:8080", "name": "main", "public_keys": [KEY]},
        "agent": {"state_dir": "state"},
    }


def test_good_config_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_config(path, good())
    cfg = load_config(path)
    assert cfg.device == "kiosk-1" and cfg.keepalive == 10
    assert cfg.state_dir == tmp_path / "state"
    assert path.stat().st_mode & 0o077 == 0  # it holds credentials


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("device", "name", "Bad Name", "invalid device name"),
        ("mqtt", "urls", [], "urls"),
        ("mqtt", "urls", ["http://x"], "invalid broker URL"),
        ("mqtt", "username", "dev-other", "username must be"),
        ("mqtt", "keepalive", 0, "keepalive"),
        ("mqtt", "keepalive", True, "keepalive"),
        ("controller", "http", "ftp://x", "http"),
        ("controller", "public_keys", ["not base64!"], "public_keys"),
        ("agent", "state_dir", 5, "state_dir"),
    ],
)
def test_bad_values_are_refused(section: str, key: str, value: Any, message: str) -> None:
    data = good()
    data[section][key] = value
    with pytest.raises(AgentError, match=message):
        parse_config(data)


def test_missing_sections_and_bad_files(tmp_path: Path) -> None:
    data = good()
    del data["controller"]
    with pytest.raises(AgentError, match=r"\[controller\]"):
        parse_config(data)
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nname=")
    with pytest.raises(AgentError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(AgentError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_printer_specs_are_validated() -> None:
    data = good()
    data["printers"] = [{"name": "p1", "serial_url": "/dev/ttyUSB0", "baud": 1}]
    with pytest.raises(AgentError, match="baud"):
        parse_config(data)


def test_writer_escapes_strings() -> None:
    data = good()
    data["mqtt"]["password"] = 'quote" back\\slash\nnewline'
    assert parse_config(tomllib.loads(dump_config(data))).password == 'quote" back\\slash\nnewline'


async def test_agent_refuses_a_journal_of_another_fleet(tmp_path: Path) -> None:
    """A state directory left by another controller's agent must not print that fleet's jobs."""
    import asyncio
    import sys

    from device_agent.journal import Journal

    path = tmp_path / "agent.toml"
    write_config(path, good())
    journal = Journal(tmp_path / "state" / "journal.db")
    await journal.open()
    await journal.set_kv("fleet_key", "0123456789abcdef")  # written under another controller's key
    await journal.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "printfleet",
        "agent",
        "run",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "belongs to another controller" in err.decode()
    assert "Traceback" not in err.decode()
