"""The bridge's BLE printer side: find a printer, connect, prove it is the right one, print paced.

Usage (the cloud gave the bridge a :class:`PrinterTarget` and a job)::

    async with open_backend("bleak") as backend:  # or "bumble:tcp-client:127.0.0.1:PORT"
        async with PrinterConnection.open(target, backend) as printer:
            result = await printer.write(job)  # returns once the printer accepted every byte

Public API:

* :class:`PrinterTarget` (frozen, validated): the printer's printfleet name and unique id, how to
  find it (``ble_address``, else ``ble_name``: macOS and iOS hide addresses), a preferred GATT
  profile (a name from :data:`~phone_bridge.profiles.PROFILES`), its Ed25519 public key (base64)
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
  order of :data:`~phone_bridge.profiles.PROFILES` and the fallback rule) and runs the identity
  challenge as the policy says. Then :attr:`~PrinterConnection.identity` is an
  :class:`IdentityOutcome`, and :meth:`~PrinterConnection.write` prints.
* :class:`Pacing` (bytes/s ceiling, barrier every N chunks, gap between chunks), :class:`WriteResult`,
  :class:`Backoff`; the pure parts :func:`plan_chunks` and :class:`Pacer`.

Identity policy (the printer proves its identity by signing a fresh 32-byte nonce, docs/ble.md):

========================================  ==============  ==============  =========
the printer ...                           ``required``    ``preferred``   ``off``
========================================  ==============  ==============  =========
signs the nonce with the known key        VERIFIED        VERIFIED        SKIPPED
has no identity service, or no key known  IdentityRequired UNVERIFIED     SKIPPED
has the service, signature does not fit   ImpostorError   ImpostorError   SKIPPED
========================================  ==============  ==============  =========

Writing: chunks of ``min(max_write_without_response_size, 512)`` bytes as write commands (without
response) paced by :class:`Pacing`, a write request (with response) every ``barrier_every`` chunks
and always as the last chunk: the printer acknowledged everything when :meth:`write` returns.
A characteristic without write-without-response gets every chunk as a write request; one without
write (with response) gets a GATT read as its barrier (ATT is ordered: the read's answer follows
every command before it). Every GATT operation has a timeout.

Exceptions::

    PrintfleetError
     +-- BleError                 (printer, address, reason, retryable)
          +-- InvalidBackendSpec  (also a ValueError: a backend string that does not parse)
          +-- BackendUnavailable  (the platform's Bluetooth stack or the HCI transport cannot start)
          +-- PrinterNotFound     (retryable: no advertisement matched within the scan)
          +-- ConnectFailed       (retryable: connect, discovery or the challenge's exchange failed)
          +-- ImpostorError       (the printer has the identity service and its signature does not verify)
          +-- IdentityRequired    (policy "required", and the printer cannot prove its identity)
          +-- NoPrintChannel      (no writable print characteristic, or no way to confirm delivery)
          +-- WriteFailed         (retryable: bytes_sent, bytes_confirmed, bytes_total)

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
import math
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Final, Literal, Protocol, Self, TypeVar, get_args

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakBluetoothNotAvailableError, BleakError, BleakGATTProtocolError

from phone_bridge.profiles import (
    IDENTITY_NONCE_UUID,
    IDENTITY_SERVICE_UUID,
    IDENTITY_SIGNATURE_UUID,
    MAX_UNIQUE_ID_BYTES,
    NONCE_SIZE,
    PROFILES,
    PROFILES_BY_NAME,
    PrintChannel,
    decode_public_key,
    normalize_uuid,
    resolve_profile,
    uuid16,
    verify_identity,
)
from printfleet.errors import PrintfleetError

if TYPE_CHECKING:
    from bleak.backends.scanner import AdvertisementDataCallback

log = logging.getLogger(__name__)

#: GATT values are at most 512 bytes, whatever ``max_write_without_response_size`` says (BlueZ says 514).
MAX_CHUNK: Final = 512
#: The default pacing ceiling, bytes/s: what BLE printing apps achieve on BlueZ (about 4 kB/s), well
#: below the 115 200-baud UART (11.5 kB/s) behind a typical printer's BLE module.
DEFAULT_BYTES_PER_S: Final = 4000.0
#: How long a scan by name waits, after a name-only match, for a device that also advertises a print service.
NAME_ONLY_GRACE_S: Final = 1.0
#: The profile name reported when the fallback rule chose the print channel.
FALLBACK_PROFILE: Final = "fallback"

IdentityPolicy = Literal["required", "preferred", "off"]
_POLICIES: Final = frozenset(get_args(IdentityPolicy))
_GAP_DEVICE_NAME: Final = uuid16(0x2A00)
_TRANSPORT_ERRORS: Final = (BleakError, TimeoutError, OSError, EOFError)

_T = TypeVar("_T")

# -- errors ----------------------------------------------------------------------------------------


class BleError(PrintfleetError):
    """Root of the BLE side's errors: which printer (printfleet name), its address, why, retryable."""

    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        reason: str,
        *,
        printer: str | None = None,
        address: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        where = " ".join(part for part in (printer, f"({address})" if address else None) if part)
        super().__init__(
            f"printer {where}: {reason}" if where else reason,
            retryable=self.default_retryable if retryable is None else retryable,
        )
        self.reason = reason
        self.printer = printer
        self.address = address


class InvalidBackendSpec(BleError, ValueError):
    """A backend string that is neither ``bleak`` nor ``bumble:<HCI transport spec>``."""


class BackendUnavailable(BleError):
    """The platform's Bluetooth stack (or the bumble HCI transport) could not be used."""


class PrinterNotFound(BleError):
    """No advertisement matched the target within the scan."""

    default_retryable = True


class ConnectFailed(BleError):
    """Connecting, service discovery or the identity exchange failed on the way (the link, not the
    printer's answer)."""

    default_retryable = True


class ImpostorError(BleError):
    """The printer has the identity service, and its answer to the nonce does not verify."""


class IdentityRequired(BleError):
    """The policy is ``required`` and the printer cannot prove its identity (no service, or no key known)."""


class NoPrintChannel(BleError):
    """The printer has no writable print characteristic (or no way to confirm delivery on it)."""


class WriteFailed(BleError):
    """A write did not complete; ``bytes_confirmed`` bytes were acknowledged by a barrier."""

    default_retryable = True

    def __init__(
        self,
        reason: str,
        *,
        bytes_sent: int,
        bytes_confirmed: int,
        bytes_total: int,
        printer: str | None = None,
        address: str | None = None,
    ) -> None:
        super().__init__(
            f"{reason} (sent {bytes_sent}, confirmed {bytes_confirmed} of {bytes_total} bytes)",
            printer=printer,
            address=address,
        )
        self.bytes_sent = bytes_sent
        """Bytes handed to the Bluetooth stack without error (not all of them reached the printer)."""
        self.bytes_confirmed = bytes_confirmed
        """Bytes up to the last acknowledged barrier: the printer has these."""
        self.bytes_total = bytes_total


# -- values ----------------------------------------------------------------------------------------


class IdentityOutcome(StrEnum):
    """What the identity challenge established (a failed verification is an :class:`ImpostorError`)."""

    VERIFIED = "verified"  # signed the fresh nonce with the key the cloud knows
    UNVERIFIED = "unverified"  # no identity service on the printer, or no public key known
    SKIPPED = "skipped"  # policy "off"


@dataclass(frozen=True, kw_only=True)
class PrinterTarget:
    """The printer to print to, as the cloud describes it."""

    name: str
    """The printer's name in printfleet (for errors and logs)."""
    unique_id: str
    """The printer's unique id: what the identity challenge signs."""
    ble_address: str | None = None
    ble_name: str | None = None
    """Find by advertised name (plus print service) when no address is given (macOS/iOS hide them)."""
    ble_profile: str | None = None
    """A name from :data:`~phone_bridge.profiles.PROFILES` to prefer; ``None``: the order and the fallback."""
    public_key: str | None = None
    """The printer's Ed25519 public key, base64 of the raw 32 bytes."""
    identity: IdentityPolicy = "preferred"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if not 1 <= len(self.unique_id.encode("utf-8")) <= MAX_UNIQUE_ID_BYTES:
            raise ValueError(f"unique_id must be 1..{MAX_UNIQUE_ID_BYTES} bytes of UTF-8")
        if not self.ble_address and not self.ble_name:
            raise ValueError("give ble_address or ble_name (or both)")
        if self.ble_profile is not None and self.ble_profile not in PROFILES_BY_NAME:
            raise ValueError(
                f"unknown ble_profile {self.ble_profile!r}; known: {', '.join(PROFILES_BY_NAME)}"
            )
        if self.public_key is not None:
            decode_public_key(self.public_key)  # raises ValueError on a malformed key
        if self.identity not in _POLICIES:
            raise ValueError(f"identity must be one of {', '.join(sorted(_POLICIES))}, got {self.identity!r}")


@dataclass(frozen=True, kw_only=True)
class Pacing:
    """How fast :meth:`PrinterConnection.write` sends.

    ``bytes_per_s``: the sustained ceiling (chunk *k* starts no earlier than the bytes before it
    divided by this rate after the first; a late chunk earns no credit); ``None``: no ceiling.
    ``barrier_every``: a write with response every this many chunks (and always the last one);
    ``None``: only the last. ``gap_s``: at least this long between the end of one chunk and the next.
    """

    bytes_per_s: float | None = DEFAULT_BYTES_PER_S
    barrier_every: int | None = 4
    gap_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes_per_s is not None and not (self.bytes_per_s > 0 and math.isfinite(self.bytes_per_s)):
            raise ValueError("bytes_per_s must be a positive number (or None: no ceiling)")
        if self.barrier_every is not None and self.barrier_every < 1:
            raise ValueError("barrier_every must be at least 1 (or None: only the last chunk)")
        if not (self.gap_s >= 0 and math.isfinite(self.gap_s)):
            raise ValueError("gap_s must not be negative")


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delay before retry *n* (1-based): ``min(max_s, initial_s * factor**(n-1))``, of which the
    fraction ``jitter`` is drawn at random (so bridges retrying together spread out)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 8.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.initial_s <= self.max_s:
            raise ValueError("need 0 <= initial_s <= max_s")
        if self.factor < 1:
            raise ValueError("factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, retry - 1))
        return base * (1 - self.jitter * (rng or random).random())


@dataclass(frozen=True, kw_only=True)
class WriteResult:
    """A completed :meth:`PrinterConnection.write`: every byte acknowledged."""

    bytes_written: int
    chunks: int
    barriers: int
    elapsed_s: float

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_written / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class Chunk:
    """One write of a job: ``data[start:end]``; ``barrier``: confirmed before the next one goes."""

    start: int
    end: int
    barrier: bool


def plan_chunks(size: int, chunk_size: int, barrier_every: int | None) -> list[Chunk]:
    """Split a job of ``size`` bytes: a barrier every ``barrier_every`` chunks and on the last."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    starts = range(0, size, chunk_size)
    last = len(starts)
    return [
        Chunk(
            start,
            min(start + chunk_size, size),
            n == last or (barrier_every is not None and n % barrier_every == 0),
        )
        for n, start in enumerate(starts, 1)
    ]


class Pacer:
    """The pacing schedule as a pure state machine (times in seconds of any monotonic clock)."""

    def __init__(self, pacing: Pacing) -> None:
        self._pacing = pacing
        self._ready_at: float | None = None
        self._last_end: float | None = None

    def delay(self, now: float) -> float:
        """How long to wait before the next chunk may start."""
        waits = [0.0]
        if self._ready_at is not None:
            waits.append(self._ready_at - now)
        if self._last_end is not None and self._pacing.gap_s:
            waits.append(self._last_end + self._pacing.gap_s - now)
        return max(waits)

    def sent(self, nbytes: int, *, started: float, ended: float) -> None:
        rate = self._pacing.bytes_per_s
        if rate is not None:
            base = started if self._ready_at is None else max(self._ready_at, started)
            self._ready_at = base + nbytes / rate
        self._last_end = ended


# -- backends --------------------------------------------------------------------------------------


class BackendKind(StrEnum):
    BLEAK = "bleak"  # bleak's platform backend: BlueZ, CoreBluetooth, WinRT, Android
    BUMBLE = "bumble"  # bumble's host stack over an HCI transport (a virtual radio, a USB dongle)


#: bumble HCI transport schemes: those needing an argument, and those where it is optional.
_BUMBLE_SCHEMES_WITH_ARG: Final = frozenset(
    {"serial", "udp", "tcp-client", "tcp-server", "ws-client", "ws-server", "file", "usb", "pyusb"}
    | {"unix", "unix-client", "unix-server"}
)
_BUMBLE_SCHEMES_OPTIONAL_ARG: Final = frozenset(
    {"pty", "vhci", "hci-socket", "android-emulator", "android-netsim"}
)
_HOST_PORT: Final = re.compile(r"^(?:\[[^\]]+\]|[^:\s]*):(\d{1,5})$")
_EXPECTED: Final = "expected 'bleak' or 'bumble:<HCI transport>', e.g. 'bumble:tcp-client:127.0.0.1:7000'"


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    """Which Bluetooth stack the bridge uses: ``bleak`` (the platform's) or ``bumble:<transport>``."""

    kind: BackendKind = BackendKind.BLEAK
    transport: str | None = None
    """The bumble HCI transport spec (``tcp-client:HOST:PORT``, ``usb:0``, ``serial:/dev/ttyUSB0``...)."""

    def __post_init__(self) -> None:
        match self.kind:
            case BackendKind.BLEAK if self.transport is not None:
                raise InvalidBackendSpec("the bleak backend takes no transport")
            case BackendKind.BUMBLE:
                _check_bumble_transport(self.transport or "", str(self))

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """``"bleak"`` or ``"bumble:<HCI transport spec>"``; else :class:`InvalidBackendSpec`."""
        kind, sep, rest = text.partition(":")
        match kind, sep:
            case "bleak", "":
                return cls()
            case "bumble", ":":
                return cls(kind=BackendKind.BUMBLE, transport=rest)
            case "bumble", "":
                raise InvalidBackendSpec(f"BLE backend {text!r} names no HCI transport; {_EXPECTED}")
            case "bleak", ":":
                raise InvalidBackendSpec(f"BLE backend {text!r}: bleak takes no argument; {_EXPECTED}")
        raise InvalidBackendSpec(f"unknown BLE backend {text!r}; {_EXPECTED}")

    def __str__(self) -> str:
        return "bleak" if self.kind is BackendKind.BLEAK else f"bumble:{self.transport}"


def _check_bumble_transport(transport: str, text: str) -> None:
    spec = re.sub(r"^\[[^\]]*\]", "", transport)  # bumble's optional "[key=value,...]" metadata prefix
    scheme, _, arg = spec.partition(":")
    if scheme in _BUMBLE_SCHEMES_WITH_ARG:
        if not arg:
            raise InvalidBackendSpec(f"BLE backend {text!r}: the {scheme} transport needs an argument")
    elif scheme not in _BUMBLE_SCHEMES_OPTIONAL_ARG:
        known = ", ".join(sorted(_BUMBLE_SCHEMES_WITH_ARG | _BUMBLE_SCHEMES_OPTIONAL_ARG))
        raise InvalidBackendSpec(
            f"BLE backend {text!r}: unknown bumble transport {scheme or '(none)'!r}; known: {known}"
        )
    if scheme in ("tcp-client", "tcp-server", "ws-client", "ws-server"):
        port = _HOST_PORT.match(arg)
        if port is None or not 0 < int(port.group(1)) <= 65535:
            raise InvalidBackendSpec(f"BLE backend {text!r}: {scheme} needs HOST:PORT with a port 1..65535")


class RadioLike(Protocol):
    """An open radio handing bleak its backend classes (:class:`~phone_bridge.bleak_bumble.BumbleRadio`)."""

    @property
    def scanner_backend(self) -> type[BaseBleakScanner]: ...
    @property
    def client_backend(self) -> type[BaseBleakClient]: ...


@dataclass(frozen=True, kw_only=True)
class Backend:
    """What :class:`PrinterConnection` passes to bleak as ``backend=`` (``None``: the platform's)."""

    description: str
    scanner_backend: type[BaseBleakScanner] | None = None
    client_backend: type[BaseBleakClient] | None = None


@contextlib.asynccontextmanager
async def open_backend(
    spec: str | BackendSpec | RadioLike, *, open_timeout: float = 10.0
) -> AsyncIterator[Backend]:
    """Open the Bluetooth stack named by ``spec`` (a string for :meth:`BackendSpec.parse`, a parsed
    spec, or an already open radio, which stays open) for as long as the context lasts.

    A bumble transport must open and its controller answer within ``open_timeout`` seconds, else
    :class:`BackendUnavailable`. bleak's platform backend starts on the first scan: a missing
    Bluetooth stack shows there, as :class:`BackendUnavailable` from :class:`PrinterConnection`.
    """
    if isinstance(spec, str):
        spec = BackendSpec.parse(spec)
    if not isinstance(spec, BackendSpec):
        yield Backend(
            description=type(spec).__name__,
            scanner_backend=spec.scanner_backend,
            client_backend=spec.client_backend,
        )
        return
    if spec.kind is BackendKind.BLEAK:
        yield Backend(description=str(spec))
        return
    try:
        from phone_bridge.bleak_bumble import BumbleRadio  # needs bumble, a test/extra dependency
    except ImportError as exc:
        raise BackendUnavailable(f"{spec}: bumble is not installed ({exc})") from exc
    assert spec.transport is not None
    radio = BumbleRadio(spec.transport)
    try:
        async with asyncio.timeout(open_timeout):
            await radio.__aenter__()
    except TimeoutError as exc:
        raise BackendUnavailable(f"{spec}: the HCI transport did not open within {open_timeout:g} s") from exc
    except (*_TRANSPORT_ERRORS, ValueError) as exc:
        raise BackendUnavailable(f"{spec}: cannot open the HCI transport: {exc}") from exc
    try:
        yield Backend(
            description=str(spec), scanner_backend=radio.scanner_backend, client_backend=radio.client_backend
        )
    finally:
        await radio.__aexit__(None, None, None)


# -- the connection --------------------------------------------------------------------------------


class ConnectionState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    WRITING = "writing"
    LOST = "lost"
    CLOSING = "closing"
    CLOSED = "closed"


_S = ConnectionState
#: The allowed lifecycle transitions.
TRANSITIONS: Final[dict[ConnectionState, frozenset[ConnectionState]]] = {
    _S.IDLE: frozenset({_S.CONNECTING}),
    _S.CONNECTING: frozenset({_S.READY, _S.CLOSED}),
    _S.READY: frozenset({_S.WRITING, _S.LOST, _S.CLOSING}),
    _S.WRITING: frozenset({_S.READY, _S.LOST, _S.CLOSING}),
    _S.LOST: frozenset({_S.CLOSING}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


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
    notes: list[str] = field(default_factory=list)


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
        pacing: Pacing = Pacing(),
        scan_timeout: float = 10.0,
        gatt_timeout: float = 10.0,
        backoff: Backoff = Backoff(),
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
        pacing: Pacing = Pacing(),
        scan_timeout: float = 10.0,
        gatt_timeout: float = 10.0,
        backoff: Backoff = Backoff(),
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
        with contextlib.suppress(*_TRANSPORT_ERRORS):
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
        except _TRANSPORT_ERRORS as exc:
            await self._disconnect(client)
            raise ConnectFailed(
                f"connect failed: {exc or type(exc).__name__}",
                printer=self.target.name,
                address=device.address,
            ) from exc
        try:
            link = await self._set_up(client, device)
        except BaseException:
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
        char = _characteristic(services, channel.service_uuid, channel.write_uuid)
        assert char is not None  # resolve_profile found it there
        props = set(char.properties)
        commands = "write-without-response" in props
        barrier, read_char = _Barrier.WRITE_REQUEST, None
        if commands and "write" not in props:
            barrier, read_char = _Barrier.READ, _readable(services, char)
            if read_char is None:
                raise NoPrintChannel(
                    "the print characteristic takes only write commands and nothing is readable "
                    "to confirm delivery with",
                    printer=self.target.name,
                    address=device.address,
                )
        identity = await self._check_identity(client, device)
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

    async def _check_identity(self, client: BleakClient, device: BLEDevice) -> IdentityOutcome:
        target = self.target
        if target.identity == "off":
            return IdentityOutcome.SKIPPED
        nonce_char = _characteristic(client.services, IDENTITY_SERVICE_UUID, IDENTITY_NONCE_UUID)
        signature_char = _characteristic(client.services, IDENTITY_SERVICE_UUID, IDENTITY_SIGNATURE_UUID)
        if nonce_char is None or signature_char is None or target.public_key is None:
            reason = (
                "no public key is known"
                if target.public_key is None
                else "the printer has no identity service"
            )
            if target.identity == "required":
                raise IdentityRequired(
                    f"identity required: {reason}", printer=target.name, address=device.address
                )
            log.warning("printer %s: identity not verified: %s", target.name, reason)
            return IdentityOutcome.UNVERIFIED
        nonce = secrets.token_bytes(NONCE_SIZE)
        try:
            signature = await self._challenge(client, nonce_char, signature_char, nonce)
        except BleakGATTProtocolError as exc:
            raise ImpostorError(
                f"the printer refused the identity challenge: {exc}",
                printer=target.name,
                address=device.address,
            ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise ConnectFailed(
                f"identity challenge failed: {exc or type(exc).__name__}",
                printer=target.name,
                address=device.address,
            ) from exc
        if not verify_identity(
            public_key=target.public_key, unique_id=target.unique_id, nonce=nonce, signature=signature
        ):
            raise ImpostorError(
                "the identity signature does not verify with the printer's public key",
                printer=target.name,
                address=device.address,
            )
        return IdentityOutcome.VERIFIED

    async def _challenge(
        self,
        client: BleakClient,
        nonce_char: BleakGATTCharacteristic,
        signature_char: BleakGATTCharacteristic,
        nonce: bytes,
    ) -> bytes:
        """Write the nonce; the signature comes as a notification, else by reading the characteristic."""
        notified: asyncio.Queue[bytes] = asyncio.Queue()
        notify = bool({"notify", "indicate"} & set(signature_char.properties))
        if notify:
            await self._gatt(
                client.start_notify(signature_char, lambda _c, data: notified.put_nowait(bytes(data)))
            )
        await self._gatt(client.write_gatt_char(nonce_char, nonce, response=True))
        signature: bytes | None = None
        if notify:
            with contextlib.suppress(TimeoutError):
                signature = await asyncio.wait_for(notified.get(), self._gatt_timeout)
            await self._gatt(client.stop_notify(signature_char))
        if signature is None:
            signature = bytes(await self._gatt(client.read_gatt_char(signature_char)))
        return signature

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
            except _TRANSPORT_ERRORS as exc:
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


def _characteristic(
    services: BleakGATTServiceCollection, service_uuid: str, char_uuid: str
) -> BleakGATTCharacteristic | None:
    service = _service(services, service_uuid)
    if service is None:
        return None
    return next((c for c in service.characteristics if normalize_uuid(c.uuid) == char_uuid), None)


def _service(services: BleakGATTServiceCollection, service_uuid: str) -> BleakGATTService | None:
    return next((s for s in services if normalize_uuid(s.uuid) == service_uuid), None)


def _readable(
    services: BleakGATTServiceCollection, char: BleakGATTCharacteristic
) -> BleakGATTCharacteristic | None:
    """Something to read as a barrier: the print characteristic, a readable one of its service, or
    the device name (GAP; BlueZ hides that service)."""
    candidates: list[BleakGATTCharacteristic] = [char]
    service = services.get_service(char.service_handle)
    if service is not None:
        candidates.extend(service.characteristics)
    gap = _characteristic(services, uuid16(0x1800), _GAP_DEVICE_NAME)
    if gap is not None:
        candidates.append(gap)
    return next((c for c in candidates if "read" in c.properties), None)


__all__ = [
    "DEFAULT_BYTES_PER_S",
    "FALLBACK_PROFILE",
    "MAX_CHUNK",
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
