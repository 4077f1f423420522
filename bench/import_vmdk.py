"""Importing a VMDK through virtlab against bare ``qemu-img convert`` + ``qemu-img compare``.

The image: a monolithicSparse VMDK of ``--virtual-mib`` (default 2 GiB) whose first
``--data-mib`` (default 1 GiB) are incompressible data, the rest never written.

(a) virtlab: ``PUT /api/images/NAME`` to a running server, from the first byte until the 201
    reply: upload, inspection, qemu-img info + check, convert, verification (info + check of
    the result, qemu-img compare), sha256 of the result, fsync, rename, catalog row.
    ``GET /api/imports/{id}`` is polled in a thread to split the time by stage.
(b) bare:    ``qemu-img convert -f vmdk -O qcow2 -o compat=1.1 SRC DST`` then
    ``qemu-img compare -f vmdk -F qcow2 SRC DST`` of the same file.
(c) context, not in the ratio: the bare tools plus the other duties of an import, one after the
    other: ``cp`` of the file (in place of the upload), sha256 of it, convert and compare from
    the copy, sha256 of the result, fsync of the result, removal of the copy. What a plain
    script doing virtlab's job one step after another would take, without HTTP.

Best of ``--runs`` for each side, the sides alternating (a b, b a, a b, ...); the page cache is
handled as ``bench.files`` says. The ratio is a / b: 1.0 means the import costs no more than
the bare tool; the issue's target is at most 1.15.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.clients import CLIENTS, DEFAULT_CLIENT, new_import_id, upload
from bench.files import GiB, MiB, fsync, human_bytes, prepare_cache, sha256_of, write_random
from bench.sampling import StagePoller
from bench.server import AUTH, running_server, server_env

__all__ = ["ImportResult", "bench_import", "main", "make_vmdk"]

TARGET = 1.15
_STAGES = ("upload", "unpack", "inspect", "examine", "convert", "verify", "register")


@dataclass
class VirtlabRun:
    seconds: float
    stages: dict[str, float]  # stage -> seconds, for the stages the poller saw


@dataclass
class BareRun:
    convert: float
    compare: float

    @property
    def seconds(self) -> float:
        return self.convert + self.compare


@dataclass
class DutiesRun:
    steps: dict[str, float]

    @property
    def seconds(self) -> float:
        return sum(self.steps.values())


@dataclass
class ImportResult:
    virtual_size: int
    data_size: int
    client: str
    virtlab: list[VirtlabRun] = field(default_factory=list)
    bare: list[BareRun] = field(default_factory=list)
    duties: list[DutiesRun] = field(default_factory=list)

    @property
    def best_virtlab(self) -> VirtlabRun:
        return min(self.virtlab, key=lambda r: r.seconds)

    @property
    def best_bare(self) -> BareRun:
        return min(self.bare, key=lambda r: r.seconds)

    @property
    def best_duties(self) -> DutiesRun | None:
        return min(self.duties, key=lambda r: r.seconds) if self.duties else None

    @property
    def ratio(self) -> float:
        return self.best_virtlab.seconds / self.best_bare.seconds

    def report(self) -> str:
        v, b = self.best_virtlab, self.best_bare
        lines = [
            f"import of a {human_bytes(self.virtual_size)} VMDK (monolithicSparse) holding "
            f"{human_bytes(self.data_size)} of random data; best of {len(self.virtlab)} "
            f"(client: {self.client})",
            f"  virtlab PUT until 201 : {v.seconds:7.2f} s   "
            f"(runs: {', '.join(f'{r.seconds:.2f}' for r in self.virtlab)})",
        ]
        for stage, seconds in v.stages.items():
            lines.append(f"      {stage:<18}: {seconds:7.2f} s")
        lines += [
            f"  bare convert+compare  : {b.seconds:7.2f} s   "
            f"(runs: {', '.join(f'{r.seconds:.2f}' for r in self.bare)})",
            f"      {'convert':<18}: {b.convert:7.2f} s",
            f"      {'compare':<18}: {b.compare:7.2f} s",
            f"  ratio virtlab / bare  : {self.ratio:7.3f}   (target <= {TARGET}: "
            f"{'met' if self.ratio <= TARGET else 'NOT met'})",
        ]
        if "upload" in v.stages:
            after = v.seconds - v.stages["upload"]
            lines.append(
                f"  context: virtlab after its upload stage: {after:.2f} s, "
                f"{after / b.seconds:.3f} x bare"
            )
        d = self.best_duties
        if d is not None:
            lines.append(
                f"  context: bare + duties: {d.seconds:7.2f} s   (runs: "
                f"{', '.join(f'{r.seconds:.2f}' for r in self.duties)}; virtlab / this = "
                f"{v.seconds / d.seconds:.3f})"
            )
            for step, seconds in d.steps.items():
                lines.append(f"      {step:<18}: {seconds:7.2f} s")
        return "\n".join(lines)


def make_vmdk(workdir: Path, virtual_size: int, data_size: int) -> Path:
    """A monolithicSparse VMDK: ``data_size`` random bytes, then zeros up to ``virtual_size``."""
    raw = write_random(workdir / "source.raw", data_size, total=virtual_size)
    vmdk = workdir / "source.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse",
         str(raw), str(vmdk)],
        check=True,
    )  # fmt: skip
    raw.unlink()
    return vmdk


def run_virtlab(base_url: str, vmdk: Path, client: str, poll: float = 0.02) -> VirtlabRun:
    import_id = new_import_id()
    poller = StagePoller(base_url, import_id, interval=poll).start()
    start = time.perf_counter()
    reply = upload(client, f"{base_url}/api/images/{vmdk.name}?import_id={import_id}", vmdk)
    end = time.perf_counter()
    poller.stop()
    if reply.status != 201:
        raise RuntimeError(f"virtlab refused the import ({reply.status}): {reply.body[:500]!r}")
    name = reply.json()["name"]
    httpx.delete(f"{base_url}/api/images/{name}", timeout=60, headers=AUTH).raise_for_status()
    seen = sorted(
        ((t, s) for s, t in poller.first_seen.items() if s in _STAGES), key=lambda p: p[0]
    )
    stages: dict[str, float] = {}
    for index, (moment, stage) in enumerate(seen):
        began = start if index == 0 else moment
        ended = seen[index + 1][0] if index + 1 < len(seen) else end
        stages[stage] = ended - began
    return VirtlabRun(end - start, stages)


def run_bare(vmdk: Path, workdir: Path) -> BareRun:
    dst = workdir / "bare.qcow2"
    try:
        start = time.perf_counter()
        subprocess.run(
            ["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", "-o", "compat=1.1",
             str(vmdk), str(dst)],
            check=True,
        )  # fmt: skip
        converted = time.perf_counter()
        subprocess.run(
            ["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "qcow2", str(vmdk), str(dst)],
            check=True,
        )
        compared = time.perf_counter()
    finally:
        dst.unlink(missing_ok=True)
    return BareRun(converted - start, compared - converted)


def run_bare_duties(vmdk: Path, workdir: Path) -> DutiesRun:
    copy, dst = workdir / "duties-upload.vmdk", workdir / "duties.qcow2"
    steps: dict[str, float] = {}

    def step(name: str, argv: list[str] | None = None, fn: Callable[[], object] = lambda: None):
        start = time.perf_counter()
        if argv is not None:
            subprocess.run(argv, check=True)
        fn()
        steps[name] = time.perf_counter() - start

    try:
        step("cp (the upload)", ["cp", str(vmdk), str(copy)])
        step("sha256 of it", fn=lambda: sha256_of(copy))
        step("convert", ["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", "-o", "compat=1.1",
                         str(copy), str(dst)])  # fmt: skip
        step("compare", ["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "qcow2", str(copy),
                         str(dst)])  # fmt: skip
        step("sha256 of result", fn=lambda: sha256_of(dst))
        step("fsync of result", fn=lambda: fsync(dst))
        step("rm the copy", fn=copy.unlink)
    finally:
        copy.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
    return DutiesRun(steps)


def bench_import(
    workdir: Path,
    *,
    virtual_size: int = 2 * GiB,
    data_size: int = 1 * GiB,
    runs: int = 3,
    client: str = DEFAULT_CLIENT,
    duties: bool = True,
    server_env: dict[str, str] | None = None,
    base_url: str | None = None,
) -> ImportResult:
    """Run the benchmark in ``workdir`` (on the data directory's file system); see the module."""
    workdir.mkdir(parents=True, exist_ok=True)
    vmdk = make_vmdk(workdir, virtual_size, data_size)
    result = ImportResult(virtual_size, data_size, client)
    try:
        if base_url is None:
            with running_server(workdir / "data", server_env) as server:
                _alternate(result, server.url, vmdk, workdir, runs, duties)
        else:
            _alternate(result, base_url, vmdk, workdir, runs, duties)
    finally:
        vmdk.unlink(missing_ok=True)
    return result


def _alternate(
    result: ImportResult, base_url: str, vmdk: Path, workdir: Path, runs: int, duties: bool
) -> None:
    sides = ["virtlab", "bare", *(["duties"] if duties else [])]
    for i in range(runs):
        for side in sides if i % 2 == 0 else reversed(sides):
            prepare_cache(vmdk)
            if side == "virtlab":
                result.virtlab.append(run_virtlab(base_url, vmdk, result.client))
            elif side == "bare":
                result.bare.append(run_bare(vmdk, workdir))
            else:
                result.duties.append(run_bare_duties(vmdk, workdir))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs per side (best is kept)")
    parser.add_argument("--virtual-mib", type=int, default=2048, help="virtual size, MiB")
    parser.add_argument("--data-mib", type=int, default=1024, help="random data in it, MiB")
    parser.add_argument("--client", choices=sorted(CLIENTS), default=DEFAULT_CLIENT)
    parser.add_argument("--no-duties", action="store_true", help="skip the context side (c)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--server-src", type=Path, help="run the server from this src/ (A/B)")


def main(argv: list[str] | None = None) -> ImportResult:
    parser = argparse.ArgumentParser(prog="python -m bench.import_vmdk", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        result = bench_import(
            Path(tmp),
            virtual_size=args.virtual_mib * MiB,
            data_size=args.data_mib * MiB,
            runs=args.runs,
            client=args.client,
            duties=not args.no_duties,
            server_env=server_env(args.server_src),
        )
    print(result.report())
    return result


if __name__ == "__main__":
    main()
