"""A shared virtual BLE radio served over TCP, so a host in another process reaches the in-process
virtual printers (bumble's ``tcp-client:HOST:PORT`` transport, HCI with H4 framing)."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from bumble import hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport.common import StreamPacketSink, StreamPacketSource

log = logging.getLogger(__name__)


class VirtualRadioServer:
    """A shared virtual radio served over TCP: each connection gets its own virtual controller.

    The far end speaks HCI with H4 framing, as bumble's ``tcp-client:HOST:PORT`` transport does; all
    controllers sit on one :class:`~bumble.link.LocalLink`, with whatever in-process devices are on
    it (a :class:`~phone_bridge.virtual_printer.VirtualPrinter`). When a TCP connection closes, its
    controller leaves the radio and its peers see the link drop (supervision timeout).
    """

    def __init__(self, link: LocalLink, host: str = "127.0.0.1", port: int = 0) -> None:
        self.link = link
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._count = 0

    @property
    def spec(self) -> str:
        """The bumble transport spec a host in another process opens (``tcp-client:HOST:PORT``)."""
        if self._server is None:
            raise RuntimeError("the radio server is not running")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"tcp-client:{host}:{port}"

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ControllerProtocol(self), self._host, self._port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _name(self) -> str:
        self._count += 1
        return f"radio-{self._count}"


class _ControllerProtocol(asyncio.Protocol):
    def __init__(self, server: VirtualRadioServer) -> None:
        self._server = server
        self._source: StreamPacketSource | None = None
        self._controller: Controller | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._source = StreamPacketSource()
        name = self._server._name()
        self._controller = Controller(
            name,
            host_source=self._source,
            host_sink=StreamPacketSink(transport),
            link=self._server.link,
            public_address=hci.Address.generate_static_address(),
        )
        log.info("virtual radio: %s joined from %s", name, transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        if self._source is not None:
            self._source.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        for connection in list(controller.le_connections.values()):
            connection.send_ll_control_pdu(ll.TerminateInd(hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR))
        self._server.link.remove_controller(controller)
        log.info("virtual radio: %s left", controller.name)
