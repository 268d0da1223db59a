"""Real printfleet wheels for the update tests, written with the standard library (zipfile).

A wheel here is what a build backend would produce for a pure-Python project: the packages' files,
and a ``.dist-info`` with METADATA, WHEEL and a RECORD of sha256 hashes.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kernel", "printfleet", "broker", "cloud", "device_agent", "phone_bridge")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    dest_dir: Path, version: str, files: Mapping[str, bytes], *, name: str = "printfleet"
) -> Path:
    """A wheel of ``files`` (path inside the wheel -> bytes) with a consistent dist-info."""
    dist_info = f"{name}-{version}.dist-info"
    meta = {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests/wheels.py\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    contents = {**files, **meta}
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents.items())
    record += f"{dist_info}/RECORD,,\n"
    path = dest_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in contents.items():
            zf.writestr(member, data)
        zf.writestr(f"{dist_info}/RECORD", record.encode())
    return path


def source_files(version: str, *, changes: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """This checkout's packages with ``__version__`` set to ``version`` (and files replaced)."""
    files: dict[str, bytes] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".mako"):
                files[path.relative_to(REPO).as_posix()] = path.read_bytes()
    init = files["kernel/__init__.py"].decode()
    assert '__version__ = "' in init
    head, _, rest = init.partition('__version__ = "')
    files["kernel/__init__.py"] = (head + f'__version__ = "{version}"' + rest.split('"', 1)[1]).encode()
    for member, text in (changes or {}).items():
        files[member] = text.encode()
    return files


def agent_wheel(dest_dir: Path, version: str, *, changes: Mapping[str, str] | None = None) -> Path:
    """A complete printfleet wheel of this checkout at ``version`` (an agent can run from it)."""
    return write_wheel(dest_dir, version, source_files(version, changes=changes))


def tiny_wheel(dest_dir: Path, version: str) -> Path:
    """A printfleet wheel with just the package marker: enough for the version store, not to run."""
    return write_wheel(dest_dir, version, {"printfleet/__init__.py": f'__version__ = "{version}"\n'.encode()})


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
