"""The BLE test backend: bleak's public API over bumble's real host stack, against virtual printers.

No Bluetooth hardware: the bridge side is a :class:`~phone_bridge.bleak_bumble.BumbleRadio` and each
printer a :class:`~phone_bridge.virtual_printer.VirtualPrinter`, both on one ``bumble.link.LocalLink``
(one test runs them in two processes over the virtual radio server). Everything the bridge does goes
through ``BleakScanner``/``BleakClient`` with ``backend=``; the printer side is asserted on what its
ESC/POS model printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakError, BleakGATTProtocolError, BleakGATTProtocolErrorCode
from bumble.link import LocalLink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernel.gatt import (
    IDENTITY_DOMAIN,
    IDENTITY_NONCE_UUID,
    IDENTITY_SERVICE_UUID,
    IDENTITY_SIGNATURE_UUID,
    PROFILES,
    GattProfile,
    decode_public_key,
    identity_message,
    resolve_profile,
    uuid16,
    verify_identity,
)
from phone_bridge.bleak_bumble import BumbleRadio
from phone_bridge.virtual_printer import Impostor, VirtualPrinter, VirtualPrinterConfig, public_key_b64

DRAIN = 8000.0  # the virtual printer's print speed, bytes/s
# Its receive buffer: two 512-byte chunks. With the buffer exactly one chunk (512/512) pacing leaves no
# slack for delivery jitter, and a paced run lost bytes once in five under 2x CPU overload.
BUFFER = 1024
PACE = 0.8  # the bridge sends at this fraction of the drain rate
BARRIER_EVERY = 4  # chunks between write-with-response barriers
ROOT = Path(__file__).resolve().parent.parent


def receipt(lines: int = 120) -> tuple[bytes, str]:
    """An ESC/POS receipt (ESC @, text lines, feed and cut) and the text it must print as."""
    text = [f"{i:03d} ITEM {'x' * (i % 17):<17} {i * 37 % 1000:>6}.{i % 100:02d} EUR" for i in range(lines)]
    data = b"\x1b@" + b"".join(line.encode() + b"\n" for line in text) + b"\x1bd\x03\x1dV\x00"
    return data, "\n".join(text)


@contextlib.asynccontextmanager
async def bench(*configs: VirtualPrinterConfig) -> AsyncIterator[tuple[BumbleRadio, list[VirtualPrinter]]]:
    """Printers and the bridge's radio on one virtual link."""
    link = LocalLink()
    async with contextlib.AsyncExitStack() as stack:
        printers = [await stack.enter_async_context(VirtualPrinter(c, link=link)) for c in configs]
        radio = await stack.enter_async_context(BumbleRadio(link))
        yield radio, printers


async def find(radio: BumbleRadio, name: str) -> BleakClient:
    device = await BleakScanner.find_device_by_name(name, timeout=5.0, backend=radio.scanner_backend)
    assert device is not None, f"{name} not found"
    return BleakClient(device, timeout=10.0, backend=radio.client_backend)


def print_channel(client: BleakClient) -> tuple[BleakGATTCharacteristic, int]:
    channel = resolve_profile(client.services)
    assert channel is not None
    char = client.services.get_characteristic(channel.write_uuid)
    assert char is not None
    return char, min(char.max_write_without_response_size, 512)


async def send_paced(
    client: BleakClient, char: BleakGATTCharacteristic, data: bytes, chunk: int, *, rate: float | None
) -> float:
    """Write ``data`` in chunks, write-without-response, with a write-with-response barrier every
    :data:`BARRIER_EVERY` chunks and at the end; paced at ``rate`` bytes/s (``None``: unpaced, no
    barrier but the last). Returns the seconds until the last barrier was answered."""
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    started = time.monotonic()
    for n, piece in enumerate(pieces, 1):
        last = n == len(pieces)
        barrier = last or (rate is not None and n % BARRIER_EVERY == 0)
        await client.write_gatt_char(char, piece, response=barrier)
        if rate is not None and not last:
            await asyncio.sleep(len(piece) / rate)  # the pacing itself
    return time.monotonic() - started


# -- discovery -----------------------------------------------------------------------------------


async def test_finds_printer_by_name_and_by_service() -> None:
    generic = VirtualPrinterConfig(name="MPT-II", profile=PROFILES[0], address="F0:C0:00:00:00:01")
    issc = VirtualPrinterConfig(name="TM-P20", profile=PROFILES[1], address="F0:C0:00:00:00:02")
    async with bench(generic, issc) as (radio, _):
        by_name = await BleakScanner.find_device_by_name("TM-P20", timeout=5.0, backend=radio.scanner_backend)
        assert by_name is not None and by_name.address == issc.address and by_name.name == "TM-P20"

        by_service = await BleakScanner.find_device_by_filter(
            lambda _d, _ad: True,
            timeout=5.0,
            service_uuids=[PROFILES[0].service_uuid],
            backend=radio.scanner_backend,
        )
        assert by_service is not None and by_service.address == generic.address

        async with BleakScanner(
            service_uuids=[PROFILES[1].service_uuid], backend=radio.scanner_backend
        ) as scanner:
            async for device, adv in scanner.advertisement_data():
                assert device.address == issc.address  # the filter let nothing else through
                assert adv.local_name == "TM-P20" and PROFILES[1].service_uuid in adv.service_uuids
                break


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
async def test_discovers_each_gatt_profile(profile: GattProfile) -> None:
    config = VirtualPrinterConfig(name="POS-5805", profile=profile)
    async with bench(config) as (radio, [printer]), await find(radio, config.name) as client:
        channel = resolve_profile(client.services)
        assert channel is not None and channel.profile == profile
        char, chunk = print_channel(client)
        assert {"write", "write-without-response"} <= set(char.properties)
        assert client.mtu_size == 517 and char.max_write_without_response_size == 514 and chunk == 512

        statuses: asyncio.Queue[bytes] = asyncio.Queue()
        if channel.notify_uuid is not None:
            await client.start_notify(channel.notify_uuid, lambda _c, data: statuses.put_nowait(bytes(data)))
        await client.write_gatt_char(
            char, b"\x1b@hello " + profile.name.encode() + b"\n\x10\x04\x01", response=False
        )
        await client.write_gatt_char(char, b"\x1dV\x00", response=True)
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == f"hello {profile.name}"
        if channel.notify_uuid is not None:
            status = await asyncio.wait_for(statuses.get(), 5.0)
            assert len(status) == 1 and status[0] & 0x93 == 0x12  # a DLE EOT 1 reply: online, drawer low
            await client.stop_notify(channel.notify_uuid)


# -- printing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [517, 185], ids=["mtu517", "mtu185"])
async def test_paced_receipt_prints_exactly(mtu: int) -> None:
    data, text = receipt()
    config = VirtualPrinterConfig(buffer_size=BUFFER, drain_bytes_per_s=DRAIN, max_mtu=mtu)
    async with bench(config) as (radio, [printer]), await find(radio, config.name) as client:
        char, chunk = print_channel(client)
        assert chunk == min(mtu - 3, 512)
        sent_in = await send_paced(client, char, data, chunk, rate=PACE * DRAIN)
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == text
        assert printer.bytes_received == len(data) and printer.bytes_dropped == 0
    rate = len(data) / sent_in
    print(
        f"\npaced, MTU {mtu} (chunks of {chunk}): {len(data)} bytes in {sent_in:.2f} s = {rate:.0f} B/s "
        f"against a drain of {DRAIN:.0f} B/s ({rate / DRAIN:.0%}), 0 dropped"
    )
    assert rate <= DRAIN


async def test_unpaced_burst_loses_bytes() -> None:
    data, text = receipt()
    config = VirtualPrinterConfig(buffer_size=BUFFER, drain_bytes_per_s=DRAIN)
    async with bench(config) as (radio, [printer]), await find(radio, config.name) as client:
        char, chunk = print_channel(client)
        sent_in = await send_paced(client, char, data, chunk, rate=None)
        await printer.wait_idle()
        assert printer.bytes_received == len(data)
        assert printer.bytes_dropped > len(data) // 2
        assert printer.model.text() != text
    lost = printer.bytes_dropped
    print(
        f"\nunpaced: {len(data)} bytes in {sent_in:.3f} s = {len(data) / sent_in:.0f} B/s into a "
        f"{BUFFER}-byte buffer draining {DRAIN:.0f} B/s: {lost} dropped ({lost / len(data):.0%})"
    )


async def test_oversized_write_command_is_dropped_by_the_printer() -> None:
    """MTU 517 says 514 bytes fit a write command; GATT values cap at 512, so the printer drops it."""
    async with bench(VirtualPrinterConfig()) as (radio, [printer]), await find(radio, "MPT-II") as client:
        char, _ = print_channel(client)
        await client.write_gatt_char(char, b"A" * char.max_write_without_response_size, response=False)
        await client.write_gatt_char(char, b"ok\n\x1dV\x00", response=True)  # barrier: the 514 went first
        [printed] = await printer.wait_for_receipts(1)
        assert printed.text == "ok" and printer.bytes_received == 6
        with pytest.raises(BleakGATTProtocolError) as err:
            await client.write_gatt_char(char, b"A" * 513, response=True)
        assert err.value.code == BleakGATTProtocolErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH


async def test_printer_that_hangs_up_mid_job_calls_disconnected_callback() -> None:
    data, _ = receipt()
    config = VirtualPrinterConfig(disconnect_after_bytes=1500)
    async with bench(config) as (radio, [printer]):
        device = await BleakScanner.find_device_by_name(
            config.name, timeout=5.0, backend=radio.scanner_backend
        )
        assert device is not None
        gone = asyncio.Event()
        calls: list[BleakClient] = []

        def disconnected(client: BleakClient) -> None:
            calls.append(client)
            gone.set()

        client = BleakClient(device, disconnected, timeout=10.0, backend=radio.client_backend)
        async with client:
            char, chunk = print_channel(client)
            with pytest.raises(BleakError):
                await send_paced(client, char, data, chunk, rate=PACE * DRAIN)
            await asyncio.wait_for(gone.wait(), 5.0)
            assert calls == [client] and not client.is_connected
        assert printer.bytes_received == 1500 and printer.disconnections == 1


async def test_pair_before_connect_just_works() -> None:
    """LE Secure Connections "Just Works" pairing runs (it encrypts; it proves no identity)."""
    async with bench(VirtualPrinterConfig()) as (radio, [printer]):
        device = await BleakScanner.find_device_by_name("MPT-II", timeout=5.0, backend=radio.scanner_backend)
        assert device is not None
        async with BleakClient(device, pair=True, timeout=10.0, backend=radio.client_backend) as client:
            char, _ = print_channel(client)
            await client.write_gatt_char(char, b"paired\n\x1dV\x00", response=True)
            [printed] = await printer.wait_for_receipts(1)
            assert printed.text == "paired"


# -- identity ------------------------------------------------------------------------------------


async def challenge(client: BleakClient, nonce: bytes) -> tuple[bytes, bytes]:
    """Write the nonce; return (notified signature, read signature)."""
    notified: asyncio.Queue[bytes] = asyncio.Queue()
    await client.start_notify(IDENTITY_SIGNATURE_UUID, lambda _c, data: notified.put_nowait(bytes(data)))
    await client.write_gatt_char(IDENTITY_NONCE_UUID, nonce, response=True)
    signature = await asyncio.wait_for(notified.get(), 5.0)
    return signature, bytes(await client.read_gatt_char(IDENTITY_SIGNATURE_UUID))


async def test_identity_challenge_verifies_the_right_printer() -> None:
    key = Ed25519PrivateKey.generate()
    public = public_key_b64(key)  # what the cloud sends the bridge
    config = VirtualPrinterConfig(unique_id="shop-7/printer-2", identity_key=key)
    async with bench(config) as (radio, _), await find(radio, config.name) as client:
        nonce = secrets.token_bytes(32)
        notified, read = await challenge(client, nonce)
        assert notified == read and len(read) == 64
        assert verify_identity(public_key=public, unique_id="shop-7/printer-2", nonce=nonce, signature=read)
        assert not verify_identity(
            public_key=public, unique_id="shop-7/printer-3", nonce=nonce, signature=read
        )
        other_nonce = secrets.token_bytes(32)
        assert not verify_identity(
            public_key=public, unique_id="shop-7/printer-2", nonce=other_nonce, signature=read
        )

        with pytest.raises(BleakGATTProtocolError) as err:
            await client.write_gatt_char(IDENTITY_NONCE_UUID, nonce[:16], response=True)
        assert err.value.code == BleakGATTProtocolErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH


@pytest.mark.parametrize("impostor", list(Impostor))
async def test_identity_challenge_fails_for_an_impostor(impostor: Impostor) -> None:
    genuine = Ed25519PrivateKey.generate()
    config = VirtualPrinterConfig(unique_id="printer-1", identity_key=genuine, impostor=impostor)
    async with bench(config) as (radio, _), await find(radio, config.name) as client:
        assert resolve_profile(client.services) is not None  # it looks like the printer
        if impostor is Impostor.NO_KEY:
            assert client.services.get_service(IDENTITY_SERVICE_UUID) is None
            return
        nonce = secrets.token_bytes(32)
        _, signature = await challenge(client, nonce)
        assert len(signature) == 64
        assert not verify_identity(
            public_key=public_key_b64(genuine), unique_id="printer-1", nonce=nonce, signature=signature
        )


# -- across processes ----------------------------------------------------------------------------


async def test_bridge_reaches_printer_in_another_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "phone_bridge.virtual_printer",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "XP-58",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15.0)).decode()
        match = re.search(r"bumble:tcp-client:\S+", line)
        assert match, line
        data, text = receipt(20)
        async with BumbleRadio(match.group()) as radio, await find(radio, "XP-58") as client:
            char, chunk = print_channel(client)
            await send_paced(client, char, data, chunk, rate=PACE * DRAIN)
        printed = []
        while (
            line := (await asyncio.wait_for(proc.stdout.readline(), 10.0)).decode()
        ) != "\n" or not printed:
            if not line.startswith("--- receipt"):
                printed.append(line.rstrip("\n"))
        assert "\n".join(printed) == text
    finally:
        proc.terminate()
        await proc.wait()


# -- pure parts: profiles and the identity rule ----------------------------------------------------


class Char:
    def __init__(self, uuid: str, *properties: str) -> None:
        self.uuid = uuid
        self.properties = list(properties)


class Service:
    def __init__(self, uuid: str, *characteristics: Char) -> None:
        self.uuid = uuid
        self.characteristics = list(characteristics)


def test_resolve_profile_follows_the_order_then_the_fallback() -> None:
    gap = Service(uuid16(0x1800), Char(uuid16(0x2A00), "read", "write"))
    nus, issc = PROFILES[2], PROFILES[1]
    both = [
        gap,
        Service(nus.service_uuid, Char(nus.write_uuid, "write"), Char(nus.notify_uuid or "", "notify")),
        Service(issc.service_uuid, Char(issc.write_uuid, "write-without-response")),
    ]
    channel = resolve_profile(both)
    assert channel is not None and channel.profile == issc  # earlier in PROFILES, later in discovery
    assert channel.notify_uuid is None  # the ISSC notify characteristic is absent here

    vendor = "0000abcd-1111-2222-3333-444455556666"
    fallback = resolve_profile(
        [
            gap,
            Service(IDENTITY_SERVICE_UUID, Char(IDENTITY_NONCE_UUID, "write")),
            Service(vendor, Char("0000abce-0000-0000-0000-000000000000", "notify"), Char("ABCF", "write")),
        ]
    )
    assert fallback is not None and fallback.profile is None
    assert (
        fallback.write_uuid == uuid16(0xABCF)
        and fallback.notify_uuid == "0000abce-0000-0000-0000-000000000000"
    )
    assert resolve_profile([gap, Service(vendor, Char("ABCF", "read"))]) is None


def test_identity_message_is_domain_id_nonce() -> None:
    nonce = bytes(range(32))
    assert identity_message("p-1", nonce) == b"printfleet-ble-identity-v1" + b"p-1" + nonce
    assert identity_message("p-1", nonce).startswith(IDENTITY_DOMAIN)
    for unique_id, bad_nonce in [("", nonce), ("x" * 129, nonce), ("p-1", nonce[:31]), ("p-1", nonce + b"!")]:
        with pytest.raises(ValueError, match=r"unique_id|nonce"):
            identity_message(unique_id, bad_nonce)
    for bad_key in ["not base64!", "AAAA", b"\x00" * 31]:
        with pytest.raises(ValueError, match=r"base64|32 bytes"):
            decode_public_key(bad_key)
    assert not verify_identity(
        public_key=b"\x01" * 32, unique_id="p-1", nonce=nonce, signature=b"\x00" * 63
    )  # wrong length: refused before any curve arithmetic


def test_identity_test_vector_in_the_docs() -> None:
    """docs/ble.md gives printer makers a test vector; it must be right."""
    doc = (ROOT / "docs" / "ble.md").read_text(encoding="utf-8")
    field = dict(re.findall(r"^\| ([\w ()]+?) \| `([^`]+)` \|$", doc, re.M))
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(field["private key seed"]))
    assert public_key_b64(key) == field["public key (base64)"]
    nonce = bytes.fromhex(field["nonce"])
    message = identity_message(field["unique id"], nonce)
    assert message.hex() == field["message"]
    assert key.sign(message).hex() == field["signature"]
    assert verify_identity(
        public_key=field["public key (base64)"],
        unique_id=field["unique id"],
        nonce=nonce,
        signature=bytes.fromhex(field["signature"]),
    )
