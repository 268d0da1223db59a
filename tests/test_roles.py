"""Installable per role: ``printfleet-agent`` and ``printfleet-bridge`` need only their part and the
kernel, ``python -m printfleet agent ...`` (what hosts' launchers start) imports no controller code,
and ``printfleet`` without the controller's stack says so in one line.

The fast checks read the import graph and run the commands here; the ``full`` ones build this
checkout into a wheel and install it with only ``[agent]`` (or ``[bridge]``) in a new virtual
environment, as a printer host or a phone would.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grimp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_agent.config import load_config, write_config
from kernel.errors import ConfigError
from printfleet.cli_common import CliError, describe

REPO = Path(__file__).resolve().parent.parent
#: What no printer host or phone should need: the controller, the broker and their stacks.
CONTROLLER_SIDE: tuple[str, ...] = ("cloud", "broker", "fastapi", "uvicorn", "sqlalchemy", "alembic")
CONTROLLER_SIDE += ("aiosqlite", "amqtt", "PIL", "escpos", "printfleet.cli", "printfleet.runner")
CONTROLLER_SIDE += ("printfleet.cli_serve",)
#: The simulated BLE radio: only the bridge's `--ble-backend bumble:SPEC` (printfleet[ble-sim]) loads it.
AGENT_FORBIDDEN = (*CONTROLLER_SIDE, "phone_bridge", "bleak", "bumble")
BRIDGE_FORBIDDEN = (*CONTROLLER_SIDE, "device_agent", "serial")


def _hits(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(
        "kernel",
        "printfleet",
        "broker",
        "cloud",
        "device_agent",
        "phone_bridge",
        include_external_packages=True,
        exclude_type_checking_imports=True,
    )


def test_the_role_commands_import_only_their_part_and_the_kernel(graph: grimp.ImportGraph) -> None:
    """Every import the role modules can reach (lazy ones inside functions too)."""
    agent = set(graph.find_upstream_modules("printfleet.agent_cli"))
    assert _hits(agent, AGENT_FORBIDDEN) == []
    assert "device_agent.agent" in agent and "device_agent.launcher" in agent
    bridge = set(graph.find_upstream_modules("printfleet.bridge_cli"))
    assert _hits(bridge, BRIDGE_FORBIDDEN) == []
    assert "phone_bridge.bridge" in bridge
    entry = set(graph.find_upstream_modules("printfleet.entry"))
    assert "printfleet.agent_cli" in entry and "printfleet.cli" in entry  # both, each imported lazily


def _agent_config(tmp_path: Path) -> Path:
    """A valid agent config whose broker is a closed port (the agent keeps trying to connect)."""
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    path = tmp_path / "k1.agent.toml"
    write_config(
        path,
        {
            "device": {"name": "k1"},
            "mqtt": {"urls": ["mqtt://127.0.0.1:9"], "username": "dev-k1", "password": "p" * 24},
            "controller": {"http": "http://127.0.0.1:9", "public_keys": [base64.b64encode(key).decode()]},
            "agent": {"state_dir": "k1-state"},
        },
    )
    assert load_config(path).device == "k1"
    return path


def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_python_m_printfleet_agent_loads_no_controller_code(tmp_path: Path) -> None:
    """What the launchers of hosts in the field start goes straight to the agent's command line."""
    cfg = _agent_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "printfleet", "agent", "status", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "k1" in done.stdout and "mqtt://127.0.0.1:9" in done.stdout
    imported = _imported(done.stderr)
    assert {"device_agent.config", "device_agent.versions", "printfleet.agent_cli"} <= imported
    assert _hits(imported, AGENT_FORBIDDEN) == []


def test_expected_errors_become_one_line_and_an_exit_code() -> None:
    assert describe(CliError("give a TARGET", code=2)) == (2, "give a TARGET")
    assert describe(ConfigError("agent config: [mqtt] urls ...")) == (1, "agent config: [mqtt] urls ...")
    missing = ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
    assert describe(missing) == (1, "fastapi is not installed: this needs pip install 'printfleet[cloud]'")
    assert describe(ModuleNotFoundError("x", name="bleak.backends"))[1].endswith("'printfleet[bridge]'")  # type: ignore[index]
    assert describe(ModuleNotFoundError("x", name="somethingelse")) is None  # a bug: keeps its traceback
    assert describe(ValueError("a bug")) is None


BLOCK_FASTAPI = """
import sys
from importlib.abc import MetaPathFinder

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fastapi":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["printfleet", *sys.argv[1:]]
from printfleet.entry import main
main()
"""


@pytest.mark.parametrize("args", [["--help"], ["devices", "list"], ["bridge", "run", "--help"]])
def test_printfleet_without_the_controller_stack_says_what_to_install(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_FASTAPI, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "pip install 'printfleet[cloud]'" in done.stderr and "printfleet-agent" in done.stderr


def test_printfleet_agent_needs_no_controller_stack() -> None:
    """`printfleet agent run`, what hosts' systemd units start, works on an agent-only install."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_FASTAPI, "agent", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "Usage: printfleet agent run" in done.stdout, done.stderr


# -- new virtual environments with one role installed (full: builds and installs) ---------------

SOURCES: tuple[str, ...] = ("pyproject.toml", "README.md", "kernel", "printfleet", "broker", "cloud")
SOURCES += ("device_agent", "phone_bridge")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout (as it is, uncommitted changes too) built into a wheel, once per module."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"), str(src)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    print(f"\n[roles] wheel built in {time.monotonic() - started:.1f} s")
    (built,) = (root / "dist").glob("printfleet-*.whl")
    return built


def _venv(tmp_path: Path, wheel: Path, extra: str) -> Path:
    """A new virtual environment with ``printfleet[extra]`` from ``wheel`` and nothing else."""
    venv = tmp_path / f"venv-{extra}"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
            "-c", str(REPO / "constraints.txt"), f"printfleet[{extra}] @ {wheel.as_uri()}",
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\n[roles] venv with printfleet[{extra}] in {time.monotonic() - started:.1f} s")
    return venv


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRINTFLEET_HOME")}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False, env=env, cwd=cwd
    )


def _check_no_controller(venv: Path, *absent: str) -> None:
    for module in absent:
        done = _run(venv / "bin" / "python", "-c", f"import {module}")
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, (module, done.stderr)
    full = _run(venv / "bin" / "printfleet", "--help")
    assert full.returncode == 1 and full.stdout == "", full
    assert full.stderr.count("\n") == 1 and "printfleet[cloud]" in full.stderr, full.stderr


@pytest.mark.full
def test_a_host_with_only_the_agent_installed(tmp_path: Path, wheel: Path) -> None:
    agent_venv = _venv(tmp_path, wheel, "agent")
    bin_dir = agent_venv / "bin"
    for argv in (["--help"], ["run", "--help"], ["status", "--help"], ["versions", "--help"]):
        done = _run(bin_dir / "printfleet-agent", *argv)
        assert done.returncode == 0 and "Usage: printfleet-agent" in done.stdout, done
    done = _run(bin_dir / "printfleet", "agent", "run", "--help")  # what hosts' systemd units run
    assert done.returncode == 0 and "Usage: printfleet agent run" in done.stdout, done
    _check_no_controller(agent_venv, "fastapi", "sqlalchemy", "bumble", "uvicorn", "alembic", "bleak")

    # what the launchers of hosts in the field start runs the agent from this install
    cfg = _agent_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [bin_dir / "python", "-m", "printfleet", "agent", "run", "--config", cfg],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        journal = load_config(cfg).journal_path
        deadline = time.monotonic() + 30
        while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the agent's first write, bounded by the deadline
        assert journal.exists(), "the agent did not start"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "ModuleNotFoundError" not in err, err
    status = _run(bin_dir / "printfleet-agent", "status", "--config", cfg, "--json", cwd=tmp_path)
    assert status.returncode == 0 and '"device": "k1"' in status.stdout, status


@pytest.mark.full
def test_a_phone_with_only_the_bridge_installed(tmp_path: Path, wheel: Path) -> None:
    venv = _venv(tmp_path, wheel, "bridge")
    for argv in (["--help"], ["run", "--help"], ["enroll", "--help"]):
        done = _run(venv / "bin" / "printfleet-bridge", *argv)
        assert done.returncode == 0 and "Usage: printfleet-bridge" in done.stdout, done
    assert _run(venv / "bin" / "python", "-c", "import bleak, phone_bridge.bridge").returncode == 0
    _check_no_controller(venv, "fastapi", "sqlalchemy", "bumble", "uvicorn", "alembic", "serial")
