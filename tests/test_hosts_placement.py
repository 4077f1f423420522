"""Placement and the host rules, as pure functions: which host a node goes to, and what a
host's name and URI may be."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from virtlab.catalog.hosts import HostRecord
from virtlab.errors import InvalidRequest
from virtlab.services.hosts import HostView, choose, host_uri, validate_host_name


def _view(name: str, memory_mb: int, promised_mb: int) -> HostView:
    record = HostRecord(name, "local" if name == "local" else f"qemu+tcp://{name}/system", "up",
                        datetime(2026, 11, 26, tzinfo=UTC), {"memory_mb": memory_mb})  # fmt: skip
    return HostView(record, True, 1, promised_mb)


VIEWS = [_view("local", 4096, 3000), _view("big", 8192, 1024), _view("small", 2048, 512)]


def test_spread_takes_the_most_room_and_pack_the_least_that_fits() -> None:
    assert [v.room_mb for v in VIEWS] == [1096, 7168, 1536]
    assert choose(VIEWS, 512, "spread") == "big"
    assert choose(VIEWS, 512, "pack") == "local"
    assert choose(VIEWS, 1200, "pack") == "small", "local has 1096 MB left: not enough"
    assert choose(VIEWS, 7168, "pack") == "big", "exactly its room"


def test_no_host_is_promised_more_memory_than_it_has() -> None:
    assert choose(VIEWS, 7169, "spread") is None
    assert choose([], 16, "spread") is None


def test_ties_go_to_the_local_host_then_by_name() -> None:
    views = [_view("b", 2048, 0), _view("a", 2048, 0), _view("local", 2048, 0)]
    assert choose(views, 256, "spread") == "local"
    assert choose(views[:2], 256, "pack") == "a"


def test_host_names_and_uris() -> None:
    assert validate_host_name("lab-host.1") == "lab-host.1"
    for bad in ("", "-h", "a b", "x" * 64, "h/1"):
        with pytest.raises(InvalidRequest, match="invalid host name"):
            validate_host_name(bad)
    assert host_uri("qemu+ssh://root@10.0.0.5/system") == "qemu+ssh://root@10.0.0.5/system"
    assert (host_uri("qemu+tls://h/system?pkipath=/old&x=1", "/etc/virtlab/pki")
            == "qemu+tls://h/system?x=1&pkipath=/etc/virtlab/pki")  # fmt: skip
    for bad in ("qemu:///system", "http://h/", "qemu+tcp:///system", "h1"):
        with pytest.raises(InvalidRequest, match="invalid host URI"):
            host_uri(bad)
    with pytest.raises(InvalidRequest, match="for qemu\\+tls:// URIs"):
        host_uri("qemu+ssh://h/system", "/pki")
