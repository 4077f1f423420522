"""Kill -9 the server at every step of an import; after a restart, catalog and store agree.

"Agree" means: every row has its file, every file its row, and staging is empty
(``support.catalog.assert_consistent``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from support.catalog import assert_consistent, catalog_paths
from support.qimg import compare, convert, patterned_raw
from support.server import Server

MiB = 1 << 20


def _poll_job(srv: Server, job_id: str, predicate, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    """Read the import's status until ``predicate`` holds (the event we wait for)."""
    deadline = time.monotonic() + timeout
    with srv.client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"/api/imports/{job_id}")
            except httpx.HTTPError:
                continue
            if response.status_code == 200 and predicate(job := response.json()):
                return job
    raise AssertionError(f"import {job_id} never reached the awaited state")


def _send_async(srv: Server, path: Path, body, job_id: str) -> threading.Thread:  # type: ignore[no-untyped-def]
    def send() -> None:
        try:
            with srv.client() as client:
                client.put(f"/api/images/{path.name}", params={"import_id": job_id}, content=body)
        except httpx.HTTPError:
            pass  # the server dies under us: that is the point

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_killed_while_uploading(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    srv = make_server(data_dir=data_dir)
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"\1" * (8 * MiB)
        release.wait(60)
        yield b"\2" * MiB

    sender = _send_async(srv, tmp_path / "half.img", body(), "upload-kill-1")
    _poll_job(srv, "upload-kill-1", lambda j: j["bytes_received"] > 0)
    assert any((data_dir / "staging").iterdir()), "the upload is being staged"
    srv.kill()
    release.set()
    sender.join(30)

    srv.start()
    srv.stop()
    assert_consistent(data_dir)
    assert catalog_paths(data_dir) == set()


def test_killed_while_converting_takes_qemu_img_down_too(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL once qemu-img convert is 10 % through; its qemu-img must not live on."""
    data_dir = tmp_path / "data"
    raw = patterned_raw(tmp_path / "src.raw", 512, data_mib=128)
    vmdk = convert(raw, tmp_path / "big.vmdk", "vmdk")
    raw.unlink()
    srv = make_server({"VIRTLAB_FAULT_POINT": "during_convert"}, data_dir=data_dir)
    with srv.client() as client, pytest.raises(httpx.HTTPError):
        client.put("/api/images/big.vmdk", content=vmdk.read_bytes())
    assert srv.wait_exit() == -9
    assert _qemu_img_for(data_dir) == [], "qemu-img outlived the server"

    srv.env.pop("VIRTLAB_FAULT_POINT")
    srv.start()
    srv.stop()
    assert_consistent(data_dir)
    assert catalog_paths(data_dir) == set()


def _qemu_img_for(data_dir: Path, timeout: float = 30) -> list[psutil.Process]:
    """The qemu-img processes still working in ``data_dir``, once they had time to die."""

    def find() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "qemu-img" in cmdline and str(data_dir) in cmdline:
                found.append(proc)
        return found

    _, alive = psutil.wait_procs(find(), timeout=timeout)
    return alive


@pytest.mark.parametrize(
    ("point", "registered"),
    [
        ("after_convert", False),  # converted, not verified
        ("before_register", False),  # verified, nothing moved
        ("after_intent", False),  # publish.json written, nothing moved
        ("after_move", False),  # the file is in images/custom, the row not committed
        ("after_commit", True),  # committed, staging not yet removed
    ],
)
def test_killed_at_each_point_of_the_register_stage(  # type: ignore[no-untyped-def]
    make_server, tmp_path: Path, point: str, registered: bool
) -> None:
    data_dir = tmp_path / "data"
    raw = patterned_raw(tmp_path / "src.raw", 16, data_mib=2)
    vdi = convert(raw, tmp_path / "r.vdi", "vdi")
    srv = make_server({"VIRTLAB_FAULT_POINT": point}, data_dir=data_dir)
    with srv.client() as client, pytest.raises(httpx.HTTPError):
        client.put("/api/images/r.vdi", content=vdi.read_bytes())
    assert srv.wait_exit() == -9

    srv.env.pop("VIRTLAB_FAULT_POINT")
    srv.start()
    with srv.client() as client:
        images = client.get("/api/images").json()
    srv.stop()
    assert_consistent(data_dir)
    assert len(images) == (1 if registered else 0)
    if registered:
        stored = data_dir / "images" / images[0]["path"]
        assert compare(raw, "raw", stored, "qcow2")


def test_a_half_done_delete_is_undone_at_start_up(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A file set aside for a deletion whose row was never deleted goes back in place."""
    from virtlab.images.store import ImageStore

    data_dir = tmp_path / "data"
    raw = patterned_raw(tmp_path / "src.raw", 16, data_mib=2)
    srv = make_server(data_dir=data_dir)
    with srv.client() as client:
        record = client.put("/api/images/keep.raw", content=raw.read_bytes()).json()
    srv.stop()
    # What a crash between "move aside" and "commit the row's deletion" leaves behind:
    ImageStore(data_dir / "images", data_dir / "staging").begin_removal(record["path"])
    assert not (data_dir / "images" / record["path"]).exists()

    srv.start()
    with srv.client() as client:
        assert client.get(f"/api/images/{record['name']}").status_code == 200
    srv.stop()
    assert_consistent(data_dir)
    assert compare(raw, "raw", data_dir / "images" / record["path"], "qcow2")
