"""Node use cases: create, start, stop, kill, reset, suspend, resume, wipe, edit, delete.

Combines the catalog (node rows), the image catalog (bases), a node driver (machines) and the
console manager. :class:`NodeService` is composed of one part per concern, each in its module:

- ``base``: collaborators, per-node locks, guards, recording and publishing a node's state;
- ``reading``: nodes by id or name, their labs, the spec a driver runs a machine from;
- ``ram``: RAM holds against the host's memory;
- ``creation``: create (also started at once) and edit;
- ``lifecycle``: start, stop, kill, reset, suspend, resume, wipe, delete; exits and pauses;
- ``adoption``: machines found again at start-up, or when their host answers again.
"""

from __future__ import annotations

from virtlab.services.node_settings import NodeSettings
from virtlab.services.nodes.adoption import NodeAdoption
from virtlab.services.nodes.creation import NODE_ID_BYTES, NodeCreation, new_node_id

__all__ = ["NODE_ID_BYTES", "NodeService", "NodeSettings", "new_node_id"]


class NodeService(NodeAdoption, NodeCreation):
    """All the node use cases on one object (see the modules of this package)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.driver.on_exit = self._on_exit
        self.driver.on_pause = self._on_pause
        self.images.users_of = self.users_of
