"""Base images on libvirt hosts follow the catalog: an image deleted here goes from every host.

A node's base is pushed to its host once, as a volume named after the image's sha256
(:mod:`virtlab.hosts.volumes`). When the image is deleted (which the image service refuses
while any node uses it, on whatever host), :meth:`HostBases.image_deleted` sweeps every
host that answers: :meth:`HostBases.sweep` deletes the bases of images the catalog no longer
has, that one and any older orphan. A host that does not answer then keeps it for a while:
each time a host answers (its connection at start-up, ``host add``, or a host coming back),
it is swept too. Nothing is recorded for later: the catalog itself says what must stay. The
catalog is read in a worker thread, never on the event loop. A base that some volume of the
host's pool is backed by is never deleted (``HostStorage.remove_bases`` checks).

One virtlab server per host's ``virtlab`` pool: a second server's bases would look orphaned
to this one's sweep (and be pushed again by that server when it next needs them).
"""

from __future__ import annotations

import asyncio
import logging

from virtlab.catalog import Catalog, ImageRecord, ImageRepository
from virtlab.errors import VirtlabError
from virtlab.nodes.router import RoutingDriver

__all__ = ["HostBases"]

log = logging.getLogger("virtlab.hosts")


class HostBases:
    def __init__(self, catalog: Catalog, router: RoutingDriver, timeout: float = 30.0) -> None:
        self.catalog, self.router, self.timeout = catalog, router, timeout

    async def image_deleted(self, image: ImageRecord) -> dict[str, list[str]]:
        """Sweep every host that answers, now that ``image`` is gone from the catalog: its base
        goes (unless another image of the catalog has the same file), and so do any older
        orphans; host -> bases deleted. The others are swept when they next answer."""
        kept = await self._kept()
        done = {}
        for host in list(self.router.hosts):
            if not self.router.reachable(host):
                log.info("host %s does not answer: the base of image %s goes from it when it "
                         "answers again", host, image.name)  # fmt: skip
                continue
            gone = await self._sweep(host, kept)
            if gone is not None:
                done[host] = gone
        return done

    async def sweep(self, host: str) -> list[str]:
        """Delete from ``host`` the bases of images the catalog no longer has."""
        return await self._sweep(host, await self._kept()) or []

    async def _kept(self) -> set[str]:
        """The sha256 prefixes of the catalog's images, read in a worker thread."""

        def read() -> set[str]:
            with self.catalog.session() as session:
                return {r.sha256[:32] for r in ImageRepository(session).list()}

        return await asyncio.to_thread(read)

    async def _sweep(self, host: str, kept: set[str]) -> list[str] | None:
        """Bases deleted from ``host``, or None if it has no pool or did not answer in time."""
        remove = getattr(self.router.hosts.get(host), "remove_bases", None)
        if remove is None:
            return None
        try:
            gone = list(await asyncio.wait_for(remove(lambda p: p not in kept), self.timeout))
        except (TimeoutError, VirtlabError) as exc:
            why = exc or "it did not answer in time"
            log.warning("host %s: bases of deleted images not deleted now (%s); they will be "
                        "when the host next connects", host, why)  # fmt: skip
            return None
        if gone:
            log.info("host %s: removed %s (their images were deleted)", host, ", ".join(gone))
        return gone
