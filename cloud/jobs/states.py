"""The job state machine, as data: which moves are allowed, and for what cause.

Two kinds of move:

* **progress** (:attr:`Cause.PROGRESS`): reports from an executor, the outbox recording a send, the
  controller ending a job. Each state has a rank; progress only goes to a higher rank (``printing``
  and ``held`` alternate within one rank). A late or duplicated report therefore never moves a job
  backwards, and a terminal state never changes.
* **a change of executor** of a job nobody holds the right to print yet (no claim granted): the job
  is dispatched anew to its new executor, so it (re-)enters ``dispatched`` from an earlier or equal
  rank. :attr:`Cause.REROUTE` offers it to a phone bridge (its host is offline or slow);
  :attr:`Cause.RELEASE` takes it back from a bridge that did not connect in time, failed, or was
  refused, to the normal path. These are the only moves that lower a rank, each for its stated cause,
  and the store checks the "no claim granted" half of the rule on the row it writes.

:data:`TRANSITIONS` lists every allowed ``(current, new, cause)``; :func:`allowed` reads it.
"""

from __future__ import annotations

from enum import StrEnum

from kernel import wire

S = wire.JobState


class Cause(StrEnum):
    PROGRESS = "progress"
    REROUTE = "reroute"
    RELEASE = "release"


#: Progress rank of each state (see the module docstring).
RANK: dict[wire.JobState, int] = {
    S.QUEUED: 0,
    S.DISPATCHED: 1,
    S.DELIVERED: 2,
    S.PRINTING: 3,
    S.HELD: 3,
    S.PRINTED: 4,
    S.FAILED: 4,
    S.EXPIRED: 4,
    S.CANCELLED: 4,
    S.UNKNOWN: 4,
}

#: The states an unclaimed job may be offered to a bridge from: not yet sent, sent but never
#: acknowledged, or held by a host whose lease lapsed (its agent may have journaled it, or be
#: waiting for the printer; it has not started writing: it holds no claim).
REROUTE_FROM = frozenset({S.QUEUED, S.DISPATCHED, S.DELIVERED, S.HELD})

#: The states a job offered to a bridge is in until the bridge is granted the right to print:
#: offered (``dispatched``) or connected to the printer (``delivered``).
RELEASE_FROM = frozenset({S.DISPATCHED, S.DELIVERED})


def _progress() -> frozenset[tuple[wire.JobState, wire.JobState]]:
    moves: set[tuple[wire.JobState, wire.JobState]] = set()
    for current in S:
        if current.terminal:
            continue
        for new in S:
            if new == current:
                continue
            if {current, new} == {S.PRINTING, S.HELD} or RANK[new] > RANK[current]:
                moves.add((current, new))
    return frozenset(moves)


#: Every allowed move: (current, new) -> the causes it may happen for.
TRANSITIONS: dict[tuple[wire.JobState, wire.JobState], frozenset[Cause]] = {}
for _move in _progress():
    TRANSITIONS[_move] = frozenset({Cause.PROGRESS})
for _cause, _sources in ((Cause.REROUTE, REROUTE_FROM), (Cause.RELEASE, RELEASE_FROM)):
    for _from in _sources:
        _key = (_from, S.DISPATCHED)
        TRANSITIONS[_key] = TRANSITIONS.get(_key, frozenset()) | {_cause}
del _move, _cause, _sources, _from, _key


def allowed(current: wire.JobState, new: wire.JobState, cause: Cause = Cause.PROGRESS) -> bool:
    """Whether a job in ``current`` may move to ``new`` for ``cause`` (a lookup in :data:`TRANSITIONS`)."""
    return cause in TRANSITIONS.get((current, new), frozenset())


#: Jobs no agent can hold yet: the only ones the controller may end on its own.
QUEUED_ONLY = frozenset({S.QUEUED})
