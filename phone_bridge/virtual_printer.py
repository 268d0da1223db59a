"""A virtual BLE ESC/POS printer on bumble's real Bluetooth host stack, for tests and demos.

* :class:`VirtualPrinter` is a bumble ``Device`` with a GATT server: it advertises a printer name and
  one of :data:`~kernel.gatt.PROFILES`, takes print data on the profile's write
  characteristic (write request and write command both), keeps it in a small receive buffer that
  drops overflow (counted), prints it into a :class:`~kernel.sim.printer.PrinterModel` at a
  slow drain rate, notifies status bytes (DLE EOT replies, ASB) on the notify characteristic, can
  disconnect after N bytes, and answers the printfleet identity challenge with its Ed25519 key
  (or, as an impostor, with the wrong key or not at all).
* In-process: ``VirtualPrinter(config, link=LocalLink())``; a :class:`~phone_bridge.bleak_bumble.BumbleRadio`
  on the same link finds it.
* Across processes: :class:`VirtualRadioServer` serves a shared virtual radio on TCP, giving each TCP
  connection its own virtual controller (H4 framing) on the link, so a host in another process reaches
  the printer with the bumble transport ``tcp-client:127.0.0.1:PORT``.
  ``python -m phone_bridge.virtual_printer --listen 127.0.0.1:0`` does that and prints the spec.
* Its configuration is in :mod:`phone_bridge.virtual_printer_config`, the radio server in
  :mod:`phone_bridge.virtual_radio`; both are importable from here.

The drain is modelled in continuous time: before each write lands, the printer prints what it
could have printed since the last drain, so a sender paced below the drain rate loses nothing and an
unpaced burst overflows the buffer exactly as a real printer's would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from bumble import att, gatt, hci
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, Transport
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernel.gatt import (
    IDENTITY_NONCE_UUID,
    IDENTITY_SERVICE_UUID,
    IDENTITY_SIGNATURE_UUID,
    NONCE_SIZE,
    PROFILES,
    PROFILES_BY_NAME,
    identity_message,
)
from kernel.sim.model import PrinterModel
from kernel.sim.state import Overflow, Receipt
from phone_bridge.virtual_printer_config import Impostor, VirtualPrinterConfig, public_key_b64
from phone_bridge.virtual_radio import VirtualRadioServer

log = logging.getLogger(__name__)

_SIG_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"
_TICK: Final = 0.005


def _bumble_uuid(value: str) -> UUID:
    if value.endswith(_SIG_SUFFIX) and value.startswith("0000"):
        return UUID.from_16_bits(int(value[4:8], 16))
    return UUID(value)


class VirtualPrinter:
    """A virtual BLE ESC/POS printer; an async context manager (advertising while open).

    Give ``link`` (in-process, a new virtual controller on it) or ``transport`` (a bumble HCI
    transport spec for its host). :attr:`model` is the printer; the ``bytes_*`` counters and the
    ``wait_*`` helpers are for assertions.
    """

    def __init__(
        self,
        config: VirtualPrinterConfig | None = None,
        *,
        link: LocalLink | None = None,
        transport: str | None = None,
    ) -> None:
        if (link is None) == (transport is None):
            raise ValueError("give exactly one of link and transport")
        self.config = config or VirtualPrinterConfig()
        self._link = link
        self._transport_spec = transport
        self.model = PrinterModel(buffer_size=self.config.buffer_size, overflow=Overflow.DROP)
        self.model.on_change = self._signal
        self.bytes_received = 0
        """Print data that arrived over BLE (before the buffer; bytes after a forced disconnect excluded)."""
        self.connections = 0
        self.disconnections = 0
        self.challenges = 0
        self.write_requests = 0
        """Write requests (with response) to the write characteristic, refused ones included."""
        self.write_commands = 0
        """Write commands (without response) to the write characteristic, ignored ones included."""
        self._controller: Controller | None = None
        self._transport: Transport | None = None
        self._device: Device | None = None
        self._write_char: gatt.Characteristic[bytes] | None = None
        self._notify_char: gatt.Characteristic[bytes] | None = None
        self._signature_char: gatt.Characteristic[bytes] | None = None
        self._signature = b""
        self._key: Ed25519PrivateKey | None = None
        self._connection: Connection | None = None
        self._changed: asyncio.Event | None = None
        self._actions: asyncio.Queue[Callable[[], object]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._drained_at = 0.0
        self._credit = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self.config
        self._changed = asyncio.Event()
        self._actions = asyncio.Queue()
        address = hci.Address(cfg.address)
        if self._link is not None:
            self._controller = Controller(f"printer-{cfg.name}", link=self._link, public_address=address)
            host = Host(self._controller, AsyncPipeSink(self._controller))
        else:
            assert self._transport_spec is not None
            self._transport = await open_transport(self._transport_spec.removeprefix("bumble:"))
            host = Host(self._transport.source, self._transport.sink)
        device = Device(name=cfg.name, address=address, host=host)
        self._device = device
        device.gatt_server.max_mtu = cfg.max_mtu
        device.add_services(self._services())
        self._count_writes(device)
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        try:
            await device.power_on()
            await device.start_advertising(
                auto_restart=True,
                advertising_data=self._advertising_data(),
                advertising_interval_min=cfg.advertising_interval_ms,
                advertising_interval_max=cfg.advertising_interval_ms,
            )
        except BaseException:
            await self._close()
            raise
        self._drained_at = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._drain_loop(), name=f"virtual-printer-drain-{cfg.name}"),
            asyncio.create_task(self._action_loop(), name=f"virtual-printer-actions-{cfg.name}"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        device, self._device = self._device, None
        if device is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.power_off(), 5)
        if self._controller is not None and self._link is not None:
            self._link.remove_controller(self._controller)
            self._controller = None
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    # -- GATT --------------------------------------------------------------------------------

    def _services(self) -> list[gatt.Service]:
        cfg = self.config
        profile = cfg.profile
        props = gatt.Characteristic.Properties
        write_props = props(0)
        if cfg.write_with_response:
            write_props |= props.WRITE
        if cfg.write_without_response:
            write_props |= props.WRITE_WITHOUT_RESPONSE
        if profile.notify_uuid == profile.write_uuid:
            write_props |= props.NOTIFY
        self._write_char = gatt.Characteristic(
            _bumble_uuid(profile.write_uuid),
            write_props,
            gatt.Characteristic.WRITEABLE,
            gatt.CharacteristicValue(write=self._on_print_data),
        )
        chars: list[gatt.Characteristic[bytes]] = [self._write_char]
        if profile.notify_uuid is None:
            self._notify_char = None
        elif profile.notify_uuid == profile.write_uuid:
            self._notify_char = self._write_char
        else:
            self._notify_char = gatt.Characteristic(
                _bumble_uuid(profile.notify_uuid), props.NOTIFY, gatt.Characteristic.READABLE, b""
            )
            chars.append(self._notify_char)
        services = [gatt.Service(_bumble_uuid(profile.service_uuid), chars)]

        match cfg.impostor:
            case Impostor.NO_KEY:
                self._key = None
            case Impostor.WRONG_KEY:
                self._key = Ed25519PrivateKey.generate()
            case None:
                self._key = cfg.identity_key
        if self._key is not None:
            signature_char: gatt.Characteristic[bytes] = gatt.Characteristic(
                UUID(IDENTITY_SIGNATURE_UUID),
                props.READ | props.NOTIFY,
                gatt.Characteristic.READABLE,
                gatt.CharacteristicValue(read=lambda _connection: self._signature),
            )
            self._signature_char = signature_char
            nonce_char: gatt.Characteristic[bytes] = gatt.Characteristic(
                UUID(IDENTITY_NONCE_UUID),
                props.WRITE,
                gatt.Characteristic.WRITEABLE,
                gatt.CharacteristicValue(write=self._on_nonce),
            )
            services.append(gatt.Service(UUID(IDENTITY_SERVICE_UUID), [nonce_char, signature_char]))
        return services

    def _advertising_data(self) -> bytes:
        service = _bumble_uuid(self.config.profile.service_uuid)
        uuid_type = (
            AdvertisingData.Type.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS
            if len(service.to_bytes()) == 2
            else AdvertisingData.Type.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS
        )
        return bytes(
            AdvertisingData(
                [
                    (AdvertisingData.Type.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
                    (AdvertisingData.Type.COMPLETE_LOCAL_NAME, self.config.name.encode()),
                    (uuid_type, service.to_bytes()),
                ]
            )
        )

    def _count_writes(self, device: Device) -> None:
        """Tell write requests from write commands on the print characteristic (bumble's GATT server
        hands both to the same value callback), and enforce the configured write properties."""
        server = device.gatt_server
        on_request, on_command = server.on_att_write_request, server.on_att_write_command

        def request(bearer: att.Bearer, pdu: att.ATT_Write_Request) -> object:
            if self._write_char is not None and pdu.attribute_handle == self._write_char.handle:
                self.write_requests += 1
                if not self.config.write_with_response:
                    raise att.ATT_Error(att.ATT_WRITE_NOT_PERMITTED_ERROR, pdu.attribute_handle)
            return on_request(bearer, pdu)

        def command(bearer: att.Bearer, pdu: att.ATT_Write_Command) -> object:
            if self._write_char is not None and pdu.attribute_handle == self._write_char.handle:
                self.write_commands += 1
                if not self.config.write_without_response:
                    return None
            return on_command(bearer, pdu)

        # bumble's server looks its handlers up by name on the instance (``on_<pdu name>``).
        server.on_att_write_request = request
        server.on_att_write_command = command

    def _on_connection(self, connection: Connection) -> None:
        self.connections += 1
        if self.connections <= self.config.drop_first_connections:
            log.info("virtual printer %s: dropping connection %d", self.config.name, self.connections)
            reason = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR
            self._act(lambda: connection.disconnect(reason))
            connection.on(Connection.EVENT_DISCONNECTION, lambda _reason: self._on_disconnection(connection))
            return
        self._connection = connection
        connection.on(Connection.EVENT_DISCONNECTION, lambda _reason: self._on_disconnection(connection))
        self._signal()

    def _on_disconnection(self, connection: Connection) -> None:
        self.disconnections += 1
        if self._connection is connection:
            self._connection = None
        self._signal()

    def _on_print_data(self, connection: Connection, value: bytes) -> None:
        limit = self.config.disconnect_after_bytes
        if limit is not None:
            if self.bytes_received >= limit:
                return  # already hanging up: lost
            value = value[: limit - self.bytes_received]
        self._catch_up()
        self.bytes_received += len(value)
        self.model.receive(value)
        self._send_status()
        if limit is not None and self.bytes_received >= limit:
            log.info(
                "virtual printer %s: disconnecting after %d bytes", self.config.name, self.bytes_received
            )
            self._act(
                lambda: connection.disconnect(hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR)
            )

    def _on_nonce(self, connection: Connection, value: bytes) -> None:
        if len(value) != NONCE_SIZE:
            raise att.ATT_Error(att.ATT_INVALID_ATTRIBUTE_LENGTH_ERROR)
        assert self._key is not None and self._signature_char is not None
        self.challenges += 1
        self._signature = self._key.sign(identity_message(self.config.unique_id, bytes(value)))
        char, signature = self._signature_char, self._signature
        self._act(lambda: self._notify(char, signature))

    # -- drain and notifications -------------------------------------------------------------

    def _catch_up(self) -> None:
        """Print what the drain rate allowed since the last call."""
        now = time.monotonic()
        self._credit += (now - self._drained_at) * self.config.drain_bytes_per_s
        self._drained_at = now
        if self.model.buffered == 0:
            self._credit = 0.0  # an idle printer does not save up print time
            return
        budget = int(self._credit)
        if budget:
            self._credit -= budget
            self.model.process(budget)
            self._send_status()

    async def _drain_loop(self) -> None:
        while True:
            await asyncio.sleep(_TICK)  # the printer's clock, not synchronisation
            self._catch_up()

    def _send_status(self) -> None:
        out = self.model.take_output()
        if out and self._notify_char is not None:
            char = self._notify_char
            self._act(lambda: self._notify(char, out))

    async def _notify(self, char: gatt.Characteristic[bytes], value: bytes) -> None:
        if self._device is not None and self._connection is not None:
            await self._device.notify_subscribers(char, value)

    def _act(self, action: Callable[[], object]) -> None:
        assert self._actions is not None
        self._actions.put_nowait(action)

    async def _action_loop(self) -> None:
        assert self._actions is not None
        while True:
            action = await self._actions.get()
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("virtual printer %s: action failed", self.config.name)

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # -- for assertions ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.config.address

    @property
    def public_key_b64(self) -> str | None:
        """The public key of the key it signs with (an impostor's own key included)."""
        return public_key_b64(self._key) if self._key is not None else None

    @property
    def bytes_dropped(self) -> int:
        return self.model.bytes_dropped

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def wait_until(
        self, predicate: Callable[[VirtualPrinter], bool], timeout: float | None = 10.0
    ) -> None:
        """Wait (bounded) until ``predicate(self)`` holds; re-checked on every change and drain tick."""
        assert self._changed is not None
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_receipts(self, n: int, timeout: float | None = 10.0) -> list[Receipt]:
        await self.wait_until(lambda p: len(p.model.receipts) >= n, timeout)
        return list(self.model.receipts)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until everything received was printed."""
        await self.wait_until(lambda p: p.model.buffered == 0, timeout)


# ----------------------------------------------------------------------------------------------
# Command line.


def _load_key(path: str | None) -> Ed25519PrivateKey | None:
    if path is None:
        return None
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(path, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path}: not an Ed25519 private key")
    return key


async def _serve(args: argparse.Namespace) -> None:
    config = VirtualPrinterConfig(
        name=args.name,
        profile=PROFILES_BY_NAME[args.profile],
        address=args.address,
        buffer_size=args.buffer,
        drain_bytes_per_s=args.drain,
        max_mtu=args.mtu,
        disconnect_after_bytes=args.disconnect_after,
        unique_id=args.unique_id,
        identity_key=_load_key(args.key),
        impostor=Impostor(args.impostor) if args.impostor else None,
    )
    async with contextlib.AsyncExitStack() as stack:
        if args.transport:
            printer = await stack.enter_async_context(VirtualPrinter(config, transport=args.transport))
            where = f"on HCI transport {args.transport}"
        else:
            link = LocalLink()  # type: ignore[no-untyped-call]  # bumble leaves LocalLink.__init__ unannotated
            host, _, port = args.listen.rpartition(":")
            radio = await stack.enter_async_context(VirtualRadioServer(link, host or "127.0.0.1", int(port)))
            printer = await stack.enter_async_context(VirtualPrinter(config, link=link))
            where = f"on the virtual radio bumble:{radio.spec}"
        print(f"virtual printer {config.name} ({config.profile.name}, {config.address}) {where}", flush=True)
        if printer.public_key_b64:
            print(f"identity public key (base64): {printer.public_key_b64}", flush=True)
        seen = 0
        while True:
            receipts = await printer.wait_for_receipts(seen + 1, timeout=None)
            for receipt in receipts[seen:]:
                seen += 1
                print(f"--- receipt {seen} ---\n{receipt.text}\n", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phone_bridge.virtual_printer", description=__doc__)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="serve a shared virtual radio on HOST:PORT (port 0: any free one); "
        "hosts join it with the bumble transport tcp-client:HOST:PORT",
    )
    where.add_argument("--transport", help="run the printer's host on this bumble HCI transport spec instead")
    parser.add_argument("--name", default="MPT-II")
    parser.add_argument("--profile", choices=list(PROFILES_BY_NAME), default=PROFILES[0].name)
    parser.add_argument("--address", default="F0:C0:00:00:00:01")
    parser.add_argument(
        "--buffer", type=int, default=512, help="receive buffer in bytes (overflow is dropped)"
    )
    parser.add_argument("--drain", type=float, default=8000.0, help="print speed in bytes/s")
    parser.add_argument("--mtu", type=int, default=517, help="largest ATT MTU the printer accepts")
    parser.add_argument("--disconnect-after", type=int, default=None, help="hang up after this many bytes")
    parser.add_argument("--unique-id", default="printer-1")
    parser.add_argument("--key", help="PEM file with the printer's Ed25519 private key (identity challenge)")
    parser.add_argument("--impostor", choices=[i.value for i in Impostor])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()


__all__ = [
    "Impostor",
    "VirtualPrinter",
    "VirtualPrinterConfig",
    "VirtualRadioServer",
    "public_key_b64",
]
