"""Transports for the simulated printer: a :class:`~kernel.sim.model.PrinterModel` on a pty
or a TCP port, with a drain loop that prints at a chosen speed.

* :class:`PtyPrinter` runs a model on the master side of a pty; its ``url`` is the slave path, which
  pyserial opens like a serial device (a pty buffers about 19.5 KB and has no modem lines).
* :class:`TcpPrinter` serves one on ``socket://127.0.0.1:PORT`` (one client at a time).

Both are async context managers; :meth:`SimulatedPrinter.wait_until` and
:meth:`~SimulatedPrinter.wait_for_receipts` wait (bounded) on the model's state for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from types import TracebackType
from typing import Self

from kernel.escpos.status import ErrorKind
from kernel.sim.model import PrinterModel
from kernel.sim.state import KEEP, Keep, Receipt

log = logging.getLogger(__name__)


class SimulatedPrinter:
    """The drain loop and the waiting helpers shared by :class:`PtyPrinter` and :class:`TcpPrinter`."""

    url: str

    def __init__(
        self,
        model: PrinterModel | None = None,
        *,
        drain_bytes_per_s: float | None = None,
        tick: float = 0.005,
    ) -> None:
        self.model = model if model is not None else PrinterModel()
        self.drain_bytes_per_s = drain_bytes_per_s
        self._tick = tick
        self._wake: asyncio.Event | None = None
        self._changed_ev: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self._changed_ev = asyncio.Event()
        self.model.on_change = self._on_model_change
        self._drain_task = asyncio.create_task(self._drain(), name=f"simulator-drain {self.url}")

    async def _stop(self) -> None:
        self.model.on_change = None
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None

    def _on_model_change(self) -> None:
        assert self._wake is not None
        assert self._changed_ev is not None
        self._wake.set()
        self._changed_ev.set()

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _accepting_changed(self) -> None:
        """Hook for transports that stop reading while the model's buffer is full."""

    async def _drain(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._flush()
            if self.drain_bytes_per_s is None:
                self._flush(self.model.process())
                continue
            credit = 0.0
            last = loop.time()
            while self.model.buffered and not self.model.holding:
                await asyncio.sleep(self._tick)  # simulated print time, not synchronisation
                now = loop.time()
                credit += (now - last) * self.drain_bytes_per_s
                last = now
                n = int(credit)
                credit -= n
                self._flush(self.model.process(n))

    def _flush(self, data: bytes = b"") -> None:
        out = data + self.model.take_output()
        if out:
            self._send(out)
        self._accepting_changed()

    def _receive(self, data: bytes) -> None:
        self.model.receive(data)
        self._flush()

    def set_fault(
        self,
        *,
        paper_out: bool | None = None,
        paper_near_end: bool | None = None,
        cover_open: bool | None = None,
        offline: bool | None = None,
        error: ErrorKind | Keep | None = KEEP,
    ) -> None:
        """Set faults on the model (ASB blocks, if enabled, go out at once)."""
        self.model.set_fault(
            paper_out=paper_out,
            paper_near_end=paper_near_end,
            cover_open=cover_open,
            offline=offline,
            error=error,
        )
        self._flush()

    def clear_faults(self) -> None:
        self.model.clear_faults()
        self._flush()

    # The timeout parameters (ASYNC109) are this test helper's purpose: every wait is bounded.
    async def wait_until(
        self,
        predicate: Callable[[PrinterModel], bool],
        timeout: float | None,
    ) -> None:
        """Wait until ``predicate(model)`` holds, re-checking on every model change."""
        assert self._changed_ev is not None, "use the printer as an async context manager"
        async with asyncio.timeout(timeout):
            while not predicate(self.model):
                self._changed_ev.clear()
                await self._changed_ev.wait()

    async def wait_for_receipts(
        self,
        n: int,
        timeout: float | None = 5.0,
    ) -> list[Receipt]:
        """Wait until at least ``n`` receipts were cut; return them all."""
        await self.wait_until(lambda m: len(m.receipts) >= n, timeout)
        return list(self.model.receipts)


class PtyPrinter(SimulatedPrinter):
    """A :class:`PrinterModel` on the master side of a pty; ``url`` is the slave path."""

    def __init__(
        self,
        model: PrinterModel | None = None,
        *,
        drain_bytes_per_s: float | None = None,
        tick: float = 0.005,
    ) -> None:
        super().__init__(model, drain_bytes_per_s=drain_bytes_per_s, tick=tick)
        self._master = -1
        self._slave = -1
        self._reading = False
        self._pending_out = bytearray()
        self.url = ""

    async def __aenter__(self) -> Self:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        self.url = os.ttyname(self._slave)
        await self._start()
        self._set_reading(True)
        log.debug("simulated printer on %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        loop = asyncio.get_running_loop()
        self._set_reading(False)
        if self._pending_out:
            loop.remove_writer(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def _set_reading(self, on: bool) -> None:
        if on == self._reading or self._master < 0:
            return
        loop = asyncio.get_running_loop()
        if on:
            loop.add_reader(self._master, self._on_readable)
        else:
            loop.remove_reader(self._master)
        self._reading = on

    def _accepting_changed(self) -> None:
        self._set_reading(self.model.accepting)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no process has the slave open (we keep ours, so rare)
            log.debug("pty read: %s", exc)
            return
        if data:
            self._receive(data)

    def _send(self, data: bytes) -> None:
        if self._master < 0:
            return
        if self._pending_out:
            self._pending_out += data
            return
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self._pending_out += data[n:]
            asyncio.get_running_loop().add_writer(self._master, self._on_writable)

    def _on_writable(self) -> None:
        try:
            n = os.write(self._master, self._pending_out)
        except BlockingIOError:
            return
        del self._pending_out[:n]
        if not self._pending_out:
            asyncio.get_running_loop().remove_writer(self._master)


class TcpPrinter(SimulatedPrinter):
    """A :class:`PrinterModel` served on 127.0.0.1 (port 0); ``url`` is ``socket://127.0.0.1:PORT``.

    One client at a time: a second connection is closed at once.
    """

    def __init__(
        self,
        model: PrinterModel | None = None,
        *,
        drain_bytes_per_s: float | None = None,
        tick: float = 0.005,
    ) -> None:
        super().__init__(model, drain_bytes_per_s=drain_bytes_per_s, tick=tick)
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._can_read: asyncio.Event | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self._can_read = asyncio.Event()
        self._can_read.set()
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"socket://127.0.0.1:{port}"
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        if self._client_task is not None:
            self._client_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._client_task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _accepting_changed(self) -> None:
        if self._can_read is not None:
            if self.model.accepting:
                self._can_read.set()
            else:
                self._can_read.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            writer.close()
            return
        self._writer = writer
        self._client_task = asyncio.current_task()
        assert self._can_read is not None
        try:
            while True:
                await self._can_read.wait()
                data = await reader.read(65536)
                if not data:
                    break
                self._receive(data)
        except ConnectionError as exc:
            log.debug("simulator client gone: %s", exc)
        finally:
            self._writer = None
            self._client_task = None
            writer.close()

    def _send(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)


__all__ = ["PtyPrinter", "SimulatedPrinter", "TcpPrinter"]
