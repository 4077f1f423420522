"""The one composition root: builds every piece from ``Settings`` and hands them out.

No module keeps global state; the API gets its services from the ``Runtime`` stored on the app,
through the dependencies in ``virtlab.api.deps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from virtlab._util.faults import FaultPoint
from virtlab._util.loopwatch import LoopWatch
from virtlab._util.proc import Limits
from virtlab.catalog import Catalog
from virtlab.images.importer import Importer, ImportLimits
from virtlab.images.progress import ImportJobs
from virtlab.images.qemu_img import QemuImg
from virtlab.images.store import ImageStore
from virtlab.nodes.driver import NodeDriver
from virtlab.nodes.memory import RamLedger, memory_budget
from virtlab.nodes.ports import PortRange
from virtlab.nodes.qemu.driver import QemuDriver
from virtlab.nodes.qemu.probe import AccelVerdict, find_binaries, probe_accelerator
from virtlab.nodes.router import RoutingDriver
from virtlab.nodes.spec import Accel
from virtlab.services.boot_test import BootTester
from virtlab.services.checkpoints import CheckpointService
from virtlab.services.consoles import ConsoleManager
from virtlab.services.deploy_intents import DeployIntents
from virtlab.services.events import EventBus
from virtlab.services.host_bases import HostBases
from virtlab.services.hosts import Connector, HostService
from virtlab.services.image_scan import BaseScanner
from virtlab.services.images import ImageService
from virtlab.services.lab_archive import LabArchiver
from virtlab.services.labs import LabService
from virtlab.services.limits import ImportSlots, NodeQuota
from virtlab.services.links import LinkService
from virtlab.services.nodes import NodeService
from virtlab.services.tunnels import Tunnels
from virtlab.services.users import UserService
from virtlab.settings import Settings

__all__ = ["Runtime"]

log = logging.getLogger("virtlab")


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    images: ImageService
    nodes: NodeService
    consoles: ConsoleManager
    events: EventBus
    links: LinkService = None  # type: ignore[assignment]
    labs: LabService = None  # type: ignore[assignment]
    archiver: LabArchiver = None  # type: ignore[assignment]
    checkpoints: CheckpointService = None  # type: ignore[assignment]
    users: UserService = None  # type: ignore[assignment]
    hosts: HostService = None  # type: ignore[assignment]
    host_bases: HostBases = None  # type: ignore[assignment]
    boot_tests: BootTester | None = None
    accel_verdict: AccelVerdict | None = None
    loop_watch: LoopWatch | None = None
    qemu_version: str | None = None

    def accel(self) -> Accel:
        """The accelerator nodes use: probed once at start-up (see ``virtlab doctor``)."""
        if self.accel_verdict is None:
            self.accel_verdict = probe_accelerator(
                self.settings.accel, cache_path=self.settings.cache_dir / "accel.json"
            )
        return Accel(self.accel_verdict.accel)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        catalog = Catalog(
            settings.resolved_database_url, busy_timeout=settings.catalog_busy_timeout
        )
        store = ImageStore(settings.images_dir, settings.staging_dir)
        qemu_img = QemuImg(
            info_limits=Limits(settings.qemu_img_cpu_seconds, settings.qemu_img_address_space),
            work_limits=Limits(address_space=settings.convert_address_space),
        )
        importer = Importer(
            catalog=catalog,
            store=store,
            qemu_img=qemu_img,
            limits=ImportLimits(settings.max_expanded_bytes, settings.max_virtual_size),
            fault_point=settings.fault_point,
        )
        events = EventBus()
        fault = FaultPoint(settings.fault_point)
        images = ImageService(
            catalog=catalog,
            store=store,
            importer=importer,
            jobs=ImportJobs(on_change=lambda job: events.publish("import", **_job_event(job))),
            scanner=BaseScanner(catalog=catalog, store=store, importer=importer),
            max_upload_bytes=settings.max_upload_bytes,
            slots=ImportSlots(
                settings.max_concurrent_imports, settings.max_concurrent_imports_per_user
            ),
        )
        consoles = ConsoleManager(
            host=settings.console_host, telnet_ports=PortRange.parse(settings.telnet_ports),
            vnc_ports=PortRange.parse(settings.vnc_ports), vnc_tcp=settings.vnc_tcp,
            tickets_required=settings.console_tickets_required,
            ticket_seconds=settings.console_ticket_seconds,
            ticket_attempts=settings.console_ticket_attempts,
            ticket_lockout=settings.console_ticket_lockout_seconds,
        )  # fmt: skip
        runtime = cls(
            settings=settings, catalog=catalog, images=images, nodes=None,  # type: ignore[arg-type]
            consoles=consoles, events=events,
        )  # fmt: skip
        router = RoutingDriver(QemuDriver(qemu_img=qemu_img))
        runtime.nodes = NodeService(
            catalog=catalog, images=images, driver=router,
            consoles=consoles, nodes_dir=settings.nodes_dir, accel=runtime.accel,
            stop_timeout=settings.stop_timeout, events=events, fault=fault,
            quota=NodeQuota(catalog, settings.max_nodes_per_user),
            memory=RamLedger(memory_budget(settings)),
        )  # fmt: skip
        runtime.boot_tests = BootTester(
            images=images, driver=QemuDriver(qemu_img=qemu_img), work_dir=settings.nodes_dir,
            accel=runtime.accel,
        )  # fmt: skip
        runtime.boot_tests.hold_ram = runtime.nodes.hold_ram
        runtime.links = LinkService(
            catalog=catalog, nodes=runtime.nodes, links_dir=settings.data_dir / "links",
            captures_dir=settings.data_dir / "captures", events=events,
            tunnels=Tunnels(
                catalog, PortRange.parse(settings.tunnel_ports),
                relay_ports=PortRange.parse(settings.relay_ports),
                relay_address=settings.relay_address, via_server=settings.tunnels_via_server,
            ),
        )  # fmt: skip
        runtime.labs = LabService(
            catalog=catalog, nodes=runtime.nodes, links=runtime.links, events=events,
            intents=DeployIntents(settings.data_dir / "deploys"), fault=fault,
        )  # fmt: skip
        runtime.checkpoints = CheckpointService(
            catalog=catalog, nodes=runtime.nodes, labs=runtime.labs, events=events
        )
        runtime.archiver = LabArchiver(
            runtime.labs, runtime.nodes, images, qemu_img, settings.staging_dir,
            checkpoints=runtime.checkpoints,
        )  # fmt: skip
        runtime.users = UserService(catalog, session_hours=settings.session_hours)
        runtime.hosts = HostService(
            catalog=catalog, nodes=runtime.nodes, router=router, local_facts=runtime.local_facts,
            connect=_libvirt_connector(settings.accel), placement=settings.placement,
            open_timeout=settings.host_open_timeout, events=events,
        )  # fmt: skip
        runtime.host_bases = HostBases(catalog, router, timeout=settings.host_open_timeout)
        runtime.hosts.after_up = runtime.host_bases.sweep
        runtime.hosts.after_back = runtime.checkpoints.reconcile
        images.users_of = runtime._image_users
        return runtime

    def local_facts(self) -> dict:
        """This machine's facts, as a libvirt host's are shown (see ``virtlab doctor``)."""
        if self.qemu_version is None:
            try:
                self.qemu_version = find_binaries().system.version
            except Exception:
                self.qemu_version = ""
        meminfo = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                key, _, value = line.partition(":")
                meminfo[key] = int(value.split()[0]) // 1024
        verdict = self.accel_verdict
        return {
            "hostname": socket.gethostname(), "libvirt_version": "", "address": "127.0.0.1",
            "qemu_version": self.qemu_version,
            "accelerators": [verdict.accel.value] if verdict else [],
            "cpus": os.cpu_count() or 1, "memory_mb": meminfo.get("MemTotal", 0),
            "free_memory_mb": meminfo.get("MemAvailable", 0),
        }  # fmt: skip

    def _image_users(self, image: str) -> list[str]:
        users = self.nodes.users_of(image)
        with_disks = {n.id: n.name for n in self.nodes.list() if n.image == image}
        users += self.checkpoints.image_users(with_disks)
        if self.boot_tests is not None and self.boot_tests.active[image]:
            users.append("a boot test in progress")
        return users

    async def start(self) -> None:
        """Prepare the data directory and catalog; sweep what a crash left; scan base images;
        find the accelerator; re-adopt the nodes that outlived the last server; make the
        checkpoint rows agree with the disks."""
        self.events.bind(asyncio.get_running_loop())
        # FastAPI runs plain-def routes and dependencies on anyio's threads: 40 by default,
        # which on a small host contend for the interpreter lock more than they work.
        anyio.to_thread.current_default_thread_limiter().total_tokens = self.settings.worker_threads
        if self.settings.loop_stall_ms > 0:
            self.loop_watch = LoopWatch(threshold=self.settings.loop_stall_ms / 1000)
            self.loop_watch.start()
        self.settings.check_socket_paths()
        self.settings.check_console_exposure()
        self.settings.check_udp_ports()
        # The accelerator is found beside the catalog's start, in a thread of its own: its
        # probe is another process (a test guest booted on a new data directory; `qemu
        # --version` on every start), the catalog's start is mostly in sqlite and argon2.
        probe = asyncio.ensure_future(asyncio.to_thread(self.accel))
        try:
            await asyncio.to_thread(self._start_catalog)
        except BaseException:
            await asyncio.wait([probe])  # the catalog's error is the one to report
            if not probe.cancelled():
                probe.exception()
            raise
        verdict = await probe
        log.info("accelerator: %s (%s)", verdict.value, self.accel_verdict.reason)  # type: ignore[union-attr]
        await self.hosts.start()
        await self.nodes.adopt_all()
        await self.checkpoints.reconcile()
        await self.links.restore()
        self.labs.recover()

    def _start_catalog(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings.nodes_dir.mkdir(parents=True, exist_ok=True)
        self.images.store.ensure_layout()
        self.catalog.migrate()
        self.catalog.keep_reserve()
        given = self.settings.admin_password  # a SecretStr: never shown in a repr or a log
        generated = self.users.bootstrap(given.get_secret_value() if given else None)
        if generated is not None:
            print(
                f"virtlab: made the first user 'admin' with password {generated} "
                "(shown once; change it with 'virtlab user passwd admin')",
                file=sys.stderr,
                flush=True,
            )
        for gone in self.images.sweep():
            log.warning("start-up sweep removed %s", gone)
        report = self.images.scan()
        for name in report.added:
            log.info("registered base image %s", name)
        for name, reason in report.refused.items():
            log.warning("base image %s refused: %s", name, reason)
        for name in report.missing:
            log.warning("image %s: its file is missing (virtlab image verify --fix)", name)

    async def stop(self) -> None:
        await self.links.close()
        await self.nodes.shutdown(stop_nodes=self.settings.stop_nodes_on_exit)
        self.catalog.dispose()
        if self.loop_watch is not None:
            self.loop_watch.stop()


def _libvirt_connector(accel: str) -> Connector | None:
    """How the host service reaches libvirt hosts; None when libvirt-python is missing.
    ``accel`` is the server's setting: kvm or tcg on every host; auto: KVM where a host offers
    it (a host is not probed by booting a guest, as the local one is).

    The libvirt driver (and libvirt-python) is imported at the first connection, not at
    start-up: a server without libvirt hosts never loads it."""
    if importlib.util.find_spec("libvirt") is None:
        log.info("libvirt-python is not installed: no libvirt hosts (pip install virtlab[libvirt])")
        return None
    chosen = None if accel == "auto" else Accel(accel)

    async def connect(name: str, uri: str, timeout: float) -> tuple[NodeDriver, dict]:
        from virtlab.hosts.driver import LibvirtDriver

        return await LibvirtDriver.connect(name, uri, timeout, accel=chosen)

    return connect


def _job_event(job) -> dict:  # type: ignore[no-untyped-def]
    return {
        "id": job.id, "source_name": job.source_name, "state": job.state.value,
        "stage": job.stage.value, "percent": round(job.percent, 1), "error": job.error,
        "images": list(job.images),
    }  # fmt: skip
