"""Test helpers shipped with the package: a real mosquitto broker as a subprocess.

::

    async with MosquittoProcess(tmp_path, credentials) as mosq:
        ...  # connect to 127.0.0.1:mosq.port

    tls = MosquittoTls(cafile=..., certfile=..., keyfile=..., require_certificate=True)
    async with MosquittoProcess(tmp_path, credentials, tls=tls, plain_listener=False) as mosq:
        ...  # connect with TLS to 127.0.0.1:mosq.tls_port

Used by this package's tests and by the end-to-end tests of the other packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import ssl
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import aiomqtt

from kernel import wire

from .credentials import BrokerError, Credential
from .listener import DEFAULT_MAX_PACKET_BYTES
from .mosquitto import MosquittoFiles, MosquittoTls, export_mosquitto
from .passwords import generate_secret, hash_password

__all__ = [
    "MOSQUITTO_BINARY",
    "Account",
    "MessageLog",
    "MosquittoProcess",
    "MosquittoState",
    "connack_code",
    "free_port",
    "make_account",
    "mosquitto_available",
]

logger = logging.getLogger(__name__)

MOSQUITTO_BINARY = Path("/usr/sbin/mosquitto")


def mosquitto_available(binary: Path = MOSQUITTO_BINARY) -> bool:
    """True when a mosquitto binary can be run (for ``pytest.mark.skipif``)."""
    return (binary.is_file() and os.access(binary, os.X_OK)) or shutil.which("mosquitto") is not None


def _binary(binary: Path) -> Path:
    if binary.is_file():
        return binary
    found = shutil.which("mosquitto")
    if found is None:
        raise BrokerError(f"mosquitto not found at {binary} nor on PATH")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MosquittoState(StrEnum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class MosquittoProcess:
    """mosquitto configured by :func:`broker.mosquitto.export_mosquitto`, on free loopback ports.

    With ``tls`` it also runs that TLS listener, on a free port of its own (``tls.port`` is ignored;
    read :attr:`tls_port`); ``plain_listener=False`` leaves the plain listener out.
    """

    def __init__(
        self,
        workdir: Path,
        credentials: Iterable[Credential],
        *,
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
        persistence: bool = False,
        binary: Path = MOSQUITTO_BINARY,
        ready_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        tls: MosquittoTls | None = None,
        plain_listener: bool = True,
    ) -> None:
        if not plain_listener and tls is None:
            raise BrokerError("mosquitto needs a listener: keep the plain one or add a TLS one")
        self._workdir = workdir
        self._credentials = list(credentials)
        self._max_packet_bytes = max_packet_bytes
        self._persistence = persistence
        self._binary = binary
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._tls = tls
        self._plain_listener = plain_listener
        self._port: int | None = None
        self._tls_port: int | None = None
        self._files: MosquittoFiles | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.state = MosquittoState.NEW

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.returncode is not None:
            raise BrokerError("mosquitto is not running")
        return self._proc.pid

    @property
    def port(self) -> int:
        """The plain listener's port."""
        if not self._plain_listener:
            raise BrokerError("this mosquitto has no plain listener (see tls_port)")
        if self._port is None:
            raise BrokerError("mosquitto has not been started")
        return self._port

    @property
    def tls_port(self) -> int:
        """The TLS listener's port."""
        if self._tls is None:
            raise BrokerError("this mosquitto has no TLS listener")
        if self._tls_port is None:
            raise BrokerError("mosquitto has not been started")
        return self._tls_port

    def _ports(self) -> list[int]:
        return [p for p in (self._port if self._plain_listener else None, self._tls_port) if p is not None]

    @property
    def files(self) -> MosquittoFiles:
        if self._files is None:
            raise BrokerError("mosquitto has not been started")
        return self._files

    @property
    def log_path(self) -> Path:
        return self._workdir / "mosquitto.log"

    def _open_log(self) -> IO[bytes]:
        return open(self.log_path, "ab")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _export(self) -> MosquittoFiles:
        self._files = export_mosquitto(
            self._workdir,
            self._credentials,
            listener_port=self._port or 1883,
            max_packet_bytes=self._max_packet_bytes,
            persistence_dir=self._workdir / "data" if self._persistence else None,
            run_as_user=getpass.getuser(),
            tls=None if self._tls is None else replace(self._tls, port=self.tls_port),
            plain_listener=self._plain_listener,
        )
        return self._files

    async def start(self) -> None:
        if self.state is MosquittoState.RUNNING:
            raise BrokerError("mosquitto is already running")
        if self._port is None and self._plain_listener:
            self._port = free_port()
        if self._tls_port is None and self._tls is not None:
            self._tls_port = free_port()
        files = self._export()
        binary = _binary(self._binary)
        self._log = self._open_log()
        self._proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-c",
            str(files.conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.state = MosquittoState.RUNNING
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        logger.info("mosquitto pid %s listening on 127.0.0.1 ports %s", self._proc.pid, self._ports())

    async def _wait_ready(self) -> None:
        """Poll until every port accepts TCP connections (bounded), or the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        for port in self._ports():
            await self._wait_port(port, deadline)

    async def _wait_port(self, port: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}:\n{self.log_text()}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            except (OSError, TimeoutError):
                if loop.time() > deadline:
                    raise BrokerError(
                        f"mosquitto did not listen within {self._ready_timeout} s:\n{self.log_text()}"
                    ) from None
                await asyncio.sleep(0.02)  # polling interval, bounded by the deadline above
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def update_credentials(self, credentials: Iterable[Credential]) -> None:
        """Rewrite the password and ACL files and make mosquitto reload them."""
        self._credentials = list(credentials)
        self._export()
        if self.state is MosquittoState.RUNNING:
            self.reload()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files."""
        self._signal(signal.SIGHUP)

    async def kill(self) -> None:
        """SIGKILL, as in a crash or power cut (no will from mosquitto itself, no final save)."""
        self._signal(signal.SIGKILL)
        await self._reap()

    async def restart(self) -> None:
        """Stop (gracefully) and start again on the same ports."""
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), self._stop_timeout)
            except TimeoutError:
                logger.warning("mosquitto did not stop within %.1f s; killing it", self._stop_timeout)
                self._proc.kill()
        await self._reap()

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            raise BrokerError("mosquitto is not running")
        self._proc.send_signal(sig)

    async def _reap(self) -> None:
        if self._proc is not None:
            await asyncio.wait_for(self._proc.wait(), self._stop_timeout)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.state = MosquittoState.STOPPED


# ----------------------------------------------------------------------------------------------
# Accounts and message capture for tests against either broker.


@dataclass(frozen=True, kw_only=True)
class Account:
    """A peer with its plain secret and its broker credential."""

    peer: wire.Peer
    secret: str
    credential: Credential

    @property
    def client_id(self) -> str:
        return self.peer.client_id

    def client(
        self, port: int, *, host: str = "127.0.0.1", timeout: float = 5.0, **kwargs: Any
    ) -> aiomqtt.Client:
        """An aiomqtt client logging in as this account (client id = username)."""
        return aiomqtt.Client(
            host,
            port,
            username=self.client_id,
            password=self.secret,
            identifier=self.client_id,
            timeout=timeout,
            **kwargs,
        )


def _mqtt_str(data: str) -> bytes:
    raw = data.encode()
    return struct.pack("!H", len(raw)) + raw


async def connack_code(
    port: int,
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    host: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> int:
    """Send one MQTT 3.1.1 CONNECT (over TLS with ``ssl_context``) and return the CONNACK's code.

    For the refusals aiomqtt only reports as a timeout: with TLS 1.3 a server that refuses the client
    certificate says so after the client's handshake has finished, and this read raises that alert as
    :class:`ssl.SSLError` at once. A connection closed without a CONNACK raises ``ConnectionError``.
    """
    flags, payload = 0x02, _mqtt_str(client_id)
    if username is not None:
        flags, payload = flags | 0x80, payload + _mqtt_str(username)
    if password is not None:
        flags, payload = flags | 0x40, payload + _mqtt_str(password)
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + payload
    length, remaining = len(body), bytearray()
    while True:
        length, byte = divmod(length, 128)
        remaining.append(byte | (0x80 if length else 0))
        if not length:
            break
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
        try:
            writer.write(b"\x10" + bytes(remaining) + body)
            await writer.drain()
            try:
                connack = await reader.readexactly(4)
            except asyncio.IncompleteReadError as exc:
                raise ConnectionResetError("closed without a CONNACK") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if connack[:2] != b"\x20\x02":
        raise ConnectionError(f"not a CONNACK: {connack!r}")
    return connack[3]


def make_account(peer: wire.Peer, *, enabled: bool = True, iterations: int = 1000) -> Account:
    secret = generate_secret()
    cred = Credential(peer=peer, password_hash=hash_password(secret, iterations), enabled=enabled)
    return Account(peer=peer, secret=secret, credential=cred)


class MessageLog:
    """Collects an aiomqtt client's messages in a background task; wait for one with a deadline.

    ::

        async with account.client(port) as client, MessageLog(client) as log:
            await client.subscribe(...)
            await log.wait_for(topic, payload)
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=f"message-log-{self._client.identifier}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task

    async def wait_disconnected(self, within: float = 5.0) -> None:
        """Return once the client's connection is gone (its message stream ended)."""
        if self._task is None:
            raise RuntimeError("MessageLog is not running")
        with contextlib.suppress(aiomqtt.MqttError):
            await asyncio.wait_for(asyncio.shield(self._task), within)

    async def run(self) -> None:
        async for message in self._client.messages:
            async with self._changed:
                self.messages.append(message)
                self._changed.notify_all()

    async def wait_for(self, topic: str, payload: bytes, within: float = 5.0) -> aiomqtt.Message:
        """The first message with this topic and payload; TimeoutError if none arrives in time."""

        def found() -> aiomqtt.Message | None:
            return next((m for m in self.messages if m.topic.value == topic and m.payload == payload), None)

        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        message = found()
        assert message is not None
        return message

    def payloads(self) -> list[tuple[str, bytes]]:
        return [
            (m.topic.value, bytes(m.payload))
            for m in self.messages
            if isinstance(m.payload, bytes | bytearray)
        ]
