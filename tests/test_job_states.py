"""The controller's job state machine: late or duplicated reports never move a job backwards."""

from __future__ import annotations

import itertools

import pytest

from cloud.jobs import allowed
from kernel.wire import JobState as S

FORWARD = [S.QUEUED, S.DISPATCHED, S.DELIVERED, S.PRINTING, S.PRINTED]


def test_the_normal_path_is_allowed() -> None:
    for a, b in itertools.pairwise(FORWARD):
        assert allowed(a, b)


@pytest.mark.parametrize("terminal", sorted(s for s in S if s.terminal))
def test_terminal_states_never_change(terminal: S) -> None:
    for other in S:
        assert not allowed(terminal, other)


def test_no_state_moves_backwards() -> None:
    for later, earlier in [(S.DELIVERED, S.DISPATCHED), (S.PRINTING, S.DELIVERED), (S.HELD, S.QUEUED)]:
        assert not allowed(later, earlier)


def test_held_and_printing_alternate_and_reports_may_skip_ahead() -> None:
    assert allowed(S.PRINTING, S.HELD) and allowed(S.HELD, S.PRINTING)
    assert allowed(S.DISPATCHED, S.PRINTED)  # the 'delivered' report was lost, 'printed' arrived
    assert allowed(S.HELD, S.UNKNOWN)
    assert not allowed(S.PRINTING, S.PRINTING)
