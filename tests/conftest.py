"""Shared fixtures: a running fleet on the embedded broker and on mosquitto."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.testing import mosquitto_available
from tests.fleet import Fleet, running_fleet

BROKERS = ["embedded", "mosquitto"]
#: Fixtures that start a whole fleet (controller service, HTTP API, broker): a test using one is
#: ``slow`` wherever it is written, so ``make test-fast`` (``-m "not slow and not full"``) leaves it
#: out; ``make test`` runs it.
FLEET_FIXTURES = frozenset({"fleet", "embedded_fleet"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FLEET_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def require_mosquitto() -> None:
    if not mosquitto_available():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is required in CI (.ci/run installs it)")
        pytest.skip("mosquitto is not installed")


@pytest.fixture(params=BROKERS)
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    """A controller with its HTTP API, on the embedded broker or on mosquitto with exported files."""
    if request.param == "mosquitto":
        require_mosquitto()
    async with running_fleet(tmp_path, request.param) as f:
        yield f


@pytest.fixture
async def embedded_fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with running_fleet(tmp_path, "embedded") as f:
        yield f
