"""``virtlab doctor``: what this host offers to virtlab, checked locally (no server needed).

QEMU binaries and versions, the accelerator verdict and why, free disk in the data directory,
the console port ranges, the memory nodes may be promised and the other limits (from the same
``VIRTLAB_*`` settings the server reads). With ``--usage`` it also asks the running server
where you stand against each limit (``GET /api/limits``). Exits 1 when something would keep
nodes from running.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from virtlab._util.units import human_size
from virtlab.cli.client import ApiError, Client
from virtlab.cli.hosts import describe
from virtlab.cli.options import UrlOpt
from virtlab.errors import VirtlabError
from virtlab.nodes.ports import DEFAULT_TELNET_PORTS, DEFAULT_VNC_PORTS, PortRange

# The probe, the settings and the memory budget (pydantic, pydantic-settings) are imported when
# the doctor runs: every other command of the CLI imports this module too, and needs none of it.

__all__ = ["collect", "doctor"]


def _free_disk(data_dir: Path) -> dict[str, Any]:
    """Free space where the data directory is (or would be: its nearest existing parent)."""
    place = data_dir
    while not place.exists() and place != place.parent:
        place = place.parent
    usage = shutil.disk_usage(place)
    return {"path": str(data_dir), "measured_at": str(place), "free_bytes": usage.free,
            "total_bytes": usage.total}  # fmt: skip


def collect(
    data_dir: Path,
    accel: str,
    telnet_ports: PortRange,
    vnc_ports: PortRange,
    *,
    refresh: bool = False,
) -> dict[str, Any]:
    """The report as plain data; ``problems`` lists what keeps nodes from running, ``notes``
    what is worth knowing."""
    from virtlab.nodes.qemu.probe import default_cache_path, find_binaries, probe_accelerator

    report: dict[str, Any] = {"qemu": None, "accelerator": None, "problems": [], "notes": []}
    problems: list[str] = report["problems"]
    try:
        binaries = find_binaries()
    except VirtlabError as exc:
        binaries = None
        problems.append(str(exc))
    else:
        report["qemu"] = {
            name: {"path": b.path, "version": b.version, "banner": b.banner}
            for name, b in (("system", binaries.system), ("img", binaries.img))
        }
    if binaries is not None or accel == "tcg":
        try:
            verdict = probe_accelerator(
                accel, cache_path=default_cache_path(data_dir), refresh=refresh,
                qemu=binaries.system if binaries else None,
            )  # fmt: skip
        except VirtlabError as exc:
            problems.append(str(exc))
        else:
            report["accelerator"] = {
                "requested": accel, "accel": verdict.accel.value, "reason": verdict.reason,
                "cached": verdict.cached,
            }  # fmt: skip
    report["data_dir"] = _free_disk(data_dir)
    report["ports"] = {
        name: {"start": r.start, "end": r.end, "count": r.size}
        for name, r in (("telnet", telnet_ports), ("vnc", vnc_ports))
    }
    report["limits"] = _limits(problems)
    if telnet_ports.overlaps(vnc_ports):
        report["notes"].append(
            f"telnet ports {telnet_ports} and VNC ports {vnc_ports} overlap: "
            "each port still goes to one console, but the ranges are smaller than they look"
        )
    return report


def _limits(problems: list[str]) -> dict[str, Any] | None:
    """The limits the server would apply with this environment's settings."""
    from pydantic import ValidationError

    from virtlab.nodes.memory import memory_budget
    from virtlab.settings import Settings

    try:
        settings = Settings()
        budget = memory_budget(settings)
    except (ValidationError, OSError, ValueError) as exc:
        problems.append(f"the VIRTLAB_* limit settings are not valid: {exc}")
        return None
    if budget.capacity_mb == 0:
        problems.append(
            f"nodes may be promised no memory: the host has {budget.host_mb} MiB and "
            f"{budget.reserve_mb} MiB are kept for it; lower VIRTLAB_MEMORY_RESERVE_MB"
        )
    return {
        "memory": {"host_mb": budget.host_mb, "reserve_mb": budget.reserve_mb,
                   "overcommit": budget.overcommit, "capacity_mb": budget.capacity_mb},
        "max_concurrent_imports": settings.max_concurrent_imports,
        "max_concurrent_imports_per_user": settings.max_concurrent_imports_per_user,
        "max_nodes_per_user": settings.max_nodes_per_user,
    }  # fmt: skip


def _usage(url: str | None) -> dict[str, Any]:
    """Where the logged-in user stands on the running server."""
    client = Client(url)
    try:
        return client.get("/api/limits")
    except ApiError as exc:
        raise VirtlabError(f"cannot read the server's limits: {exc}") from exc
    finally:
        client.close()


def _table(report: dict[str, Any]) -> Table:
    table = Table(title="virtlab doctor", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for name, label in (("system", "qemu-system-x86_64"), ("img", "qemu-img")):
        found = (report["qemu"] or {}).get(name)
        table.add_row(label, f"{found['version']}  {found['path']}" if found else "[red]missing")
    verdict = report["accelerator"]
    if verdict:
        cached = " (cached)" if verdict["cached"] else ""
        table.add_row("accelerator", f"[green]{verdict['accel']}[/green]{cached}")
        table.add_row("", verdict["reason"])
    else:
        table.add_row("accelerator", "[red]unavailable")
    disk = report["data_dir"]
    table.add_row("data directory", disk["path"])
    table.add_row("free disk", f"{human_size(disk['free_bytes'])} of "
                  f"{human_size(disk['total_bytes'])}")  # fmt: skip
    for name, label in (("telnet", "telnet ports"), ("vnc", "VNC ports")):
        ports = report["ports"][name]
        table.add_row(label, f"{ports['start']}-{ports['end']} ({ports['count']})")
    limits = report.get("limits")
    if limits:
        memory = limits["memory"]
        table.add_row("memory for nodes", f"{memory['capacity_mb']} MiB (host "
                      f"{memory['host_mb']} MiB, less {memory['reserve_mb']} MiB reserved, x "
                      f"{memory['overcommit']:g})")  # fmt: skip
        per_user = limits["max_nodes_per_user"] or "no limit"
        table.add_row("nodes per user", str(per_user))
        table.add_row("imports at once", f"{limits['max_concurrent_imports']} (a user: "
                      f"{limits['max_concurrent_imports_per_user']})")  # fmt: skip
    usage = report.get("usage")
    if usage:
        imports, nodes, memory = usage["imports"], usage["nodes"], usage["memory"]
        table.add_row("[bold]on the server", "")
        promised = f"{memory['promised_mb']} of {memory['capacity_mb']} MiB"
        free = f"{memory['available_mb']} MiB free, {memory['active_nodes']} nodes"
        table.add_row("RAM promised", f"{promised} ({free})")
        limit = nodes["max_per_user"] if nodes["limited"] else "exempt"
        table.add_row("your nodes", f"{nodes['yours']} (limit: {limit})")
        table.add_row("imports in flight", f"{imports['running']} of {imports['max']} "
                      f"(yours: {imports['yours']} of {imports['max_per_user']})")  # fmt: skip
    return table


def _ask_hosts(report: dict[str, Any], url: str | None) -> None:
    """The server's hosts (``/api/hosts``); one that does not answer is a problem."""
    try:
        report["hosts"] = Client(url).request("GET", "/api/hosts").json()
    except ApiError as exc:
        report["problems"].append(f"cannot ask the server about its hosts: {exc}")
        return
    for host in report["hosts"]:
        if not host["reachable"]:
            report["problems"].append(f"host {host['name']} does not answer: {host['reason']}")


def doctor(
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="VIRTLAB_DATA_DIR", help="Data directory [default: XDG data home]."),
    ] = None,
    accel: Annotated[
        str, typer.Option(envvar="VIRTLAB_ACCEL", help="Accelerator to check: auto, kvm or tcg.")
    ] = "auto",
    telnet_ports: Annotated[
        str, typer.Option(envvar="VIRTLAB_TELNET_PORTS", help="Serial console (telnet) ports.")
    ] = str(DEFAULT_TELNET_PORTS),
    vnc_ports: Annotated[
        str, typer.Option(envvar="VIRTLAB_VNC_PORTS", help="VNC console ports.")
    ] = str(DEFAULT_VNC_PORTS),
    reprobe: Annotated[
        bool, typer.Option("--reprobe", help="Probe the accelerator again, ignoring the cache.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    usage: Annotated[
        bool,
        typer.Option("--usage", help="Also ask the server (--url) where you stand on its limits."),
    ] = False,
    hosts: Annotated[
        bool, typer.Option("--hosts", help="Also ask the server (--url) about its libvirt hosts.")
    ] = False,
    url: UrlOpt = None,
) -> None:
    """Check what this host offers: QEMU, accelerator, free disk, console ports, limits; with
    --usage, where you stand on the server; with --hosts, what each of the server's hosts
    offers and whether it answers."""
    from virtlab.settings import default_data_dir

    err = Console(stderr=True)
    try:
        report = collect(
            data_dir or default_data_dir(), accel.lower(), PortRange.parse(telnet_ports),
            PortRange.parse(vnc_ports), refresh=reprobe,
        )  # fmt: skip
        if usage:
            report["usage"] = _usage(url)
    except VirtlabError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if hosts:
        _ask_hosts(report, url)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console().print(_table(report))
        for host in report.get("hosts", []):
            Console().print(f"host {host['name']}: {describe(host)}", highlight=False)
        for problem in report["problems"]:
            err.print(f"[red]problem:[/red] {problem}", highlight=False)
        for note in report["notes"]:
            err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if report["problems"]:
        raise typer.Exit(1)
