"""The node lifecycle table and its guard."""

from __future__ import annotations

import pytest

from virtlab.errors import Conflict
from virtlab.nodes.state import Action, NodeState, allowed, guard

S, A = NodeState, Action


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (S.STOPPED, A.START), (S.CRASHED, A.START), (S.RUNNING, A.STOP), (S.STARTING, A.STOP),
        (S.SUSPENDED, A.STOP), (S.STOPPING, A.KILL), (S.RUNNING, A.SUSPEND),
        (S.SUSPENDED, A.RESUME), (S.RUNNING, A.RESET), (S.STOPPED, A.WIPE),
        (S.CRASHED, A.DELETE), (S.STOPPED, A.EDIT), (S.RUNNING, A.CONSOLE),
    ],
)  # fmt: skip
def test_allowed(state: NodeState, action: Action) -> None:
    assert allowed(state, action)
    guard("r1", state, action)


@pytest.mark.parametrize(
    ("state", "action", "advice"),
    [
        (S.RUNNING, A.START, "stop it first"),
        (S.STARTING, A.DELETE, "wait until it runs, or kill it"),
        (S.STOPPED, A.STOP, "start it first"),
        (S.SUSPENDED, A.SUSPEND, "resume it, or stop it first"),
        (S.STOPPING, A.START, "wait until it has stopped, or kill it"),
        (S.CRASHED, A.RESUME, "start it again, or wipe it"),
        (S.RUNNING, A.WIPE, "stop it first"),
        (S.RUNNING, A.EDIT, "stop it first"),
        (
            S.UNKNOWN,
            A.STOP,
            "its host does not answer; wait until it answers again (its nodes "
            "are re-adopted then), or check the host's libvirtd (`virtlab host show`)",
        ),
    ],
)
def test_refused_transitions_say_why_and_what_to_do(
    state: NodeState, action: Action, advice: str
) -> None:
    assert not allowed(state, action)
    with pytest.raises(Conflict) as caught:
        guard("r1", state, action)
    assert str(caught.value) == f"cannot {action.value} node r1: it is {state.value}; {advice}"


def test_every_action_is_allowed_somewhere_and_refused_somewhere() -> None:
    for action in Action:
        verdicts = {allowed(state, action) for state in NodeState}
        assert verdicts == {True, False}, action


def test_a_node_whose_host_does_not_answer_allows_only_its_console() -> None:
    assert [a for a in Action if allowed(S.UNKNOWN, a)] == [A.CONSOLE]
    for action in (A.KILL, A.DELETE, A.START, A.WIPE):
        with pytest.raises(Conflict, match="its host does not answer"):
            guard("r1", S.UNKNOWN, action)
