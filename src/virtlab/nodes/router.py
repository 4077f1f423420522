"""The routing node driver: each node's calls go to the driver of the host it runs on.

::

    router = RoutingDriver(QemuDriver(...))     # the local host: direct QEMU
    router.add_host("h1", libvirt_driver)       # a libvirt host (virtlab.hosts.LibvirtDriver)
    await router.start(spec)                    # spec.host picks the driver

The node service sees one ``NodeDriver``. Calls that carry a spec go by ``spec.host``; calls by
node id go to the host the node was last created, started or adopted on (the service always
does one of those first). Each host's driver reports ends and disk-error pauses through the
router's ``on_exit`` and ``on_pause``.
The router knows nothing of libvirt: a remote driver is any ``NodeDriver`` that may also say
whether its host answers (``reachable``) and remove a node's disk there (``delete_disk``).
"""

from __future__ import annotations

import socket
from pathlib import Path

from virtlab.errors import Conflict
from virtlab.nodes.checkpoints import SavedState
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.spec import LOCAL_HOST, NodeSpec
from virtlab.nodes.state import NodeState

__all__ = ["RoutingDriver"]


class RoutingDriver(NodeDriver):
    kind = "router"

    def __init__(self, local: NodeDriver) -> None:
        super().__init__()
        self.local = local
        self.hosts: dict[str, NodeDriver] = {}
        self._where: dict[str, str] = {}  # node id -> host name
        local.on_exit = self._exited
        local.on_pause = self._paused

    # -- hosts ----------------------------------------------------------------------------------

    def add_host(self, name: str, driver: NodeDriver) -> None:
        if name == LOCAL_HOST or name in self.hosts:
            raise Conflict(f"host {name} already has a driver")
        driver.on_exit = self._exited
        driver.on_pause = self._paused
        self.hosts[name] = driver

    async def remove_host(self, name: str) -> None:
        """Let go of a host's driver (its machines are not stopped)."""
        driver = self.hosts.pop(name, None)
        self._where = {n: h for n, h in self._where.items() if h != name}
        if driver is not None:
            await driver.close()

    def reachable(self, host: str) -> bool:
        """Whether ``host`` answers now (the local host always does)."""
        if host == LOCAL_HOST:
            return True
        driver = self.hosts.get(host)
        return driver is not None and bool(getattr(driver, "reachable", True))

    def driver_for(self, host: str) -> NodeDriver:
        if host == LOCAL_HOST:
            return self.local
        driver = self.hosts.get(host)
        if driver is None:
            raise Conflict(
                f"this server has no connection to host {host}; add it with `virtlab host add "
                f"{host} URI` (or check the server's log for why it was not opened)"
            )
        return driver

    def _for(self, spec: NodeSpec) -> NodeDriver:
        driver = self.driver_for(spec.host)
        self._where[spec.id] = spec.host
        return driver

    def _by_id(self, node_id: str) -> NodeDriver:
        return self.driver_for(self._where.get(node_id, LOCAL_HOST))

    # -- NodeDriver -----------------------------------------------------------------------------

    async def create_disk(self, spec: NodeSpec, base: Path | None, size_mb: int | None) -> None:
        await self._for(spec).create_disk(spec, base, size_mb)

    async def delete_disk(self, spec: NodeSpec) -> None:
        await self._for(spec).delete_disk(spec)
        self._where.pop(spec.id, None)

    async def start(self, spec: NodeSpec) -> None:
        await self._for(spec).start(spec)

    async def stop(self, node_id: str, timeout: float) -> bool:
        return await self._by_id(node_id).stop(node_id, timeout)

    async def kill(self, node_id: str) -> None:
        await self._by_id(node_id).kill(node_id)

    async def reset(self, node_id: str) -> None:
        await self._by_id(node_id).reset(node_id)

    async def suspend(self, node_id: str) -> None:
        await self._by_id(node_id).suspend(node_id)

    async def resume(self, node_id: str) -> None:
        await self._by_id(node_id).resume(node_id)

    async def screenshot(self, node_id: str) -> bytes:
        return await self._by_id(node_id).screenshot(node_id)

    async def set_link(self, node_id: str, index: int, up: bool) -> None:
        await self._by_id(node_id).set_link(node_id, index, up)

    async def checkpoint(self, node_id: str, tag: str) -> SavedState:
        return await self._by_id(node_id).checkpoint(node_id, tag)

    async def checkpoints(self, spec: NodeSpec) -> dict[str, int]:
        return await self._for(spec).checkpoints(spec)

    async def delete_checkpoint(self, spec: NodeSpec, tag: str) -> None:
        await self._for(spec).delete_checkpoint(spec, tag)

    async def adopt(self, spec: NodeSpec) -> NodeState | None:
        return await self._for(spec).adopt(spec)

    def console_socket(self, node_id: str) -> socket.socket | None:
        return self._by_id(node_id).console_socket(node_id)

    def state(self, node_id: str) -> NodeState:
        host = self._where.get(node_id, LOCAL_HOST)
        driver = self.local if host == LOCAL_HOST else self.hosts.get(host)
        return NodeState.STOPPED if driver is None else driver.state(node_id)

    async def close(self) -> None:
        for name in list(self.hosts):
            await self.remove_host(name)
        await self.local.close()
