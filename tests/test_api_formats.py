"""Every accepted format and every refusal class, uploaded through the API under a misleading name.

Accepted images come out as qcow2 (ISO media as ISO) with the content they went in with; refused
ones get the status their class maps to and a reason that names the upload, and leave nothing
behind: no row, no file, no staging.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import formats
from support.catalog import assert_consistent
from support.qimg import compare
from support.server import Server
from virtlab.errors import TooLarge, UnsupportedImage
from virtlab.images.formats import ImageFormat

STATUS = {TooLarge: 413, UnsupportedImage: 415}


@pytest.fixture(scope="module")
def pattern(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return formats.make_pattern_raw(tmp_path_factory.mktemp("pattern"))


def _post(server: Server, path: Path) -> dict:
    with server.client() as client, path.open("rb") as f:
        response = client.post("/api/images/custom", files={"image": (path.name, f)})
    return {"status": response.status_code, **response.json()}


@pytest.mark.parametrize("case", sorted(formats.ACCEPTED))
def test_accepted(server: Server, tmp_path: Path, pattern: Path, case: str) -> None:
    expected = formats.ACCEPTED[case]
    upload = formats.make_disguised(case, tmp_path)
    result = _post(server, upload)
    assert result["status"] == 201, result
    assert result["source_format"] == expected.format.value
    assert result["source_variant"] == expected.variant
    stored = server.data_dir / "images" / result["path"]
    if expected.format is ImageFormat.ISO:
        assert (result["kind"], result["format"]) == ("cdrom", "iso")
        assert stored.read_bytes() == upload.read_bytes()
    else:
        assert (result["kind"], result["format"]) == ("disk", "qcow2")
        source_driver = expected.format.qemu_driver
        assert compare(upload, source_driver, stored, "qcow2")


# What the header inspector refuses as wrappers the API unwraps first (tests/test_unpack.py).
WRAPPERS = {"gzip", "tar"}


@pytest.mark.parametrize("case", sorted(set(formats.REFUSED) - WRAPPERS))
def test_refused(server: Server, tmp_path: Path, case: str) -> None:
    expected = formats.REFUSED[case]
    upload = formats.make_disguised(case, tmp_path)
    with server.client() as client:
        before = client.get("/api/images").json()
    result = _post(server, upload)
    status = next((code for cls, code in STATUS.items() if issubclass(expected.error, cls)), 422)
    assert result["status"] == status, result
    detail = result["detail"]
    assert upload.name in detail, "the reason names the upload"
    assert expected.needle in detail
    assert_consistent(server.data_dir)
    with server.client() as client:
        assert client.get("/api/images").json() == before


def test_a_truncated_qcow2_is_caught_by_the_second_opinion(
    server: Server, tmp_path: Path, pattern: Path
) -> None:
    """Its header is fine and `qemu-img info` is happy; only `qemu-img check` sees the damage."""
    image = formats.ACCEPTED["qcow2_v3"].maker(tmp_path, "cut.qcow2")
    with image.open("r+b") as f:
        f.truncate(image.stat().st_size - 64 * 1024)
    result = _post(server, image)
    assert result["status"] == 422, result
    assert "cut.qcow2 (qcow2) is damaged: qemu-img check found" in result["detail"]
    assert_consistent(server.data_dir)
