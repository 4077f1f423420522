"""The catalog side of checkpoints: finding rows by node, by lab and tag, and writing them."""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from virtlab.catalog import Catalog, NodeRecord, NodeRepository
from virtlab.catalog.checkpoints import READY, SAVING, CheckpointRecord, CheckpointRepository
from virtlab.catalog.labs import LabRecord
from virtlab.errors import Conflict, NotFound
from virtlab.names import TAG
from virtlab.nodes.checkpoints import SavedState
from virtlab.services.labs import LabService
from virtlab.services.nodes import NodeService

__all__ = ["CheckpointBook", "LabCheckpoint"]


@dataclass(frozen=True)
class LabCheckpoint:
    """A lab's checkpoint: one row per node, one tag."""

    lab: LabRecord
    tag: str
    members: list[tuple[NodeRecord, CheckpointRecord]]

    @property
    def created_at(self) -> datetime:
        return min(row.created_at for _, row in self.members)

    @property
    def state(self) -> str:
        return next((row.state for _, row in self.members if row.state != READY), READY)


class CheckpointBook:
    """Rows of checkpoints, read and written; no machine is touched here."""

    def __init__(self, catalog: Catalog, nodes: NodeService, labs: LabService) -> None:
        self.catalog, self.nodes, self.labs = catalog, nodes, labs

    # -- reading ------------------------------------------------------------------------------

    def tags_of(self, node_id: str) -> list[str]:
        with self.catalog.session() as session:
            return [row.tag for row in CheckpointRepository(session).of_node(node_id)]

    def of_node(self, ref: str) -> list[CheckpointRecord]:
        node = self.nodes.get(ref)
        with self.catalog.session() as session:
            return CheckpointRepository(session).of_node(node.id)

    def row(self, node: NodeRecord, tag: str) -> CheckpointRecord:
        with self.catalog.session() as session:
            row = CheckpointRepository(session).get(node.id, tag)
        if row is None:
            raise NotFound(
                f"node {node.name} has no checkpoint {tag!r}; `virtlab node checkpoints "
                f"{node.name}` lists its checkpoints"
            )
        return row

    def all_rows(self) -> list[CheckpointRecord]:
        with self.catalog.session() as session:
            return CheckpointRepository(session).list()

    def of_lab(self, name: str) -> list[LabCheckpoint]:
        lab = self.labs.get(name)
        with self.catalog.session() as session:
            rows = CheckpointRepository(session).of_lab(lab.id)
            nodes = {n.id: n for n in NodeRepository(session).in_lab(lab.id)}
        by_tag: dict[str, list[tuple[NodeRecord, CheckpointRecord]]] = defaultdict(list)
        for row in rows:
            by_tag[row.tag].append((nodes[row.node_id], row))
        found = [LabCheckpoint(lab, tag, sorted(m, key=lambda p: p[0].name))
                 for tag, m in by_tag.items()]  # fmt: skip
        return sorted(found, key=lambda c: (c.created_at, c.tag))

    def lab_checkpoint(self, name: str, tag: str) -> LabCheckpoint:
        found = next((c for c in self.of_lab(name) if c.tag == tag), None)
        if found is None:
            raise NotFound(
                f"lab {name} has no checkpoint {tag!r}; `virtlab lab checkpoints {name}` lists "
                "its checkpoints"
            )
        return found

    def image_users(self, node_names: dict[str, str]) -> list[str]:
        """For an image's refusal: ``checkpoints of NODE (TAG, …)``, from node id -> name."""
        return [
            f"checkpoints of {name} ({', '.join(tags)})"
            for node_id, name in sorted(node_names.items(), key=lambda i: i[1])
            if (tags := self.tags_of(node_id))
        ]

    def tag_free(self, nodes: list[NodeRecord], tag: str) -> None:
        """Refuse a tag that a node has already, or has but for case (they collide)."""
        clashes = {n.name: TAG.clash(tag, self.tags_of(n.id)) for n in nodes}
        taken = {name: other for name, other in clashes.items() if other is not None}
        if taken:
            named = ", ".join(sorted(set(taken.values())))
            case = (
                "" if set(taken.values()) == {tag} else " (tags that differ only in case collide)"
            )
            raise Conflict(
                f"{', '.join(taken)} already {'has' if len(taken) == 1 else 'have'} a checkpoint "
                f"named {named}{case}; choose another tag, or delete that one first"
            )

    # -- writing (each in one transaction, in a worker thread: see ``Catalog.write``) --------

    async def new_row(self, node: NodeRecord, tag: str, lab_id: str | None) -> CheckpointRecord:
        """The row of a checkpoint about to be saved (``saving``)."""
        row = CheckpointRecord(
            id=secrets.token_hex(8), node_id=node.id, tag=tag, state=SAVING,
            created_at=datetime.now(UTC), ram_mb=node.ram_mb, lab_id=lab_id,
            accel=self.nodes.spec(node).accel.value,
        )  # fmt: skip
        await self.add_row(row)
        return row

    async def add_row(self, row: CheckpointRecord) -> None:
        await self.catalog.write(lambda session: CheckpointRepository(session).add(row))

    async def mark_saved(
        self, pairs: list[tuple[CheckpointRecord, SavedState]]
    ) -> list[CheckpointRecord]:
        def mark(session: Session) -> list[CheckpointRecord]:
            repo = CheckpointRepository(session)
            done = []
            for row, saved in pairs:
                done.append(repo.update(
                    row.id, state=READY, vm_state_size=saved.vm_state_size,
                    save_seconds=saved.seconds, qemu_version=saved.qemu_version,
                    machine=saved.machine, **({"accel": saved.accel} if saved.accel else {}),
                ))  # fmt: skip
            return done

        return await self.catalog.write(mark)

    async def set_state(self, row: CheckpointRecord, state: str) -> None:
        await self.catalog.write(
            lambda session: CheckpointRepository(session).update(row.id, state=state)
        )

    async def remove_row(self, row: CheckpointRecord) -> None:
        await self.catalog.write(lambda session: CheckpointRepository(session).remove(row.id))
