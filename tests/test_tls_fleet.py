"""The whole fleet over TLS and mutual TLS: `printfleet up --tls/--mtls`, agents with a [tls] section."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.sim.printer import PtyPrinter
from tests.fleet import running_fleet


@pytest.mark.slow  # a whole fleet over TLS
@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_print_over_tls(tmp_path: Path, mtls: bool) -> None:
    async with running_fleet(tmp_path, "embedded", tls=True, mtls=mtls) as fleet, PtyPrinter() as printer:
        assert fleet.svc.endpoints is not None
        assert fleet.svc.endpoints.mqtt_urls[0].startswith("mqtts://")
        cfg = await fleet.add_device("k1", printer.url)
        text = cfg.read_text()
        assert "[tls]" in text and "BEGIN CERTIFICATE" in text
        assert ("PRIVATE KEY" in text) is mtls  # mutual TLS: the device's own certificate and key
        await fleet.start_agent(cfg)
        await fleet.wait_device("k1", lambda d: d["online"], timeout=30)
        job = (await fleet.cli("print", "k1", "--text", "over TLS", "--wait", "--json")).json()
        assert job["state"] == "printed"
        assert "over TLS" in (await printer.wait_for_receipts(1, timeout=5))[0].text
        assert (tmp_path / "controller" / "tls" / "ca.pem").exists()
