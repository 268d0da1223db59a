"""What the HTTP API's routers are given: the stores and the controller (one object per app)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cloud.audit import Audit
from cloud.bridges import Bridges
from cloud.commands import CommandStore
from cloud.controller import Controller
from cloud.jobs.intake import Intake
from cloud.jobs.store import JobStore
from cloud.packages import PackageStore
from cloud.registry import Registry
from cloud.rollouts import Rollouts


@dataclass(frozen=True, kw_only=True)
class MaintenanceApi:
    """Agent packages and rollouts (:mod:`cloud.api.maintenance`)."""

    packages: PackageStore
    rollouts: Rollouts
    commands: CommandStore
    wake_outbox: Callable[[], None]
    #: The controller's HTTP address as agents know it (None until the server listens).
    controller_http: Callable[[], str | None]


@dataclass(frozen=True, kw_only=True)
class ApiContext:
    registry: Registry
    jobs: JobStore
    controller: Controller
    agent_config: Callable[[str, str], dict[str, Any]]
    health: Callable[[], Awaitable[dict[str, Any]]]
    audit: Audit
    #: Called after any change to who may connect (a no-op for the embedded broker, which reads
    #: credentials live; rewrites mosquitto's files and reloads it otherwise).
    credentials_changed: Callable[[], Awaitable[None]]
    commands: CommandStore
    #: New jobs (the same intake bridge submissions go through); default: one over ``jobs``.
    intake: Intake | None = None
    bridges: Bridges | None = None
    bridge_config: Callable[[str, str], dict[str, Any]] | None = None
    maintenance: MaintenanceApi | None = None
