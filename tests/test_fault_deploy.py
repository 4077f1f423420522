"""Kill -9 the server at named points of a lab's deploy and start; after a restart the lab is
consistent, and deploying the same file again finishes it.

"Consistent": every node row has its directory and disk and every directory its row; no node
is ``starting`` or ``stopping``; a ``running`` node has its QEMU and no other node has one; no
QEMU runs for a node that is not in the catalog; every link joins nodes of the lab and is
wired (``nicN.peer`` points at the other end's socket).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil
import pytest

from support.bootdisk import boot_disk
from support.server import Server

TWO = (Path(__file__).parents[1] / "examples" / "two-routers.yaml").read_text()


def _qemus(data_dir: Path) -> dict[str, int]:
    """node directory name -> pid, for every QEMU running in ``data_dir``."""
    found = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and "qemu-system" in Path(cmdline[0]).name:
            for arg in cmdline:
                if str(data_dir / "nodes") in arg:
                    node_dir = Path(arg.split(str(data_dir / "nodes") + "/", 1)[1])
                    found[node_dir.parts[0]] = proc.pid
                    break
    return found


def _assert_consistent(srv: Server) -> dict:
    with srv.client() as client:
        lab = client.get("/api/labs/two-routers")
        assert lab.status_code == 200, lab.text
        lab = lab.json()
    nodes = {n["id"]: n for n in lab["node_list"]}
    dirs = {p.name for p in (srv.data_dir / "nodes").iterdir() if p.is_dir()}
    assert dirs == set(nodes), "every node row has its directory, every directory its row"
    for node in nodes.values():
        assert (srv.data_dir / "nodes" / node["id"] / "disk.qcow2").is_file(), node["name"]
        assert node["state"] in ("running", "stopped", "crashed", "suspended"), node
    qemus = _qemus(srv.data_dir)
    running = {i for i, n in nodes.items() if n["state"] in ("running", "suspended")}
    assert set(qemus) == running, (qemus, {n["name"]: n["state"] for n in nodes.values()})
    for link in lab["link_list"]:
        assert {link["a_node"], link["b_node"]} <= set(nodes)
        for end, other in (("a", "b"), ("b", "a")):
            index = int(link[end].rsplit("eth", 1)[1])
            other_index = int(link[other].rsplit("eth", 1)[1])
            peer = srv.data_dir / "nodes" / link[f"{end}_node"] / f"nic{index}.peer"
            target = srv.data_dir / "nodes" / link[f"{other}_node"] / f"nic{other_index}.sock"
            assert os.readlink(peer) == str(target), f"{link[end]} is wired to {link[other]}"
    return lab


@pytest.mark.parametrize(
    ("point", "nodes", "links", "least_running"),
    [
        ("node_after_disk", 0, 0, 0),  # a node's directory and disk, no row: swept
        ("deploy_after_node", 1, 0, 0),  # one node made (disk and row), not the other
        ("deploy_after_link", 2, 1, 0),  # both nodes and the link made, nothing started
        # A QEMU runs halted (-S) with its console and links, the node `starting`: at restart
        # its start is finished.
        ("start_before_cont", 2, 1, 1),
        ("lab_after_start", 2, 1, 1),  # one node running, the other starting or stopped
    ],
)
def test_killed_during_a_deploy_then_restarted_and_deployed_again(  # type: ignore[no-untyped-def]
    make_server, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
    point: str, nodes: int, links: int, least_running: int,
) -> None:  # fmt: skip
    data_dir = tmp_path / "data"
    srv = make_server({"VIRTLAB_FAULT_POINT": point}, data_dir=data_dir)
    try:
        with srv.client() as client:
            raw = boot_disk(tmp_path_factory).read_bytes()
            image = client.put("/api/images/boot.img", content=raw).json()["name"]
            with pytest.raises(httpx.HTTPError):
                client.post("/api/labs", json={"topology": TWO, "image": image})
        assert srv.wait_exit() == -9

        srv.env.pop("VIRTLAB_FAULT_POINT")
        srv.start()
        before = _assert_consistent(srv)
        assert (before["nodes"], before["links"]) == (nodes, links)
        assert before["running"] >= least_running
        assert (data_dir / "deploys" / "two-routers.yaml").exists(), "the deploy is unfinished"
        assert any("deploy of lab two-routers was cut short" in line for line in srv.log)

        with srv.client(timeout=600) as client:
            again = client.post("/api/labs", json={"topology": TWO, "image": image})
            assert again.status_code == 201, again.text
            assert again.json() | {"id": ""} == {
                "id": "", "name": "two-routers", "nodes": 2, "running": 2, "links": 1,
                "changed": True,
            }  # fmt: skip
            exported = client.get("/api/labs/two-routers/export")
            assert exported.status_code == 200 and "r1" in exported.text
        after = _assert_consistent(srv)
        assert {n["state"] for n in after["node_list"]} == {"running"}
        kept = {n["id"] for n in before["node_list"]}
        assert kept <= {n["id"] for n in after["node_list"]}, "what was made is kept"
        assert not (data_dir / "deploys" / "two-routers.yaml").exists()

        with srv.client(timeout=600) as client:  # and now it is a lab like any other
            same = client.post("/api/labs", json={"topology": TWO, "image": image})
            assert same.status_code == 200 and same.json()["changed"] is False, same.text
    finally:
        srv.kill_nodes()
        srv.stop()
    left = [psutil.Process(pid) for pid in _qemus(data_dir).values()]
    assert psutil.wait_procs(left, timeout=30)[1] == [], "no QEMU outlives the test"
