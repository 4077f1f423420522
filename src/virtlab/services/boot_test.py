"""Boot test: the manual check this product started from, as a feature.

Boots a catalog image on a throwaway overlay, captures its serial output and a screenshot, and
says whether it passed: the expected text appeared on the serial console, or (with nothing
expected) the machine was still running when the time was up. The overlay is always removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from virtlab.consoles import ConsoleUnavailable, SerialHub
from virtlab.errors import InvalidRequest
from virtlab.images.formats import ImageKind
from virtlab.nodes.qemu.driver import QemuDriver
from virtlab.nodes.spec import Accel, NodeSpec, RunPaths
from virtlab.nodes.state import NodeState
from virtlab.services.images import ImageService

__all__ = ["BootResult", "BootTester"]

_KEEP_SERIAL = 64 << 10


@dataclass(frozen=True)
class BootResult:
    image: str
    passed: bool
    reason: str
    seconds: float
    serial: str  # the last 64 KiB of serial output
    screenshot: bytes | None  # PNG, when the machine still ran at the end


class BootTester:
    def __init__(
        self, *, images: ImageService, driver: QemuDriver, work_dir: Path, accel,  # type: ignore[no-untyped-def]
    ) -> None:  # fmt: skip
        self.images = images
        self.driver = driver
        self.work_dir = work_dir
        self.accel = accel
        self.active: Counter[str] = Counter()  # image name -> boot tests running on it
        # Promises a boot test's RAM against the host's memory (set to NodeService.hold_ram).
        self.hold_ram: Callable[[Mapping[str, int], str], AbstractContextManager] = (
            lambda _wanted, _what: contextlib.nullcontext()
        )

    async def run(
        self, name: str, *, seconds: float = 60, expect: str | None = None, ram_mb: int = 256,
    ) -> BootResult:  # fmt: skip
        if not 1 <= seconds <= 3600:
            raise InvalidRequest(f"seconds must be between 1 and 3600, not {seconds}")
        image = self.images.get(name)
        path = self.images.store.absolute(image.path)
        spec = NodeSpec(
            id=uuid.uuid4().hex, name=f"boot-test-{uuid.uuid4().hex[:8]}",
            paths=RunPaths(self.work_dir / f"boot-test-{uuid.uuid4().hex}"),
            accel=Accel(self.accel()), ram_mb=ram_mb,
            cdrom=path if image.kind == ImageKind.CDROM else None,
        )  # fmt: skip
        with self.hold_ram({spec.id: ram_mb}, f"a boot test of {name} ({ram_mb} MiB)"):
            return await self._run(spec, name, path, image.kind, seconds, expect)

    async def _run(
        self, spec: NodeSpec, name: str, path: Path, kind: str, seconds: float,
        expect: str | None,
    ) -> BootResult:  # fmt: skip
        self.active[name] += 1
        try:
            base = None if kind == ImageKind.CDROM else path
            await self.driver.create_disk(spec, base, 1024 if base is None else None)
            return await self._boot(spec, name, seconds, expect)
        finally:
            self.active[name] -= 1
            if self.driver.state(spec.id) is not NodeState.STOPPED:
                await self.driver.kill(spec.id)
            shutil.rmtree(spec.paths.root, ignore_errors=True)

    async def _boot(
        self, spec: NodeSpec, name: str, seconds: float, expect: str | None
    ) -> BootResult:
        started = time.monotonic()
        await self.driver.start(spec)
        hub = SerialHub(spec.paths.serial, scrollback_bytes=_KEEP_SERIAL)
        output = bytearray()
        found = False
        try:
            await hub.start(timeout=10, sock=self.driver.console_socket(spec.id))
            with hub.subscribe() as subscription:
                found = await self._watch(subscription, output, expect, seconds)
        except ConsoleUnavailable:
            pass  # no serial console: judged by the machine surviving
        finally:
            await hub.stop()
        elapsed = time.monotonic() - started
        running = self.driver.state(spec.id) is not NodeState.STOPPED
        screenshot = None
        if running:
            with contextlib.suppress(Exception):
                screenshot = await self.driver.screenshot(spec.id)
        if expect is not None:
            passed = found
            reason = (
                f"{expect!r} appeared on the serial console after {elapsed:.1f} s" if found
                else f"{expect!r} did not appear on the serial console within {seconds:g} s"
                + ("" if running else "; the machine stopped before that")
            )  # fmt: skip
        else:
            passed = running
            reason = (
                f"the machine was still running after {seconds:g} s" if running
                else f"the machine stopped after {elapsed:.1f} s"
            )  # fmt: skip
        serial = bytes(output[-_KEEP_SERIAL:]).decode(errors="replace")
        return BootResult(name, passed, reason, round(elapsed, 2), serial, screenshot)

    async def _watch(
        self, subscription, output: bytearray, expect: str | None, seconds: float
    ) -> bool:  # type: ignore[no-untyped-def]
        needle = expect.encode() if expect else None

        async def read() -> bool:
            async for chunk in subscription:
                output.extend(chunk)
                if needle and needle in output[-(len(chunk) + len(needle)) :]:
                    return True
            return False  # the console closed: QEMU exited

        try:
            return await asyncio.wait_for(read(), seconds)
        except TimeoutError:
            return False
