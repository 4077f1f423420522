"""``virtlab image boot-test`` and ``POST /api/images/{name}/boot-test`` on real QEMU guests."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.bootdisk import boot_disk
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))


@pytest.fixture(scope="module")
def booted(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    raw = boot_disk(tmp_path_factory)
    with server.client() as client:
        return client.put("/api/images/boot.img", content=raw.read_bytes()).json()["name"]


def _leftovers(server: Server) -> list[str]:
    nodes = server.data_dir / "nodes"
    return [p.name for p in nodes.iterdir()] if nodes.exists() else []


def test_the_marker_passes_with_serial_and_screenshot(server: Server, booted: str) -> None:
    with server.client(timeout=300) as client:
        response = client.post(
            f"/api/images/{booted}/boot-test", json={"seconds": 120, "expect": BOOT_MARKER}
        )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["passed"] is True
    assert BOOT_MARKER in result["serial"]
    assert f"{BOOT_MARKER!r} appeared on the serial console" in result["reason"]
    assert base64.b64decode(result["screenshot_png"]).startswith(b"\x89PNG")
    assert _leftovers(server) == [], "the throwaway overlay is removed"


def test_the_cli_fails_when_the_text_never_shows(
    server: Server, booted: str, tmp_path: Path
) -> None:
    shot = tmp_path / "end.png"
    done = subprocess.run(
        [VIRTLAB, "image", "boot-test", booted, "--seconds", "3", "--expect", "NEVER-PRINTED",
         "--screenshot", str(shot)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **server.cli_env},
    )  # fmt: skip
    assert done.returncode == 1
    assert "failed" in done.stdout
    assert "'NEVER-PRINTED' did not appear on the serial console within 3 s" in done.stdout
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert _leftovers(server) == []


def test_without_expect_it_passes_when_the_machine_still_runs(server: Server, booted: str) -> None:
    done = subprocess.run(
        [VIRTLAB, "image", "boot-test", booted, "--seconds", "2", "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **server.cli_env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reason"] == "the machine was still running after 2 s"


def test_an_image_under_boot_test_cannot_be_deleted(server: Server, booted: str) -> None:
    result: dict = {}

    def run() -> None:
        with server.client(timeout=300) as client:
            result["r"] = client.post(f"/api/images/{booted}/boot-test", json={"seconds": 10})

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not _leftovers(server):  # the boot test's overlay appears: it runs
            assert time.monotonic() < deadline, "the boot test never started"
        with server.client() as client:
            refused = client.delete(f"/api/images/{booted}")
        assert refused.status_code == 409
        assert "a boot test in progress" in refused.json()["detail"]
    finally:
        runner.join(120)
    assert result["r"].status_code == 200


def test_a_missing_image_is_a_404(server: Server) -> None:
    with server.client() as client:
        response = client.post("/api/images/nope.qcow2/boot-test", json={"seconds": 5})
    assert response.status_code == 404
