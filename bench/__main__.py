"""``python -m bench``: every benchmark, with the machine it ran on. See bench/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from bench.checkpoints import bench_checkpoints
from bench.clients import CLIENTS, DEFAULT_CLIENT
from bench.files import GiB, MiB
from bench.hosts import bench_hosts, have_libvirtd
from bench.import_vmdk import bench_import
from bench.labs import bench_labs
from bench.load import bench_load
from bench.nodes import bench_nodes
from bench.server import server_env
from bench.upload import bench_upload

# (virtual size, data in it) of the VMDK, the upload's size, the small and big node bases,
# how many nodes start at once, the ring's nodes, MiB per guest transfer, frames per relay
# blast and the checkpointed lab's nodes: full, then --quick.
SIZES = {
    False: {
        "vmdk": (2 * GiB, 1 * GiB),
        "upload": 4 * GiB,
        "bases": (64 * MiB, 40 * GiB),
        "nodes": 20,
        "ring": 10,
        "transfer": 64 * MiB,
        "blast": 200_000,
        "checkpoint_nodes": 5,
        "load": {"clients": 50, "nodes": 10, "requests": 30, "data_mib": 1024},
        "push": 1 * GiB,
    },
    True: {
        "vmdk": (64 * MiB, 32 * MiB),
        "upload": 128 * MiB,
        "bases": (8 * MiB, 40 * GiB),
        "nodes": 2,
        "ring": 2,
        "transfer": 4 * MiB,
        "blast": 5_000,
        "checkpoint_nodes": 2,
        "load": {"clients": 10, "nodes": 2, "requests": 5, "data_mib": 32},
        "push": 32 * MiB,
    },
}
# --only: a benchmark, or "nodes" for the three node benchmarks (they share one server).
ONLY = {
    "import": (),
    "upload": (),
    "nodes": ("start", "overlay", "many"),
    "node-start": ("start",),
    "overlay": ("overlay",),
    "many-nodes": ("many",),
}
# --only: the lab benchmarks (one server for deploy and throughput; the blast needs none).
LABS = {
    "labs": ("deploy", "throughput", "blast"),
    "lab-deploy": ("deploy",),
    "link-throughput": ("throughput", "blast"),
}


def machine(workdir: Path) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=False)
    system = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    )
    disk = shutil.disk_usage(workdir)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"date      : {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"cpu       : {os.cpu_count()} x {cpu}",
            f"memory    : {psutil.virtual_memory().total / GiB:.1f} GiB",
            f"disk      : {workdir} ({disk.free / GiB:.0f} GiB free of {disk.total / GiB:.0f})",
            f"qemu-img  : {qemu.stdout.splitlines()[0] if qemu.stdout else 'not found'}",
            f"qemu      : {system.stdout.splitlines()[0] if system.stdout else 'not found'}",
            f"python    : {platform.python_version()} ({sys.executable})",
            f"load avg  : {load}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--runs", type=int, default=None, help="runs per side [3; 1 if --quick]")
    parser.add_argument(
        "--only",
        choices=(*ONLY, *LABS, "checkpoints", "load", "hosts"),
        help="run just one benchmark",
    )
    parser.add_argument(
        "--nodes", type=int, default=None, help="nodes started at once [20; 2 if --quick]"
    )
    parser.add_argument("--client", choices=sorted(CLIENTS), default=DEFAULT_CLIENT)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the files and the server's data directory go [a new directory in $TMPDIR]",
    )
    parser.add_argument(
        "--server-src",
        type=Path,
        help="run the server from this src/ directory instead (to measure a change: A/B)",
    )
    args = parser.parse_args(argv)
    env = server_env(args.server_src)
    runs = args.runs or (1 if args.quick else 3)
    sizes = SIZES[args.quick]
    with tempfile.TemporaryDirectory(prefix="virtlab-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        print(machine(work), flush=True)
        if args.server_src:
            print(f"server    : from {args.server_src}", flush=True)
        if args.only in (None, "import"):
            virtual, data = sizes["vmdk"]
            result = bench_import(
                work / "import",
                virtual_size=virtual,
                data_size=data,
                runs=runs,
                client=args.client,
                server_env=env,
            )
            print("\n" + result.report(), flush=True)
        if args.only in (None, "upload"):
            upload = bench_upload(
                work / "upload", size=sizes["upload"], runs=runs, client=args.client, server_env=env
            )
            print("\n" + upload.report(), flush=True)
        if args.only is None or ONLY.get(args.only):
            small, big = sizes["bases"]
            print(f"\nload avg  : {_load()} (before the node benchmarks)", flush=True)
            bench_nodes(
                work / "nodes",
                runs=runs,
                small_size=small,
                big_size=big,
                count=args.nodes or sizes["nodes"],
                which=ONLY[args.only or "nodes"],
                server_env=env,
                report=True,
            )
        if args.only is None or args.only in LABS:
            print(f"\nload avg  : {_load()} (before the lab benchmarks)", flush=True)
            bench_labs(
                work / "labs",
                count=sizes["ring"],
                runs=runs,
                size=sizes["transfer"],
                blast_frames=sizes["blast"],
                which=LABS[args.only or "labs"],
                server_env=env,
                report=True,
            )
        if args.only in (None, "checkpoints"):
            print(f"\nload avg  : {_load()} (before the checkpoint benchmark)", flush=True)
            bench_checkpoints(
                work / "checkpoints",
                count=sizes["checkpoint_nodes"],
                runs=runs,
                server_env=env,
                report=True,
            )
        if args.only in (None, "load"):
            print(f"\nload avg  : {_load()} (before the load benchmark)", flush=True)
            bench_load(work / "load", **sizes["load"], server_env=env, report=True)
        if args.only in (None, "hosts"):
            if have_libvirtd():
                print(f"\nload avg  : {_load()} (before the host benchmarks)", flush=True)
                work_hosts = work / "hosts"
                work_hosts.mkdir()
                hosts = bench_hosts(work_hosts, runs=runs, push_size=sizes["push"], env=env)
                print("\n" + hosts.report(), flush=True)
            else:
                print("\nlibvirt hosts: skipped (no libvirtd, virtlogd or unshare)", flush=True)
        print(f"\nload avg  : {_load()} (at the end)")
    return 0


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
