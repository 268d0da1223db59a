"""Agent packages kept by the controller, and the download grants that let agents fetch them.

A package is stored once under its sha256 (``DATA_DIR/packages/<sha256>.whl`` and a small JSON of
facts beside it), after its bytes were checked against the sha256 the operator gave and the
wheel itself was checked (:mod:`kernel.wheel`). Agents have no API token: an ``update``
command carries a download URL with a *grant*, an HMAC (by a key only the controller holds) of
the sha256 and an expiry, so only whoever received that signed command can fetch the package,
and only until the command could still run.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloud.config import write_private
from cloud.errors import ControllerError, NotFound
from kernel import wire
from kernel.wheel import WheelError, read_wheel, wheel_filename

log = logging.getLogger(__name__)

#: Largest package the controller accepts (the HTTP API's request limit is a little above it).
MAX_UPLOAD_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Package:
    sha256: str
    filename: str
    version: str
    size: int
    uploaded_at: int
    uploaded_by: str


def package_view(pkg: Package) -> dict[str, Any]:
    return asdict(pkg)


class PackageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _key(self) -> bytes:
        path = self.root / "grant.key"
        if not path.exists():
            write_private(path, secrets.token_hex(32) + "\n")
        return bytes.fromhex(path.read_text().strip())

    def path(self, sha256: str) -> Path:
        return self.root / f"{_checked_sha(sha256)}.whl"

    def put(self, data: bytes, sha256: str, *, uploaded_by: str) -> tuple[Package, bool]:
        """Store a package whose bytes hash to ``sha256``; (the package, whether it is new)."""
        sha256 = _checked_sha(sha256)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ControllerError(f"package of {len(data)} bytes is over the {MAX_UPLOAD_BYTES}-byte limit")
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ControllerError(f"sha256 mismatch: the upload hashes to {actual}, not {sha256}", status=422)
        existing = self._read(sha256)
        if existing is not None:
            return existing, False
        try:
            info = read_wheel(io.BytesIO(data))
        except WheelError as exc:
            raise ControllerError(f"not an agent package: {exc}", status=422) from exc
        pkg = Package(
            sha256=sha256,
            filename=wheel_filename(info.version),
            version=info.version,
            size=len(data),
            uploaded_at=wire.now_ms(),
            uploaded_by=uploaded_by,
        )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path(sha256).with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(self.path(sha256))
        write_private(self.root / f"{sha256}.json", json.dumps(asdict(pkg)) + "\n")
        log.info("stored package %s (printfleet %s, %d bytes)", sha256, pkg.version, pkg.size)
        return pkg, True

    def get(self, sha256: str) -> Package:
        pkg = self._read(_checked_sha(sha256))
        if pkg is None:
            raise NotFound(f"no package {sha256}")
        return pkg

    def list(self) -> list[Package]:
        found = [self._read(p.stem) for p in self.root.glob("*.json")] if self.root.is_dir() else []
        return sorted((p for p in found if p is not None), key=lambda p: p.uploaded_at, reverse=True)

    def _read(self, sha256: str) -> Package | None:
        try:
            data = json.loads((self.root / f"{sha256}.json").read_text())
            pkg = Package(**data)
        except (OSError, ValueError, TypeError):
            return None
        return pkg if self.path(sha256).exists() else None

    # -- download grants ----------------------------------------------------------------------

    def grant(self, sha256: str, until_ms: int) -> str:
        return hmac.new(self._key(), f"{sha256}:{until_ms}".encode(), hashlib.sha256).hexdigest()

    def check_grant(self, sha256: str, until_ms: int, grant: str, now_ms: int) -> bool:
        return now_ms <= until_ms and hmac.compare_digest(self.grant(sha256, until_ms), grant)

    def download_url(self, pkg: Package, until_ms: int) -> str:
        """The URL an update command carries: relative, so the agent resolves it against the
        controller it is configured with."""
        grant = self.grant(pkg.sha256, until_ms)
        return f"/v1/packages/{pkg.sha256}/{pkg.filename}?until={until_ms}&grant={grant}"


def _checked_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ControllerError("a sha256 is 64 lowercase hex digits", status=422)
    return sha256


def update_args(packages: PackageStore) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    """The ``update`` command's args from a rollout's (a fresh download grant for a stored package)."""

    def build(spec: dict[str, Any], until_ms: int) -> dict[str, Any]:
        url = spec.get("url") or packages.download_url(packages.get(spec["sha256"]), until_ms)
        args = wire.UpdateArgs(
            url=url, sha256=spec["sha256"], version=spec.get("version"), health_s=spec["health_s"]
        )
        return args.model_dump(mode="json")

    return build
