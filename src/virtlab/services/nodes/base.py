"""What every node use case shares: the service's collaborators, the per-node locks, the
guards that refuse an action, and recording a node's state (written, then published).

Each action is guarded by the node's state (``virtlab.nodes.state``); a transition runs under
the node's own lock, so two requests for one node never interleave. The checkpoint service
takes those locks too (``holding``) and says which nodes have checkpoints (``checkpoints_of``:
no wipe, no hardware change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from virtlab._util.faults import FaultPoint
from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.labs import LabRepository
from virtlab.errors import Conflict
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.memory import RamLedger
from virtlab.nodes.spec import Accel
from virtlab.nodes.state import NodeState
from virtlab.services.consoles import ConsoleManager
from virtlab.services.events import EventBus
from virtlab.services.images import ImageService
from virtlab.services.limits import NodeQuota
from virtlab.services.node_settings import NodeSettings

__all__ = ["ACTIVE", "NodeBase", "log"]

log = logging.getLogger("virtlab.nodes")

# States in which a node's machine runs or is about to.
ACTIVE = (NodeState.STARTING, NodeState.RUNNING, NodeState.SUSPENDED, NodeState.STOPPING)


@dataclass
class NodeBase:
    catalog: Catalog
    images: ImageService
    driver: NodeDriver
    consoles: ConsoleManager
    nodes_dir: Path
    accel: Callable[[], Accel]
    stop_timeout: float = 30.0
    events: EventBus | None = None
    quota: NodeQuota | None = None  # nodes per user
    memory: RamLedger | None = None  # RAM promised against the host's memory
    fault: FaultPoint = field(default_factory=FaultPoint)

    def __post_init__(self) -> None:
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._lab_names: dict[str, str] = {}
        self._ports_making: set[int] = set()  # console ports of nodes being created
        self._names_making: set[tuple[str, str]] = set()  # (lab id, name) being created
        # Set by the link service: wire a node's links once it runs; unwire them before it goes.
        self.after_start: Callable[[NodeRecord], Awaitable[None]] | None = None
        self.before_delete: Callable[[NodeRecord], Awaitable[None]] | None = None
        self.checkpoints_of: Callable[[str], list[str]] = lambda _id: []  # set by checkpoints
        # Set by the host service: where a new node goes; whether a host answers now.
        self.place: Callable[[NodeSettings], str] = lambda _s: "local"
        self.reachable: Callable[[str], bool] = lambda _host: True
        self.tunnels_of: Callable[[NodeRecord], dict] = lambda _r: {}  # set by links

    # -- locks and guards ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def holding(self, *node_ids: str) -> AsyncIterator[None]:
        """Hold these nodes' locks, taken in one fixed order (two holders never deadlock)."""
        async with contextlib.AsyncExitStack() as stack:
            for node_id in sorted(set(node_ids)):
                await stack.enter_async_context(self._locks[node_id])
            yield

    def _refuse_if_checkpoints(self, record: NodeRecord, verb: str, what: list[str]) -> None:
        tags = self.checkpoints_of(record.id) if what else []
        if tags:
            raise Conflict(
                f"cannot {verb} {', '.join(what)} of node {record.name}: its checkpoints "
                f"({', '.join(tags)}) are saved in its disk and need the machine as it is; delete"
                f" them first (`virtlab node checkpoints rm {record.name} TAG`, or `virtlab lab "
                "checkpoints rm LAB TAG` for a lab's)"
            )

    # -- recording a node's state -------------------------------------------------------------

    def lab_name(self, lab_id: str) -> str:
        """The name of a lab; remembered, since a lab keeps its name and its id is never
        reused (node events and records ask on every change of state)."""
        name = self._lab_names.get(lab_id)
        if name is None:
            with self.catalog.session() as session:
                lab = LabRepository(session).get(lab_id)
            if lab is None:
                return "?"
            name = self._lab_names[lab_id] = lab.name
        return name

    async def _set(
        self, node_id: str, state: NodeState, detail: str | None = None, *, durable: bool = False
    ) -> NodeRecord:
        """Record a node's state. Not durable by default: the start-up re-adoption derives a
        state again, so it need not wait for the disk; ``durable`` when the row itself was
        written without waiting (a node created started)."""
        fields: dict[str, object] = {"state": state.value}
        if detail is not None:
            fields["detail"] = detail
        record = await self.catalog.write(
            lambda session: NodeRepository(session).update(node_id, **fields), durable=durable
        )
        self.publish(record)
        return record

    set_state = _set  # for the host service: nodes whose host went away or came back

    def publish(self, record: NodeRecord, *, deleted: bool = False) -> None:
        if self.events is not None:
            self.events.publish(
                "node", id=record.id, name=record.name, lab=self.lab_name(record.lab_id),
                state="deleted" if deleted else record.state, detail=record.detail,
            )  # fmt: skip
