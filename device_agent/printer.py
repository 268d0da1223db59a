"""The device agent's link to one ESC/POS printer, addressed by URL.

:class:`PrinterLink` opens the printer with pyserial's ``serial_for_url`` (a device or pty path,
``socket://host:port``, ``loop://``), runs every blocking pyserial call in a worker thread, and
classifies what the printer sends back with :class:`kernel.escpos.status.InboundParser`. Its values
(states, outcomes, progress) are in :mod:`device_agent.printer_types`, the port and the commands it
sends in :mod:`device_agent.serial_port`, Automatic Status Back in :mod:`device_agent.status_feed`.

Printing is paced, never fire-and-forget (a 48 KB job written in one go loses a third of its bytes
to the printer's buffer overflowing): the job is split at command boundaries
(:func:`kernel.escpos.segment.chunks`), each chunk is followed by ``GS r 1``, and at most
``spec.window`` of those barriers are unanswered at a time. A GS r reply means everything before it
has been processed, so the last one confirms the job. When a barrier is late the link asks the
printer (DLE EOT) why: a fault (paper out, cover open, offline, error) makes the job *held*; the
bytes already sent stay in the printer's buffer and are never sent again; the job continues when
the fault clears.

Exceptions::

    PrintfleetError
     +-- AgentError (device_agent.errors)
          +-- PrinterLinkError   (printer name, reason, retryable)

Automatic Status Back (``asb=True``): after opening, the link sends ``GS a 15`` so a printer that
supports it reports every status change by itself (4-byte blocks). The link keeps the latest block
(:attr:`PrinterLink.last_asb`), offers :meth:`PrinterLink.status_changes`, an async iterator of the
changes, and reacts to a block at once while printing (a fault block makes it read DLE EOT and hold
the job without waiting for a barrier to be late; a clear block resumes a held job at once).
Polling stays as the fallback: a printer without ASB simply never sends a block.

Lifecycle (:class:`LinkState`): ``closed -> open -> closed``; ``open -> failed`` when the port
breaks (every waiter gets a :class:`PrinterLinkError`); ``failed -> closed`` on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import serial

from device_agent.printer_types import (
    TRANSITIONS,
    JobPhase,
    JobProgress,
    LinkState,
    PrinterLinkError,
    PrintOutcome,
    PrintResult,
    ProgressCallback,
)
from device_agent.serial_port import (
    GS_A_ALL,
    GS_R_PAPER,
    PortOpener,
    dle_eot,
    gs_paren_h_request,
    open_serial,
)
from device_agent.status_feed import StatusFeed
from kernel.escpos import segment
from kernel.escpos.status import (
    AsbBlock,
    BlockReply,
    Event,
    GsRReply,
    InboundParser,
    PrinterStatus,
    StatusByte,
    Unknown,
    Xoff,
    Xon,
    decode_status,
    to_health,
)
from kernel.wire import PrinterHealth, PrinterSpec, now_ms

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class _JobContext:
    total: int
    on_progress: ProgressCallback | None
    sent: int = 0
    held_reason: str | None = None
    held: list[str] = field(default_factory=list)

    async def report(self, phase: JobPhase, reason: str | None = None) -> None:
        if self.on_progress is not None:
            await self.on_progress(
                JobProgress(phase=phase, bytes_sent=self.sent, total=self.total, reason=reason)
            )


class PrinterLink:
    """One printer, opened as an async context manager.

    ``status_timeout`` bounds each DLE EOT reply; ``barrier_timeout`` is how long a GS r barrier may
    be late before the link asks the printer why; ``hold_timeout`` (None: no limit) bounds how long
    a job may stay held; ``write_timeout`` bounds each write (never 0: pyserial would loop forever).
    ``asb`` enables Automatic Status Back after opening (only on a profile with status queries).
    """

    def __init__(
        self,
        spec: PrinterSpec,
        *,
        status_timeout: float = 1.0,
        barrier_timeout: float = 3.0,
        write_timeout: float = 5.0,
        hold_poll_interval: float = 0.25,
        hold_timeout: float | None = None,
        read_timeout: float = 0.05,
        asb: bool = False,
        opener: PortOpener = open_serial,
    ) -> None:
        if write_timeout <= 0:
            raise ValueError("write_timeout must be positive")
        self.spec = spec
        self.status_timeout = status_timeout
        self.barrier_timeout = barrier_timeout
        self.write_timeout = write_timeout
        self.hold_poll_interval = hold_poll_interval
        self.hold_timeout = hold_timeout
        self._read_timeout = read_timeout
        self._opener = opener
        self._state = LinkState.CLOSED
        self._port: serial.SerialBase | None = None
        self._parser = InboundParser()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: PrinterLinkError | None = None
        self._status_waiters: deque[asyncio.Future[int]] = deque()
        self._barriers: deque[asyncio.Future[int]] = deque()
        #: Set while catching up with a printer that may still hold data of an earlier connection.
        self._sync_replies: list[float] | None = None
        self._synced = False
        self._tag_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._write_lock: asyncio.Lock | None = None
        self._query_lock: asyncio.Lock | None = None
        self._job_lock: asyncio.Lock | None = None
        self._xoff = False
        self._asb = asb and spec.status_queries
        self._feed = StatusFeed(spec.name)
        self._job_counter = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def paused_by_printer(self) -> bool:
        """True after the printer sent XOFF (and no XON since)."""
        return self._xoff

    @property
    def last_asb(self) -> PrinterStatus | None:
        """The latest Automatic Status Back block, if the printer sends them."""
        return self._feed.last

    @property
    def asb_active(self) -> bool:
        """True once the printer sent an ASB block: status changes arrive without polling."""
        return self._feed.blocks > 0

    def _set_state(self, new: LinkState) -> None:
        if new is self._state:
            return
        if new not in TRANSITIONS[self._state]:
            raise RuntimeError(f"printer link: {self._state} -> {new} is not allowed")
        log.debug("printer %s: %s -> %s", self.name, self._state, new)
        self._state = new

    async def __aenter__(self) -> Self:
        if self._state is not LinkState.CLOSED:
            raise RuntimeError("a PrinterLink is entered once")
        self._write_lock = asyncio.Lock()
        self._query_lock = asyncio.Lock()
        self._job_lock = asyncio.Lock()
        try:
            self._port = await asyncio.to_thread(
                self._opener, self.spec, self._read_timeout, self.write_timeout
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PrinterLinkError(
                self.name, f"cannot open {self.spec.serial_url}: {exc}", retryable=True
            ) from exc
        self._closing = False
        self._set_state(LinkState.OPEN)
        self._reader = asyncio.create_task(self._read_loop(), name=f"printer-reader {self.name}")
        if self._asb:
            try:
                await self._write(GS_A_ALL)
            except PrinterLinkError:
                await self.__aexit__(None, None, None)
                raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        if self._reader is not None:
            # The reader's blocking read returns within read_timeout; then the task ends by itself.
            await self._reader
            self._reader = None
        if self._port is not None:
            port, self._port = self._port, None
            await asyncio.to_thread(port.close)
        self._fail_waiters(PrinterLinkError(self.name, "link closed", retryable=True))
        self._set_state(LinkState.CLOSED)

    def _check_open(self) -> None:
        if self._state is LinkState.FAILED and self._failure is not None:
            raise self._failure
        if self._state is not LinkState.OPEN or self._port is None:
            raise PrinterLinkError(self.name, f"link is {self._state}", retryable=True)

    def _fail(self, error: PrinterLinkError) -> None:
        log.warning("printer %s: %s", self.name, error.reason)
        self._failure = error
        self._set_state(LinkState.FAILED)
        self._fail_waiters(error)

    def _fail_waiters(self, error: PrinterLinkError) -> None:
        self._feed.end()
        futures: list[asyncio.Future[Any]] = [
            *self._status_waiters,
            *self._barriers,
            *self._tag_waiters.values(),
        ]
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved here: nobody may be waiting on it any more
        self._status_waiters.clear()
        self._barriers.clear()
        self._tag_waiters.clear()

    # -- inbound -----------------------------------------------------------------------------

    def _read_some(self) -> bytes:
        port = self._port
        if port is None:
            return b""
        waiting = port.in_waiting
        data: bytes = port.read(max(1, min(waiting, 4096)))
        return data

    async def _read_loop(self) -> None:
        try:
            while not self._closing:
                data = await asyncio.to_thread(self._read_some)
                if data:
                    self._dispatch(self._parser.feed(data))
        except (serial.SerialException, OSError) as exc:
            if not self._closing:
                self._fail(PrinterLinkError(self.name, f"connection lost: {exc}", retryable=True))

    def _dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            match event:
                case StatusByte(value=value):
                    self._resolve_first(self._status_waiters, value, "status byte")
                case GsRReply(value=value):
                    if self._sync_replies is not None:  # catching up with the printer (see _sync)
                        self._sync_replies.append(asyncio.get_running_loop().time())
                    else:
                        self._resolve_first(self._barriers, value, "GS r reply")
                case AsbBlock():
                    self._feed.on_block(event.status)
                case BlockReply(header=0x37, payload=payload) if payload[:1] == b"\x22":
                    fut = self._tag_waiters.pop(payload[1:], None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                case Xoff():
                    self._xoff = True
                case Xon():
                    self._xoff = False
                case BlockReply() | Unknown():
                    log.debug("printer %s: unexpected %r", self.name, event)

    async def status_changes(self) -> AsyncGenerator[PrinterStatus, None]:
        """Each status the printer reports by ASB that differs from the one before, as it arrives.

        Needs ``asb=True`` and a printer that supports ASB (:attr:`asb_active`); otherwise it yields
        nothing until the link closes. A slow consumer gets the latest status (changes in between are
        merged, never queued). Ends when the link closes; raises :class:`PrinterLinkError` when the
        port broke. Use it as ``async with contextlib.aclosing(link.status_changes()) as changes:``.
        """
        self._check_open()
        async with contextlib.aclosing(self._feed.changes()) as changes:
            async for status in changes:
                yield status
        if self._failure is not None:
            raise self._failure

    def _resolve_first(self, waiters: deque[asyncio.Future[int]], value: int, what: str) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(value)
                return
        log.debug("printer %s: stale %s 0x%02x ignored", self.name, what, value)

    # -- outbound ----------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self._check_open()
        assert self._write_lock is not None
        assert self._port is not None
        port = self._port
        async with self._write_lock:
            try:
                await asyncio.to_thread(port.write, data)
            except serial.SerialTimeoutException as exc:
                raise PrinterLinkError(
                    self.name, f"write timed out after {self.write_timeout}s (printer busy)", retryable=True
                ) from exc
            except (serial.SerialException, OSError) as exc:
                error = PrinterLinkError(self.name, f"connection lost: {exc}", retryable=True)
                self._fail(error)
                raise error from exc

    # -- status ------------------------------------------------------------------------------

    async def query_status(self, ns: Iterable[int] = (1, 2, 3, 4)) -> PrinterStatus:
        """Send DLE EOT n for each ``n`` and decode the replies.

        :class:`PrinterLinkError` ("not responding") when a reply does not come within
        ``status_timeout``: a silent printer is never reported as fine.
        """
        self._check_open()
        assert self._query_lock is not None
        loop = asyncio.get_running_loop()
        replies: dict[int, int] = {}
        async with self._query_lock:
            for n in ns:
                fut: asyncio.Future[int] = loop.create_future()
                self._status_waiters.append(fut)
                try:
                    await self._write(dle_eot(n))
                    replies[n] = await asyncio.wait_for(fut, self.status_timeout)
                except TimeoutError:
                    raise PrinterLinkError(
                        self.name,
                        f"not responding (no reply to DLE EOT {n} within {self.status_timeout}s)",
                        retryable=True,
                    ) from None
                finally:
                    with contextlib.suppress(ValueError):
                        self._status_waiters.remove(fut)
        return decode_status(replies)

    async def _read_status(self) -> PrinterStatus:
        """DLE EOT 1, 2, 4, and 3 only when 2 reports an error."""
        status = await self.query_status((1, 2, 4))
        if status.error:
            status = status.merged(await self.query_status((3,)))
        return status

    async def health(self) -> PrinterHealth:
        """The printer's health in wire form; ``reachable=False`` when it does not answer."""
        try:
            status = await self.query_status((1, 2, 3, 4))
        except PrinterLinkError as exc:
            log.info("printer %s: %s", self.name, exc.reason)
            return PrinterHealth(reachable=False, checked_at=now_ms())
        return to_health(status, now_ms())

    # -- printing ----------------------------------------------------------------------------

    async def print_job(
        self,
        data: bytes,
        *,
        on_progress: ProgressCallback | None = None,
        gs_paren_h: bool = False,
    ) -> PrintOutcome:
        """Print ``data`` (rendered ESC/POS), paced by GS r barriers; see the module docstring.

        ``on_progress`` is awaited after each chunk and when the job is held or resumes.
        ``gs_paren_h`` adds GS ( H fn 48 after the last barrier (Epson TM models) and waits for its
        ``37 22 <tag> 00`` answer. Returns a :class:`PrintOutcome`; raises only on cancellation.
        """
        if self._job_lock is None:
            raise RuntimeError("use the PrinterLink as an async context manager")
        async with self._job_lock:
            started = time.monotonic()
            ctx = _JobContext(total=len(data), on_progress=on_progress)
            try:
                self._check_open()
                result, status, reason = await self._print(data, ctx, gs_paren_h=gs_paren_h)
            except PrinterLinkError as exc:
                result, status, reason = PrintResult.FAILED, None, exc.reason
            return PrintOutcome(
                result=result,
                bytes_started=ctx.sent > 0,
                bytes_written=ctx.sent,
                reason=reason,
                held=tuple(ctx.held),
                status=status,
                elapsed=time.monotonic() - started,
            )

    async def _print(
        self, data: bytes, ctx: _JobContext, *, gs_paren_h: bool
    ) -> tuple[PrintResult, PrinterStatus | None, str | None]:
        parts = segment.chunks(data, self.spec.chunk_size)
        if not self.spec.status_queries:
            for part in parts:
                await self._write(part)
                ctx.sent += len(part)
                await ctx.report(JobPhase.WRITING)
            return PrintResult.PRINTED_UNCONFIRMED, None, "the printer's profile cannot confirm printing"

        # Do not start on a printer that cannot print: wait (held) until it can.
        status = await self._read_status()
        if status.faults():
            await self._hold_until_clear(ctx, status, barrier=None)
        if not self._synced:
            await self._sync(ctx)

        outstanding: deque[asyncio.Future[int]] = deque()
        for part in parts:
            while len(outstanding) >= self.spec.window:
                await self._await_barrier(outstanding.popleft(), ctx)
            outstanding.append(self._new_barrier())
            await self._write(part + GS_R_PAPER)
            ctx.sent += len(part)
            await ctx.report(JobPhase.WRITING)

        await ctx.report(JobPhase.CONFIRMING)
        tag_fut: asyncio.Future[None] | None = None
        final = GS_R_PAPER
        if gs_paren_h:
            self._job_counter = (self._job_counter + 1) % 10000
            tag = f"{self._job_counter:04d}".encode()
            tag_fut = asyncio.get_running_loop().create_future()
            self._tag_waiters[tag] = tag_fut
            final += gs_paren_h_request(tag)
        outstanding.append(self._new_barrier())
        await self._write(final)
        while outstanding:
            await self._await_barrier(outstanding.popleft(), ctx)
        if tag_fut is not None:
            try:
                await asyncio.wait_for(tag_fut, self.status_timeout)
            except TimeoutError:
                log.warning("printer %s: no GS ( H answer; the GS r barrier confirmed the job", self.name)
        try:
            status = await self._read_status()
        except PrinterLinkError as exc:
            return PrintResult.PRINTED_UNCONFIRMED, None, f"processed, but no status afterwards: {exc.reason}"
        return PrintResult.PRINTED, status, None

    async def _sync(self, ctx: _JobContext, *, quiet: float = 1.0, limit: float = 120.0) -> None:
        """Before the first job on this link, let the printer finish what an earlier connection left
        in its buffer (an agent that died mid-job): their GS r replies would otherwise be taken for
        this job's. Send one barrier, then wait until replies have stopped for ``quiet`` seconds."""
        loop = asyncio.get_running_loop()
        self._sync_replies = []
        try:
            await self._write(GS_R_PAPER)
            deadline = loop.time() + limit
            next_check = loop.time() + self.barrier_timeout
            while loop.time() < deadline:
                await asyncio.sleep(0.05)  # polling the reply times the reader records
                replies = self._sync_replies
                if replies and loop.time() - replies[-1] >= quiet:
                    if len(replies) > 1:
                        log.info(
                            "printer %s: caught up with %d earlier barrier(s)", self.name, len(replies) - 1
                        )
                    self._synced = True
                    return
                if loop.time() >= next_check:  # silent for a while: why?
                    status = await self._read_status()  # raises when the printer does not answer
                    if status.faults():
                        await self._hold_until_clear(ctx, status, barrier=None)
                    next_check = loop.time() + self.barrier_timeout
            raise PrinterLinkError(
                self.name, f"the printer did not catch up within {limit:.0f} s", retryable=True
            )
        finally:
            self._sync_replies = None

    def _new_barrier(self) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._barriers.append(fut)
        return fut

    async def _await_barrier(self, fut: asyncio.Future[int], ctx: _JobContext) -> None:
        """Wait for one barrier; when it is late, find out why (fault -> held; silence -> error).

        An ASB block that shows a fault is acted on at once, without waiting for the barrier to be late.
        """
        loop = asyncio.get_running_loop()
        late = 0
        deadline = loop.time() + self.barrier_timeout
        while True:
            by_asb = await self._feed.wait_or(fut, deadline - loop.time())
            if fut.done():
                fut.result()  # raises PrinterLinkError when the link failed
                return
            if by_asb and not (self._feed.last is not None and self._feed.last.faults()):
                continue  # a status change that does not stop printing
            status = await self._read_status()
            if status.faults():
                await self._hold_until_clear(ctx, status, barrier=fut)
                late = 0
                deadline = loop.time() + self.barrier_timeout
                continue
            if by_asb:
                continue
            deadline = loop.time() + self.barrier_timeout
            late += 1
            if late >= 2:
                raise PrinterLinkError(
                    self.name,
                    f"printer stopped confirming (no GS r reply in {2 * self.barrier_timeout:g}s,"
                    " no fault shown)",
                    retryable=False,
                )

    async def _hold_until_clear(
        self, ctx: _JobContext, status: PrinterStatus, barrier: asyncio.Future[int] | None
    ) -> None:
        """Report the job held and poll DLE EOT until the fault clears (or the barrier comes)."""
        held_since = time.monotonic()
        while faults := status.faults():
            reason = ", ".join(faults)
            if reason != ctx.held_reason:
                ctx.held_reason = reason
                ctx.held.append(reason)
                log.info("printer %s: job held: %s", self.name, reason)
                await ctx.report(JobPhase.HELD, reason)
            if self.hold_timeout is not None and time.monotonic() - held_since > self.hold_timeout:
                raise PrinterLinkError(
                    self.name, f"held for more than {self.hold_timeout:g}s: {reason}", retryable=False
                )
            # Poll DLE EOT every hold_poll_interval; an ASB block or the barrier ends the wait early.
            await self._feed.wait_or(barrier, self.hold_poll_interval)
            if barrier is not None and barrier.done():
                barrier.result()  # raises PrinterLinkError when the link failed: not resumed
                break
            status = await self._read_status()
        ctx.held_reason = None
        log.info("printer %s: job resumed", self.name)
        await ctx.report(JobPhase.RESUMED)


__all__ = [
    "GS_A_ALL",
    "TRANSITIONS",
    "JobPhase",
    "JobProgress",
    "LinkState",
    "PortOpener",
    "PrintOutcome",
    "PrintResult",
    "PrinterLink",
    "PrinterLinkError",
    "ProgressCallback",
    "dle_eot",
    "gs_paren_h_request",
    "open_serial",
]
