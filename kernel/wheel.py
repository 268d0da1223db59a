"""Agent packages: printfleet wheels, checked before anything is unpacked or served.

Shared by the controller (which checks an uploaded package) and the agent (which checks it again
before installing it). A wheel is accepted when it is a pure-Python ``printfleet`` distribution
with one ``.dist-info`` whose METADATA agrees with its name, whose every file is listed in its
RECORD with a matching sha256, and that has no path leaving the install directory.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from kernel.errors import PrintfleetError

DISTRIBUTION = "printfleet"
#: Largest unpacked wheel (a guard against zip bombs) and most files in one.
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
MAX_FILES = 20_000
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}$")


class WheelError(PrintfleetError):
    """A package that is not an installable printfleet wheel."""


@dataclass(frozen=True, kw_only=True)
class WheelInfo:
    """What a printfleet wheel says about itself (checked before anything is unpacked)."""

    version: str
    files: dict[str, str]  # path inside the wheel -> where it goes in the install directory


def read_wheel(source: Path | IO[bytes]) -> WheelInfo:
    """Check a wheel: a pure-Python printfleet distribution whose files match its RECORD."""
    try:
        with zipfile.ZipFile(source) as zf:
            return _check_wheel(zf)
    except (zipfile.BadZipFile, OSError, KeyError, UnicodeDecodeError, csv.Error) as exc:
        raise WheelError(f"not a valid wheel: {exc}") from exc


def _check_wheel(zf: zipfile.ZipFile) -> WheelInfo:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > MAX_FILES:
        raise WheelError(f"the wheel holds {len(infos)} files (at most {MAX_FILES})")
    if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
        raise WheelError(f"the wheel unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    names = [i.filename for i in infos]
    for name in names:
        pure = PurePosixPath(name)
        if name.startswith("/") or "\\" in name or ".." in pure.parts or ":" in pure.parts[0]:
            raise WheelError(f"the wheel holds an unsafe path {name!r}")
    dist_infos = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        raise WheelError(f"the wheel must hold exactly one .dist-info directory, not {len(dist_infos)}")
    dist_info = dist_infos.pop()
    dist_name, _, dist_version = dist_info.removesuffix(".dist-info").partition("-")
    if dist_name.lower().replace("-", "_") != DISTRIBUTION:
        raise WheelError(f"not a {DISTRIBUTION} wheel ({dist_info})")
    meta = _headers(zf.read(f"{dist_info}/METADATA").decode())
    version = meta.get("version", "")
    if meta.get("name", "").lower() != DISTRIBUTION or version != dist_version:
        raise WheelError(f"{dist_info}/METADATA names {meta.get('name')} {version}")
    if not VERSION_RE.fullmatch(version):
        raise WheelError(f"unusable version {version!r}")
    wheel = _headers(zf.read(f"{dist_info}/WHEEL").decode())
    if wheel.get("root-is-purelib", "").lower() != "true":
        raise WheelError("only pure-Python wheels can be installed (Root-Is-Purelib: true)")
    record: dict[str, str] = {}
    for row in csv.reader(io.StringIO(zf.read(f"{dist_info}/RECORD").decode())):
        if row and row[0]:
            record[row[0]] = row[1] if len(row) > 1 else ""
    files: dict[str, str] = {}
    data_dir = f"{DISTRIBUTION}-{version}.data/"
    for name in names:
        if name == f"{dist_info}/RECORD" or name.startswith(f"{dist_info}/RECORD."):
            continue
        digest = record.get(name)
        if not digest or not digest.startswith("sha256="):
            raise WheelError(f"{name} is not in the wheel's RECORD with a sha256")
        actual = base64.urlsafe_b64encode(hashlib.sha256(zf.read(name)).digest()).rstrip(b"=").decode()
        if digest.removeprefix("sha256=") != actual:
            raise WheelError(f"{name} does not match its RECORD hash")
        target = name
        if name.startswith(data_dir):
            scheme, _, rest = name.removeprefix(data_dir).partition("/")
            if scheme != "purelib":
                raise WheelError(f"the wheel installs {scheme} files ({name}): not supported")
            target = rest
        files[name] = target
    if "printfleet/__init__.py" not in files.values():
        raise WheelError("the wheel has no printfleet/__init__.py")
    return WheelInfo(version=version, files=files)


def _headers(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the body (description) starts after the first blank line
        key, sep, value = line.partition(":")
        if sep and not key.startswith((" ", "\t")):
            out.setdefault(key.strip().lower(), value.strip())
    return out


def wheel_filename(version: str) -> str:
    """The canonical file name of a printfleet wheel of ``version``."""
    return f"{DISTRIBUTION}-{version}-py3-none-any.whl"
