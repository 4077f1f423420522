"""The images API end to end: a real server, real uploads over loopback, real qemu-img."""

from __future__ import annotations

import bz2
import gzip
import lzma
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from support.archives import make_ova
from support.catalog import assert_consistent
from support.qimg import compare, convert, info, patterned_raw
from support.server import Server

MiB = 1 << 20


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return patterned_raw(tmp_path_factory.mktemp("src") / "disk.raw", 16, data_mib=3)


def _stored(server: Server, record: dict) -> Path:
    return server.data_dir / "images" / record["path"]


def _upload(client: httpx.Client, path: Path, name: str | None = None) -> httpx.Response:
    with path.open("rb") as f:
        return client.post("/api/images/custom", files={"image": (name or path.name, f)})


def test_health_answers(server: Server) -> None:
    with server.client() as client:
        response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_a_vmdk_named_qcow2_imports_as_vmdk_and_comes_out_a_real_qcow2(
    server: Server, raw: Path, tmp_path: Path
) -> None:
    """The bug this product was born from."""
    disguised = convert(raw, tmp_path / "router.qcow2", "vmdk")
    with server.client() as client:
        response = _upload(client, disguised)
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["source_format"] == "vmdk"
    assert record["format"] == "qcow2"
    assert record["source_name"] == "router.qcow2"
    assert record["name"].startswith("router_") and record["name"].endswith(".qcow2")
    stored = _stored(server, record)
    assert info(stored)["format"] == "qcow2"
    assert compare(raw, "raw", stored, "qcow2")
    assert record["virtual_size"] == raw.stat().st_size
    assert not disguised.with_name("router.qcow2.orig").exists()


def test_put_with_a_raw_body_imports_too(server: Server, raw: Path, tmp_path: Path) -> None:
    vdi = convert(raw, tmp_path / "switch.vdi", "vdi")
    with server.client() as client, vdi.open("rb") as f:
        response = client.put("/api/images/switch.vdi", content=f)
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["source_format"], record["format"]) == ("vdi", "qcow2")
    assert compare(raw, "raw", _stored(server, record), "qcow2")


@pytest.mark.parametrize(
    ("kind", "pack"),
    [
        ("gzip", gzip.compress),
        ("xz", lzma.compress),
        ("bzip2", bz2.compress),
        ("zstd", zstandard.ZstdCompressor().compress),
    ],
)
def test_compressed_images_are_unwrapped(
    server: Server, raw: Path, tmp_path: Path, kind: str, pack
) -> None:  # type: ignore[no-untyped-def]
    vmdk = convert(raw, tmp_path / "r.vmdk", "vmdk")
    packed = tmp_path / "r.img"  # a misleading name on purpose
    packed.write_bytes(pack(vmdk.read_bytes()))
    with server.client() as client:
        response = _upload(client, packed)
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["wrappers"] == [kind]
    assert record["source_format"] == "vmdk"
    assert compare(raw, "raw", _stored(server, record), "qcow2")


def test_an_ova_imports_each_disk_it_names(server: Server, raw: Path, tmp_path: Path) -> None:
    one = convert(raw, tmp_path / "one.vmdk", "vmdk", "subformat=streamOptimized")
    two = convert(raw, tmp_path / "two.vmdk", "vmdk")
    ova = make_ova(tmp_path / "appliance.ova", {"one.vmdk": one, "two.vmdk": two})
    with server.client() as client:
        response = _upload(client, ova)
        assert response.status_code == 201, response.text
        first = response.json()
        [other] = first["also_imported"]
        second = client.get(f"/api/images/{other}").json()
    assert first["name"].startswith("appliance-disk1_")
    assert second["name"].startswith("appliance-disk2_")
    assert first["wrappers"] == ["ova"] and first["source_variant"] == "streamOptimized"
    for record in (first, second):
        assert compare(raw, "raw", _stored(server, record), "qcow2")


def test_an_iso_stays_an_iso_with_kind_cdrom(server: Server, tmp_path: Path) -> None:
    import subprocess

    content = tmp_path / "content"
    content.mkdir()
    (content / "README.TXT").write_text("virtlab")
    iso = tmp_path / "tools.img"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(content)],
        check=True,
        capture_output=True,
    )
    with server.client() as client:
        response = _upload(client, iso)
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["kind"], record["format"], record["source_format"]) == ("cdrom", "iso", "iso")
    assert record["name"].endswith(".iso")
    assert _stored(server, record).read_bytes() == iso.read_bytes()


def test_list_show_and_delete(server: Server, raw: Path, tmp_path: Path) -> None:
    image = convert(raw, tmp_path / "gone.qcow2", "qcow2")
    with server.client() as client:
        record = _upload(client, image).json()
        name = record["name"]
        assert name in [i["name"] for i in client.get("/api/images").json()]
        assert client.get(f"/api/images/{name}").json() == {
            k: v for k, v in record.items() if k != "also_imported"
        }
        assert client.delete(f"/api/images/{name}").status_code == 204
        missing = client.get(f"/api/images/{name}")
        assert missing.status_code == 404
        assert name in missing.json()["detail"]
        assert client.delete(f"/api/images/{name}").status_code == 404
    assert not _stored(server, record).exists()
    assert_consistent(server.data_dir)


def test_a_clean_qcow2_is_kept_byte_for_byte(server: Server, raw: Path, tmp_path: Path) -> None:
    image = convert(raw, tmp_path / "clean.qcow2", "qcow2")
    with server.client() as client:
        record = _upload(client, image).json()
    assert _stored(server, record).read_bytes() == image.read_bytes()
    assert record["sha256"] == record["source_sha256"]


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"files": {"other": ("x.img", b"abc")}}, "no file field named 'image'"),
        ({"data": {"image": "not a file"}}, "multipart/form-data"),
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, "multipart/form-data"),
        (  # a part with no headers: found by the fuzzer (tests/test_fuzz_api.py), once a 500
            {
                "content": b"--b\r\n7171--b--\r\n",
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            "multipart/form-data body is malformed",
        ),
    ],
)
def test_a_malformed_upload_is_a_400_with_the_reason(server: Server, kwargs, detail) -> None:  # type: ignore[no-untyped-def]
    with server.client() as client:
        response = client.post("/api/images/custom", **kwargs)
    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert_consistent(server.data_dir)


def test_an_upload_past_the_cap_is_refused_while_streaming(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"VIRTLAB_MAX_UPLOAD_BYTES": str(4 * MiB)})
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 64 MiB offered, the cap is 4 MiB
            sent += MiB
            yield b"\1" * MiB

    with srv.client() as client:
        try:
            response = client.put("/api/images/big.img", content=body())
            status, detail = response.status_code, response.json()["detail"]
        except httpx.HTTPError:
            status, detail = None, None  # the server may close the connection on us first
    if status is not None:
        assert status == 413
        assert "big.img is larger than the upload limit of 4.0 MiB" in detail
    assert sent > 4 * MiB
    with srv.client() as client:
        [job] = client.get("/api/imports").json()
    assert job["state"] == "failed" and "upload limit" in job["error"]
    # Stopped at the cap: nothing past it was counted or written.
    assert job["bytes_received"] <= 5 * MiB
    assert_consistent(srv.data_dir)


def test_progress_is_observable_while_an_import_runs(server: Server, raw: Path) -> None:
    halfway, release = threading.Event(), threading.Event()
    data = raw.read_bytes()

    def body() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        halfway.set()
        assert release.wait(60)
        yield data[len(data) // 2 :]

    result: dict = {}

    def send() -> None:
        with server.client() as client:
            result["response"] = client.put(
                "/api/images/slow.img",
                params={"import_id": "watch-me-123"},
                content=body(),
                headers={"content-length": str(len(data))},
            )

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert halfway.wait(60)
        with server.client() as client:
            job = _wait_for_job(client, "watch-me-123", lambda j: j["bytes_received"] > 0)
        assert job["state"] == "running" and job["stage"] == "upload"
        assert 0 < job["bytes_received"] <= len(data)
    finally:
        release.set()
        sender.join(120)
    assert result["response"].status_code == 201
    with server.client() as client:
        job = client.get("/api/imports/watch-me-123").json()
    assert job["state"] == "succeeded" and job["stage"] == "done"
    assert job["images"] == [result["response"].json()["name"]]


def _wait_for_job(client: httpx.Client, job_id: str, done, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/api/imports/{job_id}")
        if response.status_code == 200 and done(response.json()):
            return response.json()
    raise AssertionError(f"import {job_id} never reached the expected state")


def test_a_reused_import_id_is_a_conflict(server: Server, raw: Path, tmp_path: Path) -> None:
    image = convert(raw, tmp_path / "a.qcow2", "qcow2")
    with server.client() as client:
        for expected in (201, 409):
            with image.open("rb") as f:
                response = client.put(
                    "/api/images/a.qcow2", params={"import_id": "same-id-0001"}, content=f
                )
            assert response.status_code == expected, response.text
    assert_consistent(server.data_dir)
