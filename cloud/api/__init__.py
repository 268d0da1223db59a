"""The HTTP API for operators and client apps (FastAPI): one router per resource.

:func:`create_app` assembles :mod:`~cloud.api.health`, :mod:`~cloud.api.devices`,
:mod:`~cloud.api.enrol`, :mod:`~cloud.api.printers`, :mod:`~cloud.api.bridges`,
:mod:`~cloud.api.jobs`, :mod:`~cloud.api.commands`, :mod:`~cloud.api.tokens` (tokens, keys, audit)
and :mod:`~cloud.api.maintenance` (packages, updates, rollouts) over one :class:`ApiContext`. Every
route but ``/healthz``, ``/v1/enroll`` and the agents' package download needs a bearer token
(:mod:`~cloud.api.deps`).

May import: kernel, and the rest of cloud (the API is cloud's outermost layer but the service).
"""

from cloud.api.app import create_app
from cloud.api.context import ApiContext, MaintenanceApi

__all__ = ["ApiContext", "MaintenanceApi", "create_app"]
