"""The printer link's edge: opening a printer by URL with pyserial, and the ESC/POS commands the
link itself sends (status queries, barriers, Automatic Status Back, the GS ( H job tag)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import serial

from kernel.wire import PrinterSpec

GS_R_PAPER: Final = b"\x1dr\x01"
#: GS a 15: Automatic Status Back on drawer, online/offline, error and paper sensor changes.
GS_A_ALL: Final = b"\x1da\x0f"


def dle_eot(n: int) -> bytes:
    return bytes((0x10, 0x04, n))


def gs_paren_h_request(job_tag: bytes) -> bytes:
    """GS ( H fn 48: ask the printer to answer ``37 22 <tag> 00`` once everything before is printed."""
    if len(job_tag) != 4 or not all(0x20 <= b <= 0x7E for b in job_tag):
        raise ValueError("the GS ( H tag is 4 printable ASCII bytes")
    return b"\x1d(H\x06\x00\x30\x30" + job_tag


PortOpener = Callable[[PrinterSpec, float, float], serial.SerialBase]


def open_serial(spec: PrinterSpec, read_timeout: float, write_timeout: float) -> serial.SerialBase:
    """Open ``spec.serial_url`` with pyserial (blocking; call it in a worker thread)."""
    port = serial.serial_for_url(
        spec.serial_url,
        do_not_open=True,
        baudrate=spec.baud,
        rtscts=spec.flow_control == "rtscts",
        xonxoff=spec.flow_control == "xonxoff",
        dsrdtr=False,
        timeout=read_timeout,
        write_timeout=write_timeout,
    )
    if os.path.exists(spec.serial_url):
        port.exclusive = True
    port.open()
    return port
