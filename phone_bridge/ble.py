"""The bridge's BLE printer side: find a printer, connect, prove it is the right one, print paced.

Usage (the cloud gave the bridge a :class:`PrinterTarget` and a job)::

    async with open_backend("bleak") as backend:  # or "bumble:tcp-client:127.0.0.1:PORT"
        async with PrinterConnection.open(target, backend) as printer:
            result = await printer.write(job)  # returns once the printer accepted every byte

Public API:

* :class:`PrinterTarget` (frozen, validated): the printer's printfleet name and unique id, how to
  find it (``ble_address``, else ``ble_name``: macOS and iOS hide addresses), a preferred GATT
  profile (a name from :data:`~kernel.gatt.PROFILES`), its Ed25519 public key (base64)
  and the identity policy: ``"required"``, ``"preferred"`` or ``"off"``.
* :class:`BackendSpec` (``BackendSpec.parse("bleak" | "bumble:<HCI transport spec>")``) and
  :func:`open_backend`, an async context manager giving a :class:`Backend`: the scanner and client
  backend classes bleak takes through ``backend=`` (``None``: bleak's platform backend). It also
  takes an open :class:`~phone_bridge.bleak_bumble.BumbleRadio` (tests, in-process).
* :class:`PrinterConnection`: ``PrinterConnection.open(target, backend, *, connect_timeout=20.0,
  attempts=4, pacing=Pacing(), ...)`` is an async context manager. Entering it finds the printer
  (by address, else by name, preferring a device that advertises a print service), connects with
  retries (a fresh scan before each, jittered exponential :class:`Backoff` between), discovers the
  services, resolves the print channel (``target.ble_profile`` when the printer has it, else the
  order of :data:`~kernel.gatt.PROFILES` and the fallback rule) and runs the identity
  challenge as the policy says. Then :attr:`~PrinterConnection.identity` is an
  :class:`IdentityOutcome`, and :meth:`~PrinterConnection.write` prints.
* :class:`Pacing` (bytes/s ceiling, barrier every N chunks, gap between chunks), :class:`WriteResult`,
  :class:`Backoff`; the pure parts :func:`plan_chunks` and :class:`Pacer`.

They live in six modules, all re-exported here: this one (the connection),
:mod:`phone_bridge.ble_target` (the target, the lifecycle states), :mod:`phone_bridge.ble_identity`
(GATT look-ups, the identity challenge), :mod:`phone_bridge.ble_backend` (backend strings and opening
a stack), :mod:`phone_bridge.ble_pacing` (pure pacing and retry arithmetic),
:mod:`phone_bridge.ble_errors` (the exceptions).

Identity policy: the table in :mod:`phone_bridge.ble_identity`.

Writing: chunks of ``min(max_write_without_response_size, 512)`` bytes as write commands (without
response) paced by :class:`Pacing`, a write request (with response) every ``barrier_every`` chunks
and always as the last chunk: the printer acknowledged everything when :meth:`write` returns.
A characteristic without write-without-response gets every chunk as a write request; one without
write (with response) gets a GATT read as its barrier (ATT is ordered: the read's answer follows
every command before it). Every GATT operation has a timeout.

Exceptions: one root, :class:`BleError` (a ``PrintfleetError``), tree in :mod:`phone_bridge.ble_errors`.

Lifecycle (:class:`ConnectionState`, transitions in :data:`TRANSITIONS`)::

    idle -> connecting -> ready <-> writing
                 |          |          |
                 |          +-> lost <-+      (the printer went away, or a write failed)
                 v          v       v
               closed <- closing <--+         (leaving the context manager)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, TypeVar

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTServiceCollection
from bleak.exc import BleakBluetoothNotAvailableError, BleakError

from kernel.gatt import (
    PROFILES,
    PROFILES_BY_NAME,
    PrintChannel,
    normalize_uuid,
    resolve_profile,
)
from phone_bridge.ble_backend import Backend, BackendKind, BackendSpec, RadioLike, open_backend
from phone_bridge.ble_errors import (
    BackendUnavailable,
    BleError,
    ConnectFailed,
    IdentityRequired,
    ImpostorError,
    InvalidBackendSpec,
    NoPrintChannel,
    PrinterNotFound,
    WriteFailed,
)
from phone_bridge.ble_identity import TRANSPORT_ERRORS, characteristic, check_identity, readable
from phone_bridge.ble_pacing import (
    DEFAULT_BYTES_PER_S,
    MAX_CHUNK,
    Backoff,
    Chunk,
    Pacer,
    Pacing,
    WriteResult,
    plan_chunks,
)
from phone_bridge.ble_target import (
    TRANSITIONS,
    ConnectionState,
    IdentityOutcome,
    IdentityPolicy,
    PrinterTarget,
)

if TYPE_CHECKING:
    from bleak.backends.scanner import AdvertisementDataCallback

log = logging.getLogger(__name__)

#: ``Pacing()`` and ``Backoff()``: the defaults of :class:`PrinterConnection`.
DEFAULT_PACING: Final = Pacing()
DEFAULT_BACKOFF: Final = Backoff()
#: How long a scan by name waits, after a name-only match, for a device that also advertises a print service.
NAME_ONLY_GRACE_S: Final = 1.0
#: The profile name reported when the fallback rule chose the print channel.
FALLBACK_PROFILE: Final = "fallback"


_T = TypeVar("_T")


class _Barrier(StrEnum):
    WRITE_REQUEST = "write-request"  # the barrier chunk is a write with response
    READ = "read"  # no write with response on the channel: a read request after the chunk


@dataclass(kw_only=True)
class _Link:
    """What one successful attempt established."""

    client: BleakClient
    device: BLEDevice
    channel: PrintChannel
    char: BleakGATTCharacteristic
    identity: IdentityOutcome
    commands: bool
    barrier: _Barrier
    read_char: BleakGATTCharacteristic | None = None


RetryCallback = Callable[[int, BleError, float], None]
"""``on_retry(attempt, error, delay_s)``: attempt ``attempt`` failed; the next starts in ``delay_s``."""


class PrinterConnection:
    """A connection to one BLE printer; an async context manager (see the module docstring).

    ``connect_timeout`` bounds one connect (with service discovery); ``scan_timeout`` one scan;
    ``gatt_timeout`` every GATT operation (a write, a barrier, the challenge's steps); ``attempts``
    is how many find-and-connect rounds to try before giving up (with ``backoff`` between them).
    """

    def __init__(
        self,
        target: PrinterTarget,
        backend: Backend,
        *,
        connect_timeout: float = 20.0,
        attempts: int = 4,
        pacing: Pacing = DEFAULT_PACING,
        scan_timeout: float = 10.0,
        gatt_timeout: float = 10.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: RetryCallback | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for label, value in (
            ("connect_timeout", connect_timeout),
            ("scan_timeout", scan_timeout),
            ("gatt_timeout", gatt_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be positive")
        self.target = target
        self.pacing = pacing
        self._backend = backend
        self._connect_timeout = connect_timeout
        self._scan_timeout = scan_timeout
        self._gatt_timeout = gatt_timeout
        self._attempts = attempts
        self._backoff = backoff
        self._on_retry = on_retry
        self._state = ConnectionState.IDLE
        self._link: _Link | None = None
        self._attempt = 0
        self._lost: asyncio.Event | None = None
        self._write_lock: asyncio.Lock | None = None

    @classmethod
    def open(
        cls,
        target: PrinterTarget,
        backend: Backend,
        *,
        connect_timeout: float = 20.0,
        attempts: int = 4,
        pacing: Pacing = DEFAULT_PACING,
        scan_timeout: float = 10.0,
        gatt_timeout: float = 10.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: RetryCallback | None = None,
    ) -> AbstractAsyncContextManager[PrinterConnection]:
        """The connection as an async context manager: connected on entry, disconnected on exit."""
        return cls(
            target,
            backend,
            connect_timeout=connect_timeout,
            attempts=attempts,
            pacing=pacing,
            scan_timeout=scan_timeout,
            gatt_timeout=gatt_timeout,
            backoff=backoff,
            on_retry=on_retry,
        )

    # -- what the connection established -------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    def _established(self) -> _Link:
        if self._link is None:
            raise RuntimeError(f"the connection is {self._state}, not connected")
        return self._link

    @property
    def identity(self) -> IdentityOutcome:
        return self._established().identity

    @property
    def profile_name(self) -> str:
        """The print channel's profile name, or :data:`FALLBACK_PROFILE`."""
        profile = self._established().channel.profile
        return profile.name if profile is not None else FALLBACK_PROFILE

    @property
    def channel(self) -> PrintChannel:
        return self._established().channel

    @property
    def address(self) -> str:
        """The address bleak reports (a UUID on macOS/iOS)."""
        return self._established().device.address

    @property
    def ble_name(self) -> str | None:
        return self._established().device.name

    @property
    def chunk_size(self) -> int:
        return min(self._established().char.max_write_without_response_size, MAX_CHUNK)

    @property
    def attempt(self) -> int:
        """The attempt (1-based) that connected."""
        return self._attempt

    def _set_state(self, new: ConnectionState) -> None:
        if new not in TRANSITIONS[self._state]:
            raise RuntimeError(f"connection state {self._state} cannot become {new}")
        log.debug("printer %s: %s -> %s", self.target.name, self._state, new)
        self._state = new

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._set_state(ConnectionState.CONNECTING)
        self._lost = asyncio.Event()
        self._write_lock = asyncio.Lock()
        try:
            target = self.target
            if target.identity == "required" and target.public_key is None:
                raise IdentityRequired(
                    "identity required, and no public key is known for this printer", printer=target.name
                )
            self._link = await self._connect_with_retries()
        except BaseException:
            self._set_state(ConnectionState.CLOSED)
            raise
        self._set_state(ConnectionState.READY)
        link = self._link
        log.info(
            "printer %s: connected to %s (%s) on attempt %d; profile %s, chunks of %d, identity %s",
            self.target.name,
            link.device.address,
            link.device.name,
            self._attempt,
            self.profile_name,
            self.chunk_size,
            link.identity,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._set_state(ConnectionState.CLOSING)
        link, self._link = self._link, None
        if link is not None:
            await self._disconnect(link.client)
        self._set_state(ConnectionState.CLOSED)

    async def _disconnect(self, client: BleakClient) -> None:
        with contextlib.suppress(*TRANSPORT_ERRORS):
            async with asyncio.timeout(self._gatt_timeout):
                await client.disconnect()

    def _on_disconnected(self, client: BleakClient) -> None:
        if self._link is None or client is not self._link.client:
            return  # a client of an earlier attempt, or closing
        log.warning("printer %s: %s disconnected", self.target.name, client.address)
        assert self._lost is not None
        self._lost.set()
        if self._state is ConnectionState.READY:
            self._set_state(ConnectionState.LOST)

    async def _connect_with_retries(self) -> _Link:
        for attempt in range(1, self._attempts + 1):
            self._attempt = attempt
            try:
                return await self._connect_once()
            except BleError as exc:
                if not exc.retryable or attempt == self._attempts:
                    if attempt > 1:
                        log.warning(
                            "printer %s: giving up after %d attempts: %s", self.target.name, attempt, exc
                        )
                    raise
                delay = self._backoff.delay(attempt)
                log.info(
                    "printer %s: attempt %d of %d failed (%s); retrying in %.2f s",
                    self.target.name,
                    attempt,
                    self._attempts,
                    exc,
                    delay,
                )
                if self._on_retry is not None:
                    self._on_retry(attempt, exc, delay)
                await asyncio.sleep(delay)  # the backoff itself
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _connect_once(self) -> _Link:
        device = await self._find()
        client = BleakClient(
            device,
            disconnected_callback=self._on_disconnected,
            timeout=self._connect_timeout,
            backend=self._backend.client_backend,
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await client.connect()
            link = await self._set_up(client, device)
        except TRANSPORT_ERRORS as exc:  # from connect(); _set_up maps its own
            await self._disconnect(client)
            raise ConnectFailed(
                f"connect failed: {exc or type(exc).__name__}",
                printer=self.target.name,
                address=device.address,
            ) from exc
        except BaseException:  # a BleError of _set_up, or cancelled (the caller's deadline): hang up
            await self._disconnect(client)
            raise
        if not client.is_connected:
            raise ConnectFailed(
                "disconnected while setting up", printer=self.target.name, address=device.address
            )
        return link

    # -- finding -------------------------------------------------------------------------------

    def _print_services(self) -> frozenset[str]:
        if self.target.ble_profile is not None:
            return frozenset({PROFILES_BY_NAME[self.target.ble_profile].service_uuid})
        return frozenset(p.service_uuid for p in PROFILES)

    def _match(self, device: BLEDevice, adv: AdvertisementData) -> int:
        """2: the device sought; 1: the right name, no print service advertised; 0: another device."""
        target = self.target
        if target.ble_address:
            return 2 if device.address.lower() == target.ble_address.lower() else 0
        if (adv.local_name or device.name) != target.ble_name:
            return 0
        advertised = {normalize_uuid(u) for u in adv.service_uuids}
        return 2 if advertised & self._print_services() else 1

    async def _find(self) -> BLEDevice:
        found: asyncio.Queue[tuple[BLEDevice, AdvertisementData]] = asyncio.Queue()
        callback: AdvertisementDataCallback = lambda d, ad: found.put_nowait((d, ad))  # noqa: E731
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._scan_timeout
        fallback: BLEDevice | None = None
        try:
            async with BleakScanner(callback, backend=self._backend.scanner_backend):
                while (wait := deadline - loop.time()) > 0:
                    try:
                        device, adv = await asyncio.wait_for(found.get(), wait)
                    except TimeoutError:
                        break
                    match self._match(device, adv):
                        case 2:
                            return device
                        case 1 if fallback is None:
                            fallback = device
                            deadline = min(deadline, loop.time() + NAME_ONLY_GRACE_S)
        except (BleakBluetoothNotAvailableError, OSError) as exc:
            raise BackendUnavailable(
                f"Bluetooth is not available ({self._backend.description}): {exc or type(exc).__name__}",
                printer=self.target.name,
            ) from exc
        except BleakError as exc:
            raise PrinterNotFound(f"scan failed: {exc}", printer=self.target.name) from exc
        if fallback is not None:
            return fallback
        sought = self.target.ble_address or f"name {self.target.ble_name!r}"
        raise PrinterNotFound(
            f"{sought} not seen within {self._scan_timeout:g} s",
            printer=self.target.name,
            address=self.target.ble_address,
        )

    # -- setting up: print channel and identity ------------------------------------------------

    async def _set_up(self, client: BleakClient, device: BLEDevice) -> _Link:
        services = client.services
        channel = self._resolve_channel(services)
        if channel is None:
            raise NoPrintChannel(
                "no writable print characteristic", printer=self.target.name, address=device.address
            )
        char = characteristic(services, channel.service_uuid, channel.write_uuid)
        assert char is not None  # resolve_profile found it there
        props = set(char.properties)
        commands = "write-without-response" in props
        barrier, read_char = _Barrier.WRITE_REQUEST, None
        if commands and "write" not in props:
            barrier, read_char = _Barrier.READ, readable(services, char)
            if read_char is None:
                raise NoPrintChannel(
                    "the print characteristic takes only write commands and nothing is readable "
                    "to confirm delivery with",
                    printer=self.target.name,
                    address=device.address,
                )
        identity = await check_identity(client, device, self.target, gatt_timeout=self._gatt_timeout)
        return _Link(
            client=client,
            device=device,
            channel=channel,
            char=char,
            identity=identity,
            commands=commands,
            barrier=barrier,
            read_char=read_char,
        )

    def _resolve_channel(self, services: BleakGATTServiceCollection) -> PrintChannel | None:
        if self.target.ble_profile is not None:
            profile = PROFILES_BY_NAME[self.target.ble_profile]
            preferred = resolve_profile(s for s in services if normalize_uuid(s.uuid) == profile.service_uuid)
            if preferred is not None and preferred.profile == profile:
                return preferred
        return resolve_profile(services)

    async def _gatt(self, operation: Awaitable[_T]) -> _T:
        async with asyncio.timeout(self._gatt_timeout):
            return await operation

    # -- writing -------------------------------------------------------------------------------

    async def write(self, data: bytes, *, progress: Callable[[int, int], None] | None = None) -> WriteResult:
        """Print ``data``; returns once the printer acknowledged all of it (the last chunk is a barrier).

        ``progress(bytes_sent, bytes_total)`` is called after every chunk. Raises :class:`WriteFailed`
        when the printer goes away or does not answer in time; the connection is then ``lost``.
        """
        self._established()
        assert self._write_lock is not None  # set on entry, with the link
        async with self._write_lock:
            link = self._established()
            if self._state is ConnectionState.LOST:
                raise self._write_failed("the printer disconnected", 0, 0, len(data))
            self._set_state(ConnectionState.WRITING)
            try:
                result = await self._write(link, bytes(data), progress)
            except BaseException:
                if self._state is ConnectionState.WRITING:
                    self._set_state(ConnectionState.LOST)
                raise
            if self._state is ConnectionState.WRITING:
                self._set_state(ConnectionState.READY)
            return result

    def _write_failed(self, reason: str, sent: int, confirmed: int, total: int) -> WriteFailed:
        return WriteFailed(
            reason,
            bytes_sent=sent,
            bytes_confirmed=confirmed,
            bytes_total=total,
            printer=self.target.name,
            address=self._link.device.address if self._link else None,
        )

    async def _write(
        self, link: _Link, data: bytes, progress: Callable[[int, int], None] | None
    ) -> WriteResult:
        assert self._lost is not None
        barrier_every = self.pacing.barrier_every if link.commands else 1
        plan = plan_chunks(len(data), self.chunk_size, barrier_every)
        pacer = Pacer(self.pacing)
        sent = confirmed = barriers = 0
        started = time.monotonic()
        for chunk in plan:
            try:
                if (delay := pacer.delay(time.monotonic())) > 0:
                    await self._pause(delay)
                if self._lost.is_set():
                    raise ConnectionError("the printer disconnected")
                piece = data[chunk.start : chunk.end]
                began = time.monotonic()
                as_request = chunk.barrier and link.barrier is _Barrier.WRITE_REQUEST
                await self._gatt(link.client.write_gatt_char(link.char, piece, response=as_request))
                sent = chunk.end
                if chunk.barrier and link.read_char is not None:
                    await self._gatt(link.client.read_gatt_char(link.read_char))
            except TRANSPORT_ERRORS as exc:
                reason = "the printer did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
                raise self._write_failed(reason or type(exc).__name__, sent, confirmed, len(data)) from exc
            pacer.sent(len(piece), started=began, ended=time.monotonic())
            if chunk.barrier:
                confirmed = sent
                barriers += 1
            if progress is not None:
                progress(sent, len(data))
        return WriteResult(
            bytes_written=len(data), chunks=len(plan), barriers=barriers, elapsed_s=time.monotonic() - started
        )

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds (the pacing itself), ending early when the printer disconnects."""
        assert self._lost is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._lost.wait()


__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_BYTES_PER_S",
    "DEFAULT_PACING",
    "FALLBACK_PROFILE",
    "MAX_CHUNK",
    "NAME_ONLY_GRACE_S",
    "TRANSITIONS",
    "Backend",
    "BackendKind",
    "BackendSpec",
    "BackendUnavailable",
    "Backoff",
    "BleError",
    "Chunk",
    "ConnectFailed",
    "ConnectionState",
    "IdentityOutcome",
    "IdentityPolicy",
    "IdentityRequired",
    "ImpostorError",
    "InvalidBackendSpec",
    "NoPrintChannel",
    "Pacer",
    "Pacing",
    "PrinterConnection",
    "PrinterNotFound",
    "PrinterTarget",
    "RadioLike",
    "WriteFailed",
    "WriteResult",
    "open_backend",
    "plan_chunks",
]
