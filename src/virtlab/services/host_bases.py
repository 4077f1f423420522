"""Base images on libvirt hosts follow the catalog: an image deleted here goes from every host.

A node's base is pushed to its host once, as a volume named after the image's sha256
(:mod:`virtlab.hosts.volumes`). When the image is deleted (which the image service refuses
while any node uses it, on whatever host), :meth:`HostBases.image_deleted` deletes that
volume from every host that answers. A host that does not answer then keeps it for a while:
each time a host answers (its connection at start-up, ``host add``, or a host coming back),
:meth:`HostBases.sweep` deletes the bases of images the catalog no longer has. Nothing is
recorded for later: the catalog itself says what must stay. A base that some volume of the
host's pool is backed by is never deleted (``HostStorage.remove_bases`` checks).

One virtlab server per host's ``virtlab`` pool: a second server's bases would look orphaned
to this one's sweep (and be pushed again by that server when it next needs them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from virtlab.catalog import Catalog, ImageRecord, ImageRepository
from virtlab.errors import VirtlabError
from virtlab.nodes.router import RoutingDriver

__all__ = ["HostBases"]

log = logging.getLogger("virtlab.hosts")


class HostBases:
    def __init__(self, catalog: Catalog, router: RoutingDriver, timeout: float = 30.0) -> None:
        self.catalog, self.router, self.timeout = catalog, router, timeout

    def _kept(self) -> set[str]:
        with self.catalog.session() as session:
            return {r.sha256[:32] for r in ImageRepository(session).list()}

    async def image_deleted(self, image: ImageRecord) -> dict[str, list[str]]:
        """Delete ``image``'s base from every host that answers (unless another image of the
        catalog has the same file); host -> bases deleted. The others are swept later."""
        prefix = image.sha256[:32]
        if prefix in self._kept():
            return {}
        done = {}
        for host in list(self.router.hosts):
            if not self.router.reachable(host):
                log.info("host %s does not answer: the base of image %s goes from it when it "
                         "answers again", host, image.name)  # fmt: skip
                continue
            gone = await self._remove(host, lambda p: p == prefix, f"the base of {image.name}")
            if gone is not None:
                done[host] = gone
        return done

    async def sweep(self, host: str) -> list[str]:
        """Delete from ``host`` the bases of images the catalog no longer has."""
        kept = await asyncio.to_thread(self._kept)
        gone = await self._remove(host, lambda p: p not in kept, "bases of deleted images")
        if gone:
            log.info("host %s: removed %s (their images were deleted)", host, ", ".join(gone))
        return gone or []

    async def _remove(
        self, host: str, doomed: Callable[[str], bool], what: str
    ) -> list[str] | None:
        remove = getattr(self.router.hosts.get(host), "remove_bases", None)
        if remove is None:
            return None
        try:
            return list(await asyncio.wait_for(remove(doomed), self.timeout))
        except (TimeoutError, VirtlabError) as exc:
            log.warning("host %s: %s not deleted now (%s); it will be when the host next "
                        "connects", host, what, exc or "it did not answer in time")  # fmt: skip
            return None
