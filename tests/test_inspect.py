"""virtlab.images.inspect: content decides the format, and anything hostile is refused.

Images come from ``support.formats`` (real qemu-img, xorriso, mkudffs, sfdisk; crafted headers).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from support import formats
from support.formats import ACCEPTED, CAP, REFUSED
from virtlab.errors import CorruptImage, ImageRejected, UnsafeImage
from virtlab.images.formats import ImageFormat
from virtlab.images.inspect import ImageSource, Inspection, inspect_file, inspect_source
from virtlab.images.inspect.detect import Kind, choose, survey
from virtlab.images.inspect.media import plausible_mbr
from virtlab.images.inspect.oslo import SecondOpinion, disagreement, second_opinion
from virtlab.images.inspect.verdict import Subject, human_size, quoted

GiB = 1024**3
DISPLAY = "my upload.bin"

Built = Callable[[str], Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Each registry case made once per module, in a directory of its own."""
    root = tmp_path_factory.mktemp("images")
    cache: dict[str, Path] = {}

    def build(case: str) -> Path:
        if case not in cache:
            entry = ACCEPTED.get(case) or REFUSED[case]
            cache[case] = entry.maker(root / case)
        return cache[case]

    return build


def _inspect(path: Path, name: str = DISPLAY, cap: int = CAP) -> Inspection:
    return inspect_file(path, display_name=name, max_virtual_size=cap)


# -- the registries ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted(case: str, built: Built) -> None:
    expected = ACCEPTED[case]
    found = _inspect(built(case))
    assert (found.format, found.variant) == (expected.format, expected.variant)
    assert found.second_opinion, "oslo.utils was not consulted"


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_virtual_size_is_what_qemu_shows(case: str, built: Built) -> None:
    path = built(case)
    found = _inspect(path)
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", found.format.qemu_driver, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert found.virtual_size == json.loads(info.stdout)["virtual-size"]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(case: str, built: Built) -> None:
    expected = REFUSED[case]
    with pytest.raises(ImageRejected) as caught:
        _inspect(built(case))
    message = str(caught.value)
    assert type(caught.value) is expected.error, message
    assert expected.needle in message
    assert message.startswith(f"{DISPLAY} "), "the message must name the upload"
    assert "; " in message, "the message must say what to do"
    assert "bad format" not in message.lower()


@pytest.mark.parametrize("case", sorted(ACCEPTED) + sorted(REFUSED))
def test_the_name_is_only_a_hint(case: str, built: Built, tmp_path: Path) -> None:
    path = tmp_path / formats.misleading_name(case)
    shutil.copyfile(built(case), path)
    if case in ACCEPTED:
        found = _inspect(path, name=path.name)
        assert (found.format, found.variant) == ACCEPTED[case][1:]
    else:
        with pytest.raises(REFUSED[case].error, match=r"^router\."):
            _inspect(path, name=path.name)


@pytest.mark.parametrize("case", ["vmdk_sparse", "iso9660", "qcow2_backing", "vmdk_parent"])
def test_disguised_images_are_made_under_a_misleading_name(case: str, tmp_path: Path) -> None:
    path = formats.make_disguised(case, tmp_path)
    assert path.name == formats.misleading_name(case)
    if case in ACCEPTED:
        assert ACCEPTED[case].format.value not in path.name
        assert _inspect(path).format is ACCEPTED[case].format
    else:
        with pytest.raises(REFUSED[case].error):
            _inspect(path)


def test_a_vmdk_named_qcow2_is_a_vmdk(tmp_path: Path) -> None:
    found = _inspect(formats.make_vmdk_sparse(tmp_path, "router.qcow2"), name="router.qcow2")
    assert found.format is ImageFormat.VMDK


def test_the_flat_vmdk_message_reads_as_designed(tmp_path: Path) -> None:
    path = formats.make_vmdk_monolithic_flat(tmp_path, "router.qcow2")
    with pytest.raises(UnsafeImage) as caught:
        _inspect(path, name="router.qcow2")
    assert str(caught.value).startswith(
        "router.qcow2 is a VMDK (monolithicFlat) whose extent is a separate file; refusing to "
        "read files outside the upload. "
    )


def test_the_backing_file_message_gives_a_command(built: Built) -> None:
    with pytest.raises(UnsafeImage) as caught:
        _inspect(built("qcow2_backing"), name="router.qcow2")
    assert str(caught.value) == (
        "router.qcow2 is a qcow2 image with a backing file ('base.img'); refusing to read files "
        "outside the upload. Flatten it first, where its other files are: "
        "qemu-img convert -O qcow2 router.qcow2 flat.qcow2"
    )


def test_a_hostile_display_name_is_shown_harmlessly(built: Built) -> None:
    with pytest.raises(UnsafeImage) as caught:
        _inspect(built("qcow2_backing"), name="evil\x1b[31m; rm -rf ~.qcow2")
    message = str(caught.value)
    assert "\x1b" not in message
    assert "'evil?[31m; rm -rf ~.qcow2'" in message  # quoted in the suggested command


def test_features_name_what_the_header_shows(built: Built) -> None:
    assert "snapshots" in _inspect(built("qcow2_snapshot")).features
    assert "bitmaps" in _inspect(built("qcow2_bitmap")).features
    assert "extended_l2" in _inspect(built("qcow2_extended_l2")).features
    assert "zstd" in _inspect(built("qcow2_zstd")).features
    assert "dirty" in _inspect(built("qcow2_dirty")).features
    assert "hybrid" in _inspect(built("iso_hybrid")).features
    assert _inspect(built("qcow2_v3")).features == ()


def test_the_size_cap_is_the_callers(built: Built) -> None:
    path = built("qcow2_v3")
    assert _inspect(path, cap=formats.DISK_SIZE).virtual_size == formats.DISK_SIZE
    with pytest.raises(ImageRejected, match=r"past the limit of 4\.0 MiB"):
        _inspect(path, cap=formats.DISK_SIZE - 1)


# -- the second opinion (oslo.utils) ----------------------------------------------------------


def test_oslo_alone_catches_a_bare_boot_signature(built: Built) -> None:
    """Our survey sees a plain qcow2 (no plausible partition); oslo also sees a "gpt"."""
    path = built("qcow2_boot_signature")
    with ImageSource.open(path) as src:
        subject = Subject(DISPLAY)
        assert choose(survey(src), subject).kind is Kind.QCOW2
        assert second_opinion(src).formats == ("gpt", "qcow2")
    with pytest.raises(UnsafeImage, match=r"says a second inspector, oslo\.utils"):
        _inspect(path)


def test_our_policy_overrules_oslo_on_extended_l2(built: Built) -> None:
    path = built("qcow2_extended_l2")
    with ImageSource.open(path) as src:
        assert second_opinion(src).objections == ("unknown_features",)
    assert "extended_l2" in _inspect(path).features


def test_our_policy_is_stricter_than_oslo_on_the_corrupt_bit(built: Built) -> None:
    path = built("qcow2_corrupt")
    with ImageSource.open(path) as src:
        assert second_opinion(src) == SecondOpinion(("qcow2",))
    with pytest.raises(CorruptImage):
        _inspect(path)


def test_oslo_sees_a_hybrid_iso_twice_and_that_is_fine(built: Built) -> None:
    assert _inspect(built("iso_hybrid")).second_opinion == ("gpt", "iso")


def _ours(fmt: ImageFormat, variant: str) -> Inspection:
    return Inspection(format=fmt, variant=variant, virtual_size=formats.DISK_SIZE)


@pytest.mark.parametrize(
    ("ours", "opinion", "complaint"),
    [
        (_ours(ImageFormat.QCOW2, "v3"), SecondOpinion(("qcow2",)), None),
        (_ours(ImageFormat.QCOW2, "v3"), SecondOpinion(("vmdk",)), "vmdk to a second inspector"),
        (_ours(ImageFormat.QCOW2, "v3"), SecondOpinion(("raw",)), "raw to a second inspector"),
        (_ours(ImageFormat.QCOW2, "v3"), SecondOpinion(("iso", "qcow2")), "(iso and qcow2,"),
        (_ours(ImageFormat.QCOW2, "v3"), SecondOpinion(("qcow2",), ("unknown_features",)), None),
        (_ours(ImageFormat.QCOW2, "v3"), SecondOpinion(("qcow2",), ("backing_file",)), "objects"),
        (_ours(ImageFormat.VMDK, "streamOptimized"), SecondOpinion(("vmdk",), ("footer",)), None),
        (
            _ours(ImageFormat.VMDK, "monolithicSparse"),
            SecondOpinion(("vmdk",), ("descriptor",)),
            "objects to (descriptor)",
        ),
        (_ours(ImageFormat.VHD, "fixed"), SecondOpinion(("raw",)), None),
        (_ours(ImageFormat.VHD, "dynamic"), SecondOpinion(("raw",)), "raw to a second"),
        (_ours(ImageFormat.RAW, "mbr"), SecondOpinion(("gpt",)), None),
        (_ours(ImageFormat.RAW, "plain"), SecondOpinion(("vhd",)), "vhd to a second"),
        (_ours(ImageFormat.ISO, "iso9660"), SecondOpinion(("gpt", "iso")), None),
        (_ours(ImageFormat.ISO, "iso9660"), SecondOpinion(("raw",)), "raw to a second"),
        (_ours(ImageFormat.ISO, "udf"), SecondOpinion(("raw",)), None),
        (_ours(ImageFormat.RAW, "plain"), SecondOpinion((), failure="boom"), "failed to read"),
    ],
)
def test_agreement(ours: Inspection, opinion: SecondOpinion, complaint: str | None) -> None:
    found = disagreement(ours, opinion)
    if complaint is None:
        assert found is None
    else:
        assert found is not None and complaint in found


# -- reading little ---------------------------------------------------------------------------


def test_a_large_sparse_raw_file_is_read_a_little(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    with path.open("wb") as f:
        f.truncate(20 * GiB)
    with ImageSource.open(path) as src:
        found = inspect_source(src, display_name=DISPLAY, max_virtual_size=CAP)
        assert (found.format, found.virtual_size) == (ImageFormat.RAW, 20 * GiB)
        assert src.bytes_read < 1024 * 1024


def test_a_large_fixed_vhd_is_found_by_its_footer(tmp_path: Path) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", "big.vhd", "20G"],
        cwd=tmp_path,
        check=True,
    )
    with ImageSource.open(tmp_path / "big.vhd") as src:
        found = inspect_source(src, display_name=DISPLAY, max_virtual_size=CAP)
        assert (found.format, found.variant) == (ImageFormat.VHD, "fixed")
        assert found.virtual_size > 20 * GiB - GiB
        assert src.bytes_read < 1024 * 1024


def test_a_large_qcow2_is_read_a_little(built: Built) -> None:
    with ImageSource.open(built("qcow2_too_large")) as src:
        found = inspect_source(src, display_name=DISPLAY, max_virtual_size=4 * 1024**4)
        assert found.virtual_size == 3 * 1024**4
        assert src.bytes_read < 1024 * 1024


# -- small pieces -----------------------------------------------------------------------------


def test_sizes_read_as_people_write_them() -> None:
    assert human_size(4 * 1024**4) == "4.0 TiB"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(512) == "512 bytes"


def test_names_from_inside_files_are_tamed() -> None:
    assert quoted(b"base\x00\x1b.img") == "'base??.img'"
    assert quoted("x" * 100) == "'" + "x" * 61 + "...'"


def test_a_fat_boot_sector_is_not_a_partition_table(built: Built) -> None:
    assert not plausible_mbr(built("raw_fat").read_bytes()[:512])
    assert plausible_mbr(built("raw_mbr").read_bytes()[:512])
