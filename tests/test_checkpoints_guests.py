"""Lab checkpoints on real guests (TCG): a configured, linked lab saved, its QEMUs killed, and
resumed as it was: shell variables, addresses, ARP caches, a TCP stream in flight.

Each test deploys a lab of two 128 MiB nodes linked ``a:eth0 -- b:eth0`` and types on their
serial consoles (``support.console.SerialShell``). Nothing is retried: a resumed lab must work
at once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.console import SerialShell
from support.server import Server

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))
pytestmark = pytest.mark.timeout(900)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VIRTLAB, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **server.cli_env, "COLUMNS": "200"},
    )  # fmt: skip


def deploy_pair(server: Server, image: str, lab: str) -> dict[str, dict]:
    text = f"""
name: {lab}
topology:
  defaults: {{image: {image}, ram_mb: 128, nics: 1, vnc: false}}
  nodes: {{a: {{}}, b: {{}}}}
  links:
    - endpoints: ["a:eth0", "b:eth0"]
"""
    with server.client(timeout=600) as client:
        made = client.post("/api/labs", json={"topology": text})
        assert made.status_code == 201, made.text
        nodes = client.get(f"/api/labs/{lab}").json()["node_list"]
    return {n["name"]: n for n in nodes}


def wait_states(server: Server, lab: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            nodes = client.get(f"/api/labs/{lab}").json()["node_list"]
            if {n["state"] for n in nodes} <= states:
                return {n["name"]: n for n in nodes}
            assert time.monotonic() < deadline, [(n["name"], n["state"]) for n in nodes]
            time.sleep(0.2)


async def shells(server: Server, nodes: dict[str, dict], booted: bool) -> dict[str, SerialShell]:
    return {name: await SerialShell.open(server, nodes[name], booted=booted)
            for name in ("a", "b")}  # fmt: skip


async def run_ok(shell: SerialShell, command: str, timeout: float = 60) -> str:
    status, output = await shell.run(command, timeout)
    assert status == 0, (command, output)
    return output


ADDRESSES = {"a": "10.9.0.1", "b": "10.9.0.2"}


async def configure(server: Server, nodes: dict[str, dict]) -> None:
    """Addresses and a shell variable typed on the consoles; a first ping fills the ARP
    caches."""
    sh = await shells(server, nodes, booted=True)
    for name, shell in sh.items():
        await run_ok(shell, f"ip addr add {ADDRESSES[name]}/24 dev eth0 && ip link set eth0 up")
        await run_ok(shell, f"LABVAR=saved-on-{name}")
    await run_ok(sh["a"], "ping -c 2 -W 2 10.9.0.2", 120)
    for shell in sh.values():
        await shell.close()


async def spoil(server: Server, nodes: dict[str, dict]) -> None:
    """What happens after a checkpoint, and must be gone after a resume."""
    sh = await shells(server, nodes, booted=False)
    for shell in sh.values():
        await run_ok(shell, "LABVAR=changed-later; ip addr flush dev eth0; echo SPOILED-NOW")
        await shell.close()


async def as_saved(server: Server, nodes: dict[str, dict]) -> None:
    """The resumed lab: variables and addresses as they were, a ping that works at once; the
    consoles show what they showed at the checkpoint, not what came after it."""
    sh = await shells(server, nodes, booted=False)
    for name, shell in sh.items():
        scrollback = await run_ok(shell, "true")  # the first output holds the scrollback
        assert "SPOILED-NOW" not in scrollback and f"LABVAR=saved-on-{name}" in scrollback
        assert f"v=saved-on-{name}" in await run_ok(shell, 'echo "v=$LABVAR"')
        assert f"inet {ADDRESSES[name]}/24" in await run_ok(shell, "ip -4 addr show dev eth0")
    status, output = await sh["a"].run("ping -c 1 -W 3 10.9.0.2", 60)
    assert status == 0 and "1 packets received" in output, output
    for shell in sh.values():
        await shell.close()


def test_a_linked_lab_resumes_configured_and_pings_at_once(
    booted_server: tuple[Server, str],
) -> None:
    server, image = booted_server
    nodes = deploy_pair(server, image, "ck")
    asyncio.run(configure(server, nodes))

    done = cli(server, "lab", "checkpoint", "ck", "configured")
    assert done.returncode == 0, done.stderr
    assert "lab ck: checkpoint configured of 2 nodes" in done.stdout
    listed = cli(server, "lab", "checkpoints", "ck")
    assert listed.returncode == 0 and "configured" in listed.stdout and "ready" in listed.stdout

    asyncio.run(spoil(server, nodes))
    server.kill_nodes()  # the QEMUs die: the nodes crash
    wait_states(server, "ck", {"crashed"})

    for attempt in (1, 2):  # the same checkpoint, twice
        t0 = time.monotonic()
        resumed = cli(server, "lab", "resume", "ck", "configured")
        seconds = time.monotonic() - t0
        assert resumed.returncode == 0, resumed.stderr
        assert "2 of 2 nodes running" in resumed.stdout
        nodes = wait_states(server, "ck", {"running"})
        asyncio.run(as_saved(server, nodes))
        assert seconds < 60, seconds
        if attempt == 1:
            asyncio.run(spoil(server, nodes))
            with server.client() as client:
                for node in nodes.values():
                    assert client.post(f"/api/nodes/{node['id']}/kill").status_code == 200
            wait_states(server, "ck", {"stopped"})

    removed = cli(server, "lab", "checkpoints", "rm", "ck", "configured")
    assert removed.returncode == 0, removed.stderr
    with server.client() as client:
        assert client.get("/api/labs/ck/checkpoints").json() == []
        for node in nodes.values():
            assert client.get(f"/api/nodes/{node['id']}/checkpoints").json() == []
        client.post("/api/labs/ck/stop")
        gone = client.post("/api/labs/ck/checkpoints/configured/resume")
        assert gone.status_code == 404 and "no checkpoint 'configured'" in gone.json()["detail"]
        assert client.delete("/api/labs/ck").status_code == 204
    for node in nodes.values():  # the snapshots are out of the disks, not only the catalog
        assert not list((server.data_dir / "nodes").glob(f"{node['id']}/checkpoints/*"))


def until(condition: str, tries: int = 500) -> str:
    """A guest command that waits (20 ms a try) until ``condition`` holds, and fails if not."""
    return (f"i=0; until {condition}; do usleep 20000; i=$((i+1)); "
            f"[ $i -gt {tries} ] && break; done; {condition}")  # fmt: skip


FLOW_LINES = 300  # 20 ms apart: about 6 s of a TCP stream, a few lines per packet
CHECK_LINES = """awk '$0 != "line" NR-1 {bad++} END {print "got", NR, bad+0}' /tmp/got"""


async def start_stream(server: Server, nodes: dict[str, dict]) -> None:
    """b listens (its stdin never ends: busybox nc would half-close), a sends numbered lines
    slowly; both in the background. Returns once the first bytes are in at b."""
    sh = await shells(server, nodes, booted=False)
    await run_ok(sh["b"], "rm -f /tmp/got; ((sleep 3600 | nc -l -p 5001 > /tmp/got) &)")
    await run_ok(sh["b"], until("netstat -ltn | grep -q ':5001 '"))
    send = f"while [ $i -lt {FLOW_LINES} ]; do echo line$i; i=$((i+1)); usleep 20000; done"
    await run_ok(sh["a"], f"((i=0; {send} | nc 10.9.0.2 5001) &)")
    await run_ok(sh["b"], until("[ -s /tmp/got ]"))
    for shell in sh.values():
        await shell.close()


async def stream_completes(server: Server, nodes: dict[str, dict]) -> str:
    """Once every line is in: ``LINES BAD``, the lines received and those out of place."""
    sh = await shells(server, nodes, booted=False)
    await run_ok(sh["b"], until(f"[ $(wc -l < /tmp/got) -ge {FLOW_LINES} ]", tries=1500), 180)
    got = await run_ok(sh["b"], CHECK_LINES)
    for shell in sh.values():
        await shell.close()
    return got


def test_a_checkpoint_taken_while_a_stream_flows_resumes_the_stream(
    booted_server: tuple[Server, str],
) -> None:
    server, image = booted_server
    nodes = deploy_pair(server, image, "flow")
    asyncio.run(configure(server, nodes))
    asyncio.run(start_stream(server, nodes))
    with server.client(timeout=600) as client:
        taken = client.post("/api/labs/flow/checkpoints", json={"tag": "midstream"})
        assert taken.status_code == 201, taken.text
        body = taken.json()
        assert body["state"] == "ready" and {n["node"] for n in body["nodes"]} == {"a", "b"}
        assert all(n["vm_state_size"] > 0 and n["machine"] for n in body["nodes"])
    live = asyncio.run(stream_completes(server, nodes))  # the lab ran on after the save
    assert f"got {FLOW_LINES} 0" in live, live

    server.kill_nodes()
    wait_states(server, "flow", {"crashed"})
    resumed = cli(server, "lab", "start", "flow", "--from", "midstream")
    assert resumed.returncode == 0, resumed.stderr
    nodes = wait_states(server, "flow", {"running"})
    # The connection was saved half-way on both ends at one moment: it goes on and delivers
    # every line once, in order.
    again = asyncio.run(stream_completes(server, nodes))
    assert f"got {FLOW_LINES} 0" in again, again
    server.kill_nodes()
    with server.client() as client:
        wait_states(server, "flow", {"crashed"})
        assert client.delete("/api/labs/flow").status_code == 204
