"""Garbage behind every magic number: the inspector refuses or accepts, and never crashes.

A crash would surface as a 500 instead of a reason; every outcome here must be an accepted
``Inspection`` or an ``ImageRejected`` with a message naming the file.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from virtlab.errors import ImageRejected
from virtlab.images.inspect import inspect_file

MAGICS = {
    "qcow2": b"QFI\xfb",
    "qcow2v3": b"QFI\xfb\x00\x00\x00\x03",
    "qed": b"QED\x00",
    "vmdk": b"KDMV",
    "vmdk-text": b"# Disk DescriptorFile\ncreateType=",
    "vdi": b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0") + b"\x7f\x10\xda\xbe",
    "vhd": b"conectix",
    "vhdx": b"vhdxfile",
    "luks": b"LUKS\xba\xbe",
}


def _garbage(rng: random.Random, prefix: bytes) -> bytes:
    size = rng.choice([len(prefix), 64, 511, 512, 4096, 70_000, 1 << 20])
    body = bytearray(rng.randbytes(max(0, size - len(prefix))))
    # Sprinkle plausible small integers so parsers go deeper than the first sanity check.
    for _ in range(rng.randint(0, 16)):
        at = rng.randrange(0, max(1, len(body) - 8))
        body[at : at + 8] = struct.pack(">Q", rng.choice([0, 1, 2, 3, 9, 16, 512, 1 << 16]))
    return prefix + bytes(body)


@pytest.mark.parametrize("magic", sorted(MAGICS))
def test_garbage_after_a_magic_never_crashes_the_inspector(tmp_path: Path, magic: str) -> None:
    rng = random.Random(f"virtlab-{magic}")
    path = tmp_path / "fuzz.img"
    outcomes = set()
    for _ in range(80):
        path.write_bytes(_garbage(rng, MAGICS[magic]))
        try:
            inspect_file(path, display_name="fuzz.img", max_virtual_size=1 << 41)
            outcomes.add("accepted")
        except ImageRejected as exc:
            assert "fuzz.img" in str(exc), str(exc)
            outcomes.add(type(exc).__name__)
    assert outcomes - {"accepted"}, "garbage after a magic number is never all accepted"


def test_garbage_inside_an_iso_system_area_and_volume_descriptors(tmp_path: Path) -> None:
    rng = random.Random("virtlab-iso")
    path = tmp_path / "fuzz.iso"
    for _ in range(100):
        data = bytearray(rng.randbytes(40 * 2048))
        data[32768 + 1 : 32768 + 6] = rng.choice([b"CD001", b"BEA01", b"NSR02", b"NSR03"])
        data[32768] = rng.choice([0, 1, 2, 255])
        path.write_bytes(bytes(data))
        try:
            inspect_file(path, display_name="fuzz.iso", max_virtual_size=1 << 41)
        except ImageRejected as exc:
            assert "fuzz.iso" in str(exc)
