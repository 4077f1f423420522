"""Whose is what: labs belong to users, and everything in a lab (nodes, links, consoles,
checkpoints, captures, archives) to the lab's owner.

An admin sees and touches everything. A user sees only their own labs; anything else is
answered 404 exactly as if it did not exist, so ids and names cannot be probed. The ``default``
lab and labs without an owner are the admins'. Images are shared.

:func:`guard_path` runs before every route of the routers that take a node ``ref``, a lab
``name`` or a ``link_id`` in their path (HTTP and WebSocket alike), so a new route there cannot
forget the check. It also hands the route the node's id in place of the ``ref`` it was given:
a name resolved among the requester's own nodes, never someone else's of the same name.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from virtlab.api.auth import PrincipalDep
from virtlab.catalog import NodeRecord
from virtlab.catalog.labs import LabRecord, LabRepository, LinkRecord
from virtlab.errors import InvalidRequest, NotFound
from virtlab.runtime import Runtime
from virtlab.services.users import Principal

__all__ = ["AMBIGUOUS", "Access", "AccessDep", "guard_path"]

# What guard_path answers for a node name that nodes of several labs have: every route with a
# node ``ref`` in its path declares it (tests/test_openapi.py checks).
AMBIGUOUS = "a node name that nodes of several labs have (say which: LAB:NAME)"


class Access:
    """What one principal may see, over one runtime."""

    def __init__(self, who: Principal, runtime: Runtime) -> None:
        self.who = who
        self.runtime = runtime
        self._owners: dict[str, str | None] = {}  # lab id -> owner id, for this request

    @property
    def is_admin(self) -> bool:
        return self.who.is_admin

    def owns(self, lab: LabRecord) -> bool:
        return self.who.is_admin or (lab.owner_id is not None and lab.owner_id == self.who.user_id)

    def owns_lab_id(self, lab_id: str) -> bool:
        if self.who.is_admin:
            return True
        if lab_id not in self._owners:
            self._owners.update({lab.id: lab.owner_id for lab in self._all_labs()})
        owner = self._owners.get(lab_id)
        return owner is not None and owner == self.who.user_id

    def _all_labs(self) -> list[LabRecord]:
        with self.runtime.catalog.session() as session:
            return LabRepository(session).list()

    # -- one thing, or 404 ----------------------------------------------------------------------

    def lab(self, name: str) -> LabRecord:
        lab = self.runtime.labs.get(name)
        if not self.owns(lab):
            raise NotFound(f"no lab named {name!r}; `virtlab lab list` shows the labs")
        return lab

    def node(self, ref: str) -> NodeRecord:
        nodes = self.runtime.nodes
        try:
            record = nodes.get(ref)
        except InvalidRequest:  # a name in several labs: maybe in one lab of theirs only
            if self.is_admin:
                raise
            mine = [n for n in nodes.list() if n.name == ref and self.owns_lab_id(n.lab_id)]
            if len(mine) != 1:
                raise
            record = mine[0]
        if not self.owns_lab_id(record.lab_id):
            mine = [n for n in nodes.list() if n.name == ref and self.owns_lab_id(n.lab_id)]
            if len(mine) == 1:  # someone else's node has that name too
                return mine[0]
            raise NotFound(f"no node {ref!r}; `virtlab node list` shows the nodes")
        return record

    def link(self, link_id: str) -> LinkRecord:
        link = self.runtime.links.get(link_id)
        if not self.owns_lab_id(link.lab_id):
            raise NotFound(f"no link {link_id!r}; `virtlab link list` shows the links")
        return link

    def lab_for_node(self, lab: str | None) -> None:
        """A node is made in ``lab``, which must be theirs; a user must name one."""
        if lab is None or lab == "default":
            if not self.is_admin:
                raise InvalidRequest(
                    "the default lab is the admins'; create a lab first (`virtlab lab create "
                    "NAME`, or POST /api/labs) and name it in the node's 'lab' field"
                )
            return
        self.lab(lab)

    # -- lists ----------------------------------------------------------------------------------

    def visible_lab_names(self) -> set[str] | None:
        """The names of the labs they may see; None: all (an admin)."""
        if self.is_admin:
            return None
        return {lab.name for lab in self._all_labs() if self.owns(lab)}


async def get_access(who: PrincipalDep, conn: HTTPConnection) -> Access:
    # async: no worker thread for building an object (see virtlab.api.deps)
    return Access(who, conn.app.state.runtime)


AccessDep = Annotated[Access, Depends(get_access)]


def guard_path(conn: HTTPConnection, access: AccessDep) -> None:
    """404 for a node, lab or link in the path that is not the requester's; a node ``ref``
    becomes the node's id for the route."""
    params = conn.scope.get("path_params", {})
    if "ref" in params:
        params["ref"] = access.node(params["ref"]).id
    if "name" in params:
        access.lab(params["name"])
    if "link_id" in params:
        access.link(params["link_id"])
