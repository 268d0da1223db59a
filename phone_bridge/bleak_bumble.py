"""A bleak backend over bumble's Bluetooth host stack: BLE without Bluetooth hardware.

bleak takes a backend *class* through ``backend=``; a :class:`BumbleRadio` (one bumble host, the
"phone's radio") hands out classes bound to itself::

    async with BumbleRadio(link) as radio:              # in-process: a bumble.link.LocalLink
        device = await BleakScanner.find_device_by_name("MPT-II", backend=radio.scanner_backend)
        async with BleakClient(device, backend=radio.client_backend) as client:
            await client.write_gatt_char(char, data, response=False)

``BumbleRadio("tcp-client:127.0.0.1:PORT")`` (or ``"bumble:tcp-client:..."``) runs the host over
any bumble HCI transport instead, e.g. to the shared virtual radio that
``python -m phone_bridge.virtual_printer --listen`` serves in another process.

Real HCI, L2CAP, ATT and GATT run underneath: advertising reports, connection, MTU exchange,
write requests vs write commands, notifications, ATT errors, peripheral-initiated disconnects.
bumble errors are mapped to bleak's at this boundary (``BleakGATTProtocolError`` for ATT errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, hci
from bumble.controller import Controller
from bumble.device import Advertisement, Connection, Device
from bumble.gatt_client import CharacteristicProxy
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, Transport

log = logging.getLogger(__name__)

#: The ATT MTU the bridge asks for (what Android and BlueZ ask for; iOS asks for less).
DEFAULT_MTU = 517

_T = core.AdvertisingData.Type
_UUID_LISTS = {
    _T.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    _T.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS: 2,
    _T.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    _T.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS: 4,
    _T.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
    _T.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS: 16,
}
_SERVICE_DATA = {
    _T.SERVICE_DATA_16_BIT_UUID: 2,
    _T.SERVICE_DATA_32_BIT_UUID: 4,
    _T.SERVICE_DATA_128_BIT_UUID: 16,
}


def bleak_uuid(value: core.UUID) -> str:
    """A bumble UUID as bleak spells UUIDs: 128-bit, lowercase."""
    return str(uuid.UUID(bytes=value.to_bytes(force_128=True)[::-1]))


def advertisement_data(adv: Advertisement) -> tuple[str | None, AdvertisementData]:
    """bleak's view of a bumble advertisement: (local name, AdvertisementData)."""
    name: str | None = None
    uuids: list[str] = []
    service_data: dict[str, bytes] = {}
    manufacturer: dict[int, bytes] = {}
    tx_power: int | None = None
    for ad_type, data in adv.data.ad_structures:
        if ad_type in _UUID_LISTS:
            size = _UUID_LISTS[ad_type]
            for i in range(0, len(data) - size + 1, size):
                u = bleak_uuid(core.UUID.from_bytes(data[i : i + size]))
                if u not in uuids:
                    uuids.append(u)
        elif ad_type in _SERVICE_DATA:
            size = _SERVICE_DATA[ad_type]
            service_data[bleak_uuid(core.UUID.from_bytes(data[:size]))] = bytes(data[size:])
        elif ad_type == _T.COMPLETE_LOCAL_NAME or (ad_type == _T.SHORTENED_LOCAL_NAME and name is None):
            name = data.decode("utf-8", errors="replace")
        elif ad_type == _T.MANUFACTURER_SPECIFIC_DATA and len(data) >= 2:
            manufacturer[int.from_bytes(data[:2], "little")] = bytes(data[2:])
        elif ad_type == _T.TX_POWER_LEVEL and len(data) == 1:
            tx_power = int.from_bytes(data, "little", signed=True)
    return name, AdvertisementData(
        local_name=name,
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=uuids,
        tx_power=tx_power,
        rssi=adv.rssi,
        platform_data=(adv,),
    )


def address_string(address: hci.Address) -> str:
    return address.to_string(with_type_qualifier=False)


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Map bumble's exceptions to bleak's at the boundary.

    bumble cancels the future of a pending ATT request when the link drops, so a write request or a
    read in flight at a disconnect ends in ``CancelledError`` although nobody cancelled the caller:
    that one becomes a :class:`~bleak.exc.BleakError` (a real cancellation of the task propagates).
    """
    try:
        yield
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise BleakError(f"{what}: disconnected") from exc
    except att.ATT_Error as exc:
        raise BleakGATTProtocolError(exc.error_code) from exc
    except (core.TimeoutError, TimeoutError) as exc:
        raise BleakError(f"{what}: timed out") from exc
    except core.BaseBumbleError as exc:
        raise BleakError(f"{what}: {exc}") from exc


class BumbleRadio:
    """One bumble host, on a :class:`~bumble.link.LocalLink` (a new virtual controller on it) or on an
    HCI transport spec (``tcp-client:HOST:PORT``, ``serial:...``, ``usb:0``, optionally prefixed
    ``bumble:``). An async context manager; bleak gets :attr:`scanner_backend` and :attr:`client_backend`.
    """

    def __init__(
        self,
        transport: LocalLink | str,
        *,
        address: str | None = None,
        name: str = "printfleet-bridge",
        mtu: int = DEFAULT_MTU,
    ) -> None:
        if isinstance(transport, str):
            transport = transport.removeprefix("bumble:")
        self._transport_spec = transport
        self._address = address
        self._name = name
        self.mtu = mtu
        self._device: Device | None = None
        self._controller: Controller | None = None
        self._transport: Transport | None = None
        self._scanners: dict[object, bool] = {}
        self._scan_lock: asyncio.Lock | None = None
        radio = self

        class Scanner(BumbleBleakScanner):
            _radio = radio

        class Client(BumbleBleakClient):
            _radio = radio

        Scanner.__name__ = Scanner.__qualname__ = "BumbleBleakScanner"
        Client.__name__ = Client.__qualname__ = "BumbleBleakClient"
        self.scanner_backend: type[BaseBleakScanner] = Scanner
        """Pass as ``BleakScanner(backend=...)`` (and to its ``discover``/``find_device_by_*``)."""
        self.client_backend: type[BaseBleakClient] = Client
        """Pass as ``BleakClient(..., backend=...)``."""

    @property
    def device(self) -> Device:
        if self._device is None:
            raise BleakError("the bumble radio is not open (use it as an async context manager)")
        return self._device

    async def __aenter__(self) -> Self:
        address = hci.Address(self._address) if self._address else hci.Address.generate_static_address()
        spec = self._transport_spec
        if isinstance(spec, LocalLink):
            self._controller = Controller(f"{self._name}-controller", link=spec, public_address=address)
            host = Host(self._controller, AsyncPipeSink(self._controller))
        else:
            self._transport = await open_transport(spec)
            host = Host(self._transport.source, self._transport.sink)
        self._device = Device(name=self._name, address=address, host=host)
        self._scan_lock = asyncio.Lock()
        try:
            with _mapped("power on"):
                await self._device.power_on()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            for connection in list(device.connections.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.disconnect(), 5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(device.power_off(), 5)
        if self._controller is not None and isinstance(self._transport_spec, LocalLink):
            self._transport_spec.remove_controller(self._controller)
            self._controller = None
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def _scan(self, token: object, active: bool | None) -> None:
        """Register (``active`` given) or unregister a scanner; scan while any is registered."""
        assert self._scan_lock is not None
        async with self._scan_lock:
            was = any(self._scanners.values()) if self._scanners else None
            if active is None:
                self._scanners.pop(token, None)
            else:
                self._scanners[token] = active
            want = any(self._scanners.values()) if self._scanners else None
            if want == was:
                return
            with _mapped("scan"):
                if self.device.is_scanning:
                    await self.device.stop_scanning()
                if want is not None:
                    await self.device.start_scanning(active=want, filter_duplicates=False)


class BumbleBleakScanner(BaseBleakScanner):
    """bleak's scanner interface on a :class:`BumbleRadio` (use ``radio.scanner_backend``)."""

    _radio: ClassVar[BumbleRadio]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode != "passive"
        self._listening = False

    async def start(self) -> None:
        device = self._radio.device
        self.seen_devices = {}
        if not self._listening:
            device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            self._listening = True
        await self._radio._scan(self, self._active)

    async def stop(self) -> None:
        if self._listening:
            self._radio.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            self._listening = False
        await self._radio._scan(self, None)

    def _on_advertisement(self, adv: Advertisement) -> None:
        name, data = advertisement_data(adv)
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = address_string(adv.address)
        device = self.create_or_update_device(address, address, name, adv.address, data)
        self.call_detection_callbacks(device, data)


class BumbleBleakClient(BaseBleakClient):
    """bleak's client interface on a :class:`BumbleRadio` (use ``radio.client_backend``)."""

    _radio: ClassVar[BumbleRadio]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        if isinstance(address_or_ble_device, BLEDevice) and isinstance(
            address_or_ble_device.details, hci.Address
        ):
            self._peer: hci.Address = address_or_ble_device.details
            self._name = address_or_ble_device.name or self.address
        else:
            self._peer = hci.Address(self.address)
            self._name = self.address
        self._connection: Connection | None = None
        self._closing = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else att.ATT_DEFAULT_MTU

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    def _conn(self) -> Connection:
        if self._connection is None:
            raise BleakError("Not connected")
        return self._connection

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self._connection is not None:
            return
        device = self._radio.device
        with _mapped(f"connect to {self.address}"):
            async with asyncio.timeout(self._timeout):
                connection = await device.connect(self._peer, timeout=self._timeout)
                self._connection = connection
                self._closing = False
                connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
                try:
                    await connection.gatt_client.request_mtu(self._radio.mtu)
                    self.services = await self._discover(connection)
                    if pair:
                        await connection.pair()
                except BaseException:
                    await self.disconnect()
                    raise

    async def _discover(self, connection: Connection) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        client = connection.gatt_client

        def max_write() -> int:
            return connection.att_mtu - 3

        for service in await client.discover_services():
            bleak_service = BleakGATTService(service, service.handle, bleak_uuid(service.uuid))
            collection.add_service(bleak_service)
            for char in await service.discover_characteristics():
                props: list[CharacteristicPropertyName] = [
                    name
                    for bit, name in CHARACTERISTIC_PROPERTIES.items()
                    if bit <= 0x80 and char.properties & bit
                ]
                bleak_char = BleakGATTCharacteristic(
                    char, char.handle, bleak_uuid(char.uuid), props, max_write, bleak_service
                )
                collection.add_characteristic(bleak_char)
                for desc in await char.discover_descriptors():
                    collection.add_descriptor(
                        BleakGATTDescriptor(desc, desc.handle, bleak_uuid(desc.type), bleak_char)
                    )
        return collection

    def _on_disconnection(self, reason: int) -> None:
        log.debug("disconnected from %s (reason %#x)", self.address, reason)
        self._connection = None
        self.services = None
        self._subscribers.clear()
        if not self._closing and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._closing = True
        with contextlib.suppress(core.BaseBumbleError, TimeoutError):
            await asyncio.wait_for(connection.disconnect(), self._timeout)
        self._connection = None
        self.services = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        with _mapped("pair"):
            await self._conn().pair()

    async def unpair(self) -> None:
        raise BleakError("unpair is not supported by the bumble backend")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        with _mapped(f"read {characteristic.uuid}"):
            return bytearray(await self._conn().gatt_client.read_value(characteristic.handle))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        with _mapped(f"read descriptor {descriptor.uuid}"):
            return bytearray(await self._conn().gatt_client.read_value(descriptor.handle))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        value = bytes(data)
        if not response and len(value) > characteristic.max_write_without_response_size:
            raise BleakError(
                f"{len(value)} bytes exceed max_write_without_response_size "
                f"({characteristic.max_write_without_response_size})"
            )
        with _mapped(f"write {characteristic.uuid}"):
            await self._conn().gatt_client.write_value(characteristic.handle, value, with_response=response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        with _mapped(f"write descriptor {descriptor.uuid}"):
            await self._conn().gatt_client.write_value(descriptor.handle, bytes(data), with_response=True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        proxy = characteristic.obj
        assert isinstance(proxy, CharacteristicProxy)

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        with _mapped(f"subscribe {characteristic.uuid}"):
            await self._conn().gatt_client.subscribe(proxy, subscriber)
        self._subscribers[characteristic.handle] = subscriber

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        proxy = characteristic.obj
        assert isinstance(proxy, CharacteristicProxy)
        subscriber = self._subscribers.pop(characteristic.handle, None)
        with _mapped(f"unsubscribe {characteristic.uuid}"):
            await self._conn().gatt_client.unsubscribe(proxy, subscriber)


__all__ = [
    "DEFAULT_MTU",
    "BumbleBleakClient",
    "BumbleBleakScanner",
    "BumbleRadio",
    "advertisement_data",
    "bleak_uuid",
]
