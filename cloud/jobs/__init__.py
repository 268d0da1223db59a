"""Print jobs on the controller side.

* :mod:`~cloud.jobs.states` - the state machine, as data (``TRANSITIONS``, ``allowed``);
* :mod:`~cloud.jobs.store` - :class:`JobStore`, the one writer of job rows: every transition is one
  compare-and-set through the state machine, and its event is recorded and published there;
* :mod:`~cloud.jobs.intake` - :class:`Intake`: validation, rendering and creation of new jobs, for
  the HTTP API and for bridge submissions alike;
* :mod:`~cloud.jobs.routing` - :class:`Router`: who may print a job, and the degraded path over a
  phone bridge; it reads jobs and asks the store for every change;
* :mod:`~cloud.jobs.views` - how a job looks in API answers.

May import: kernel, and cloud's base modules (models, errors, feed, render).
"""

from __future__ import annotations

from cloud.jobs.intake import Intake, Submission
from cloud.jobs.states import QUEUED_ONLY, TRANSITIONS, Cause, allowed
from cloud.jobs.store import Change, JobFeed, JobStore, Refused
from cloud.jobs.views import job_view

__all__ = [
    "QUEUED_ONLY",
    "TRANSITIONS",
    "Cause",
    "Change",
    "Intake",
    "JobFeed",
    "JobStore",
    "Refused",
    "Submission",
    "allowed",
    "job_view",
]
