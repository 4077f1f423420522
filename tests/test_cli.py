"""The ``virtlab`` command line against a real server, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.catalog import assert_consistent
from support.qimg import compare, convert, info, patterned_raw
from support.server import Server

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))


def cli(server: Server | None, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = {"VIRTLAB_URL": url or (server.url if server else ""), "COLUMNS": "200"}
    env["VIRTLAB_TOKEN"] = server.token if server else ""
    return subprocess.run(
        [VIRTLAB, *args], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return patterned_raw(tmp_path_factory.mktemp("src") / "disk.raw", 16, data_mib=2)


def test_import_list_show_rm(server: Server, raw: Path, tmp_path: Path) -> None:
    vmdk = convert(raw, tmp_path / "router.qcow2", "vmdk")  # disguised
    done = cli(server, "image", "import", str(vmdk), "--json")
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)
    assert (record["source_format"], record["format"]) == ("vmdk", "qcow2")
    name = record["name"]

    listed = json.loads(cli(server, "image", "list", "--json").stdout)
    assert name in [i["name"] for i in listed]
    table = cli(server, "image", "list")
    assert name in table.stdout and "vmdk" in table.stdout
    shown = json.loads(cli(server, "image", "show", name, "--json").stdout)
    assert shown["sha256"] == record["sha256"]
    assert "source_format" in cli(server, "image", "show", name).stdout

    assert cli(server, "image", "rm", name).returncode == 0
    gone = cli(server, "image", "show", name)
    assert gone.returncode == 1
    assert f"no image named '{name}'" in gone.stderr


def test_import_reports_each_refusal_and_fails(server: Server, raw: Path, tmp_path: Path) -> None:
    good = convert(raw, tmp_path / "good.vdi", "vdi")
    base = convert(raw, tmp_path / "base.qcow2", "qcow2")
    hostile = tmp_path / "hostile.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(hostile)],
        check=True,
    )
    done = cli(server, "image", "import", str(good), str(hostile))
    assert done.returncode == 1
    assert "imported good.vdi" in done.stdout
    assert "refused: hostile.qcow2" in done.stderr and "backing file" in done.stderr
    assert_consistent(server.data_dir)


def test_unreachable_server_says_what_to_do(tmp_path: Path) -> None:
    done = cli(None, "image", "list", url="http://127.0.0.1:9")
    assert done.returncode == 1
    assert "cannot reach the virtlab server at http://127.0.0.1:9" in done.stderr
    assert "virtlab serve" in done.stderr


def test_base_images_are_scanned_at_start_up_and_verify_fix_converts_mislabelled_ones(
    make_server, raw: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    convert(raw, data / "images" / "router.qcow2", "vmdk")  # a VMDK wearing a qcow2 name
    convert(raw, data / "images" / "switch.qcow2", "qcow2")
    srv = make_server(data_dir=data)

    listed = {i["name"]: i for i in json.loads(cli(srv, "image", "list", "--json").stdout)}
    assert listed["router.qcow2"]["format"] == "vmdk"
    assert listed["switch.qcow2"]["format"] == "qcow2"
    assert {i["origin"] for i in listed.values()} == {"base"}

    check = cli(srv, "image", "verify")
    assert check.returncode == 1
    assert "router.qcow2 is a vmdk image, not qcow2" in check.stdout

    fixed = cli(srv, "image", "verify", "--fix", "--json")
    assert fixed.returncode == 0, fixed.stdout
    router = json.loads(cli(srv, "image", "show", "router.qcow2", "--json").stdout)
    assert (router["format"], router["source_format"]) == ("qcow2", "vmdk")
    assert info(data / "images" / "router.qcow2")["format"] == "qcow2"
    assert compare(raw, "raw", data / "images" / "router.qcow2", "qcow2")
    assert cli(srv, "image", "verify").returncode == 0


def test_verify_finds_hostile_missing_and_changed_files(
    make_server, raw: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    srv = make_server(data_dir=data)
    images = data / "images"
    convert(raw, images / "keep.qcow2", "qcow2")
    convert(raw, images / "lost.qcow2", "qcow2")
    assert cli(srv, "image", "verify").returncode == 0

    (images / "lost.qcow2").unlink()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(images / "keep.qcow2"), "-F",
         "qcow2", str(images / "sneaky.qcow2")],
        check=True,
    )  # fmt: skip
    other = patterned_raw(tmp_path / "other.raw", 16, data_mib=2, seed=7)
    convert(other, images / "keep.qcow2", "qcow2")  # replaced by another valid image
    report = json.loads(cli(srv, "image", "verify", "--json").stdout)
    assert report["ok"] is False
    assert "backing file" in report["scan"]["refused"]["sneaky.qcow2"]
    problems = {i["name"]: i["problems"] for i in report["images"]}
    assert problems["lost.qcow2"] == ["its file lost.qcow2 is missing"]
    assert problems["keep.qcow2"] == ["its sha256 differs from the one recorded at import"]
    assert "sneaky.qcow2" not in problems

    (images / "sneaky.qcow2").unlink()
    fixed = cli(srv, "image", "verify", "--fix", "--json")
    assert fixed.returncode == 0, fixed.stdout
    names = [i["name"] for i in json.loads(cli(srv, "image", "list", "--json").stdout)]
    assert names == ["keep.qcow2"]
    assert cli(srv, "image", "verify").returncode == 0


def test_serve_refuses_a_data_dir_too_deep_for_unix_sockets(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    done = subprocess.run(
        [VIRTLAB, "serve", "--data-dir", str(deep), "--port", "9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "too deep for the unix sockets of nodes" in done.stderr
    assert "choose a shorter --data-dir" in done.stderr
    assert not deep.exists(), "nothing was made"
