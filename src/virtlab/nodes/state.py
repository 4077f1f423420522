"""A node's lifecycle: its states, which actions each state allows, and the guard that says why not.

::

              start                 (QMP up)
    stopped ────────► starting ─────────────► running ◄──── resume ──── suspended
       ▲  ▲              │                      │  │ └────── suspend ──────► ▲
       │  │              │ dies                 │  │ reset (stays running)   │
       │  └─ stop/kill ──┼──────────────────────┘  │                         │
       │                 ▼                          ▼ stop                    │
       │              crashed ◄── QEMU dies ── stopping ── exits ──► stopped  │
       └───────── wipe/start (from crashed) ───────────────────────────────┘

A node is ``crashed`` when its QEMU ended without being asked to (no guest power-off, no stop,
no kill); the node record keeps the last lines of QEMU's log.

A node on a libvirt host is ``unknown`` while that host does not answer: whatever runs there
may still run, so nothing may be done to it but look at its console's scrollback. When the
host answers again the node is re-adopted and becomes what libvirt says (running, suspended;
``crashed`` when its domain ended meanwhile, ``stopped`` when we had asked it to)::

    running/suspended/starting/stopping ── host stops answering ──► unknown
    unknown ── host answers ──► running | suspended | stopped | crashed
"""

from __future__ import annotations

import enum

from virtlab.errors import Conflict

__all__ = ["Action", "NodeState", "allowed", "guard"]


class NodeState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    SUSPENDED = "suspended"
    STOPPING = "stopping"
    CRASHED = "crashed"
    UNKNOWN = "unknown"  # its host does not answer


class Action(enum.StrEnum):
    START = "start"
    STOP = "stop"
    KILL = "kill"
    RESET = "reset"
    SUSPEND = "suspend"
    RESUME = "resume"
    WIPE = "wipe"
    DELETE = "delete"
    EDIT = "edit"
    CONSOLE = "console"
    SCREENSHOT = "screenshot"
    CHECKPOINT = "checkpoint"  # save the running machine (resuming from one is a START)


S = NodeState
_ALLOWED: dict[Action, frozenset[NodeState]] = {
    Action.START: frozenset({S.STOPPED, S.CRASHED}),
    Action.STOP: frozenset({S.STARTING, S.RUNNING, S.SUSPENDED}),
    Action.KILL: frozenset({S.STARTING, S.RUNNING, S.SUSPENDED, S.STOPPING}),
    Action.RESET: frozenset({S.RUNNING}),
    Action.SUSPEND: frozenset({S.RUNNING}),
    Action.RESUME: frozenset({S.SUSPENDED}),
    Action.WIPE: frozenset({S.STOPPED, S.CRASHED}),
    Action.DELETE: frozenset({S.STOPPED, S.CRASHED}),
    Action.EDIT: frozenset({S.STOPPED, S.CRASHED}),
    Action.CONSOLE: frozenset({S.STARTING, S.RUNNING, S.SUSPENDED, S.STOPPING, S.UNKNOWN}),
    Action.SCREENSHOT: frozenset({S.RUNNING, S.SUSPENDED}),
    Action.CHECKPOINT: frozenset({S.RUNNING, S.SUSPENDED}),
}

_ADVICE: dict[NodeState, str] = {
    S.STOPPED: "start it first",
    S.STARTING: "wait until it runs, or kill it",
    S.RUNNING: "stop it first",
    S.SUSPENDED: "resume it, or stop it first",
    S.STOPPING: "wait until it has stopped, or kill it",
    S.CRASHED: "start it again, or wipe it",
    S.UNKNOWN: (
        "its host does not answer; wait until it answers again (its nodes are re-adopted then),"
        " or check the host's libvirtd (`virtlab host show`)"
    ),
}


def allowed(state: NodeState, action: Action) -> bool:
    return state in _ALLOWED[action]


def guard(name: str, state: NodeState, action: Action) -> None:
    """Raise ``Conflict`` saying why ``action`` cannot happen to node ``name`` now."""
    if not allowed(state, action):
        raise Conflict(f"cannot {action.value} node {name}: it is {state.value}; {_ADVICE[state]}")
