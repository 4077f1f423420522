"""Every name a user gives is checked by its rule (virtlab.names), on every route that makes or
renames something: traversal, control characters, backslashes, over-long names, leading or
trailing spaces and dots, Unicode look-alikes and names that collide (case included) are
refused with a 4xx whose message quotes the rule or names the existing thing, and nothing is
made: the lists and the data directory are the same before and after."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from support.server import Server
from virtlab.errors import InvalidRequest
from virtlab.names import IMAGE, LAB, NODE, TAG, TOKEN_LABEL, UPLOAD, USER, NameRule

VIRTLAB = str(Path(sys.executable).with_name("virtlab"))
LAB_NAME, NODES = "nlab", ("r1", "r2")

# Refused by every rule of a name (upload file names and token labels have their own lists).
PATHS = ["../x", "a/b", "/abs", "..", ".", "a\\b"]
CONTROL = ["a\x00b", "a\x1bb", "a\nb", "e\u202eb"]  # NUL, ESC, newline, right-to-left override
EDGES = [" r1", "r1 ", ".r1", "r1.", "-r1"]
LONG = ["x" * 64, "x" * 10_000]
UNICODE = ["\u0440" + "1", "\uff52" + "1", "r\u0301"]  # Cyrillic er, full-width r, combining
BAD = PATHS + CONTROL + EDGES + LONG + UNICODE

BAD_UPLOADS = PATHS + CONTROL + [" a.img", "a.img ", ".a.img", "a.img.", "x" * 256, "x" * 10_000]
BAD_LABELS = ["a\x00b", "a\x1bb", "a\nb", "e\u202eb", "x" * 64, "x" * 10_000]


@dataclass
class World:
    server: Server
    image: str
    # The snapshot a case of the bad-name test took after its request, and that case's node id:
    # the next case's "before", if no other test ran in between (see before_case).
    settled: tuple[str, dict] | None = None

    def client(self) -> httpx.Client:
        return self.server.client()


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    with server.client() as client:
        image = client.put("/api/images/seed.img", content=bytes(1 << 20)).json()["name"]
        assert client.post("/api/labs", json={"name": LAB_NAME}).status_code == 201
        for node in NODES:
            body = {"name": node, "image": image, "lab": LAB_NAME, "nics": 2}
            assert client.post("/api/nodes", json=body).status_code == 201
        assert client.post("/api/users", json={"name": "alice"}).status_code == 201
    return World(server, image)


LISTS = ("/api/labs", "/api/nodes", "/api/links", "/api/images", "/api/users", "/api/tokens")


def snapshot(world: World) -> dict:
    """What exists: the API's lists, and every file of the data directory (the catalog's own
    files aside: a refused request may still be logged or read)."""
    with world.client() as client, ThreadPoolExecutor(len(LISTS)) as pool:
        # The lists asked for at once: the server answers one while the next is sent.
        got = pool.map(lambda path: client.get(path).raise_for_status().json(), LISTS)
        lists = dict(zip(LISTS, got, strict=True))
    for token in lists["/api/tokens"]:
        token.pop("last_used_at")  # the fuzzer's own token, used by this very request
    data = world.server.data_dir
    files = sorted(
        str(Path(root, name).relative_to(data))
        for root, _dirs, names in os.walk(data)
        for name in names
        if not name.startswith("catalog.sqlite3")
    )
    return {"lists": lists, "files": files}


def text_of(reply: httpx.Response) -> str:
    detail = reply.json()["detail"]
    if isinstance(detail, list):  # FastAPI's 422: the rule is in each problem's message
        return "; ".join(str(d["msg"]) for d in detail)
    return detail


def yaml_lab(name: str, nodes: list[str], image: str) -> str:
    """A lab file. Strings are written as JSON's, which YAML reads with any character in
    them; node names are explicit keys (``? NAME``), which may be longer than 1024."""
    keys = "".join(f"    ? {json.dumps(n)}\n    : {{}}\n" for n in nodes)
    return (f"name: {json.dumps(name)}\ntopology:\n  defaults: {{image: {json.dumps(image)}}}\n"
            f"  nodes:\n{keys}")  # fmt: skip


def path_part(name: str) -> str:
    """``name`` for a URL path: every character escaped, dots too (httpx would fold ``..``)."""
    return "".join(c if c.isalnum() and c.isascii() else quote(c, safe="") for c in name).replace(
        ".", "%2E"
    )


def multipart(filename: str) -> tuple[bytes, str]:
    """A form with the field ``image`` whose file name is ``filename`` as it is (UTF-8)."""
    boundary = "virtlabnames"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + bytes(1 << 16) + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# -- each route that takes a name: (rule, the bad names it must refuse, the request) -----------

Send = Callable[[httpx.Client, World, str], httpx.Response]


def _upload_multipart(c: httpx.Client, w: World, bad: str) -> httpx.Response:
    body, kind = multipart(bad)
    return c.post("/api/images/custom", content=body, headers={"content-type": kind})


def _archive_import(c: httpx.Client, w: World, bad: str) -> httpx.Response:
    return c.post("/api/labs/import", params={"name": bad}, content=b"not read")


ROUTES: dict[str, tuple[NameRule, list[str], Send]] = {
    "POST /api/labs (name)": (LAB, BAD, lambda c, w, bad: c.post(
        "/api/labs", json={"name": bad})),
    "POST /api/labs (lab file: lab name)": (LAB, BAD, lambda c, w, bad: c.post(
        "/api/labs", json={"topology": yaml_lab(bad, ["t1"], w.image), "start": False})),
    "POST /api/labs (lab file: node name)": (NODE, BAD, lambda c, w, bad: c.post(
        "/api/labs", json={"topology": yaml_lab("tlab", [bad], w.image), "start": False})),
    "POST /api/labs/import (name)": (LAB, BAD, _archive_import),
    "POST /api/nodes (name)": (NODE, BAD, lambda c, w, bad: c.post(
        "/api/nodes", json={"name": bad, "image": w.image, "lab": LAB_NAME})),
    "POST /api/nodes (lab)": (LAB, BAD, lambda c, w, bad: c.post(
        "/api/nodes", json={"name": "n9", "image": w.image, "lab": bad})),
    "PATCH /api/nodes/{ref} (rename)": (NODE, BAD, lambda c, w, bad: c.patch(
        f"/api/nodes/{LAB_NAME}:r1", json={"name": bad})),
    "POST /api/links (endpoint)": (NODE, BAD, lambda c, w, bad: c.post(
        "/api/links", json={"lab": LAB_NAME, "a": f"{bad}:eth1", "b": "r2:eth1"})),
    "POST /api/nodes/{ref}/checkpoints (tag)": (TAG, BAD, lambda c, w, bad: c.post(
        f"/api/nodes/{LAB_NAME}:r1/checkpoints", json={"tag": bad})),
    "POST /api/labs/{name}/checkpoints (tag)": (TAG, BAD, lambda c, w, bad: c.post(
        f"/api/labs/{LAB_NAME}/checkpoints", json={"tag": bad})),
    "POST /api/users (name)": (USER, [*BAD, "Alice"], lambda c, w, bad: c.post(
        "/api/users", json={"name": bad})),
    "POST /api/tokens (label)": (TOKEN_LABEL, BAD_LABELS, lambda c, w, bad: c.post(
        "/api/tokens", json={"label": bad})),
    "PUT /api/images/{name} (file name)": (UPLOAD, BAD_UPLOADS, lambda c, w, bad: c.put(
        f"/api/images/{path_part(bad[:3000])}", content=bytes(1 << 16))),
    "POST /api/images/custom (multipart file name)": (UPLOAD, BAD_UPLOADS, _upload_multipart),
}  # fmt: skip

# Endpoint refusals quote the endpoint rule, which names the node rule's place in it.
QUOTED = {"POST /api/links (endpoint)": "NODE:ethN"}


def cases() -> Iterator[tuple[str, str]]:
    for route, (_rule, bads, _send) in ROUTES.items():
        for bad in bads:
            yield route, bad


@pytest.mark.parametrize(("route", "bad"), list(cases()), ids=lambda v: repr(v)[:24])
def test_a_bad_name_is_refused_with_its_rule_and_nothing_is_made(
    world: World, route: str, bad: str, request: pytest.FixtureRequest
) -> None:
    rule, _bads, send = ROUTES[route]
    before = before_case(world, request)
    with world.client() as client:
        reply = send(client, world, bad)
    after = snapshot(world)
    world.settled = (request.node.nodeid, after)
    assert 400 <= reply.status_code < 500, (route, bad, reply.status_code, reply.text[:300])
    assert reply.status_code not in (401, 403, 404, 405), (route, reply.text[:300])
    said = text_of(reply)
    assert QUOTED.get(route, rule.rule) in said, (route, said[:500])
    assert len(said) < 2000, "a refusal quotes a long name cut short"
    assert after == before, route


def before_case(world: World, request: pytest.FixtureRequest) -> dict:
    """What exists before a case's request. If the test that ran just before is a case that
    took its snapshot after its request, nothing has happened since: that snapshot is the
    world now, and a case pays for one snapshot, not two. Otherwise (the first case, a case
    after another test, a case after one that failed before its snapshot) a snapshot now."""
    items = request.session.items
    here = items.index(request.node)
    if here > 0 and world.settled is not None and world.settled[0] == items[here - 1].nodeid:
        return world.settled[1]
    return snapshot(world)


def test_the_rules_agree_with_the_published_patterns() -> None:
    """A name a rule accepts matches its pattern and the other way round, on both sides of
    each boundary; the rules are in the lab file's JSON Schema too."""
    for rule in (NODE, LAB, TAG, USER, IMAGE):
        longest = "a" * rule.max_length
        assert rule.problem(longest) is None and rule.problem(longest + "a") is not None
        assert rule.problem("a") is None
        for bad in BAD:
            if len(bad) > rule.max_length or rule is not IMAGE:
                assert rule.problem(bad) is not None, (rule.what, bad)
    assert UPLOAD.problem("routeur-été.vmdk") is None  # a file name is a label: any text
    assert UPLOAD.problem("x" * 255) is None and UPLOAD.problem("x" * 256) is not None
    assert TOKEN_LABEL.problem("cli@laptop: for the class / lab 3") is None
    assert NODE.clash("R1", ["r2", "r1"]) == "r1" and NODE.clash("r3", ["r1"]) is None


# -- collisions ---------------------------------------------------------------------------------


def _refused(reply: httpx.Response, status: int, *parts: str) -> None:
    assert reply.status_code == status, reply.text[:300]
    said = text_of(reply)
    for part in parts:
        assert part in said, said


def test_names_that_differ_only_in_case_collide(world: World) -> None:
    before = snapshot(world)
    with world.client() as c:
        _refused(c.post("/api/labs", json={"name": "NLAB"}), 409,
                 "already has a lab named nlab", "differ only in case")  # fmt: skip
        _refused(c.post("/api/labs", json={"name": LAB_NAME}), 409, "a lab named nlab")
        node = {"image": world.image, "lab": LAB_NAME}
        _refused(c.post("/api/nodes", json={"name": "R1", **node}), 409,
                 "this lab already has a node named r1", "differ only in case")  # fmt: skip
        _refused(c.post("/api/nodes", json={"name": "r1", **node}), 409, "a node named r1")
        _refused(c.patch(f"/api/nodes/{LAB_NAME}:r2", json={"name": "R1"}), 409,
                 "a node named r1")  # fmt: skip
        deploy = {"topology": yaml_lab("NLab", ["t1"], world.image), "start": False}
        _refused(c.post("/api/labs", json=deploy), 409, "a lab named nlab")
        twins = {"topology": yaml_lab("twins", ["R1", "r1"], world.image), "start": False}
        _refused(c.post("/api/labs", json=twins), 400, "collides with node 'R1'",
                 "differ only in case")  # fmt: skip
        _refused(c.post("/api/users", json={"name": "alice"}), 409, "user alice exists")
    assert snapshot(world) == before
    with world.client() as c:  # a node may change the case of its own name
        renamed = c.patch(f"/api/nodes/{LAB_NAME}:r2", json={"name": "R2"})
        assert renamed.status_code == 200 and renamed.json()["name"] == "R2", renamed.text
        assert c.patch(f"/api/nodes/{LAB_NAME}:R2", json={"name": "r2"}).status_code == 200


def test_an_archive_imported_under_a_name_that_collides_is_refused(world: World) -> None:
    with world.client() as c:
        archive = c.get(f"/api/labs/{LAB_NAME}/archive")
        assert archive.status_code == 200, archive.text[:300]
        before = snapshot(world)
        _refused(c.post("/api/labs/import", params={"name": "NLAB"}, content=archive.content),
                 409, "a lab named nlab", "differ only in case")  # fmt: skip
        # Its own name, changed inside the archive to one the rules refuse.
        hostile = _renamed_lab(archive.content, "../x")
        _refused(c.post("/api/labs/import", content=hostile), 400, "manifest")
    assert snapshot(world) == before


def _renamed_lab(archive: bytes, name: str) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for member in src:
            data = src.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), "lab": name}).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out.getvalue()


# -- files dropped into DATA/images ---------------------------------------------------------------


def test_the_scan_refuses_badly_named_and_colliding_files(world: World) -> None:
    images = world.server.data_dir / "images"
    dropped = {
        "with space.img": "image name",
        "ctl\x1b.img": "image name",
        "x" * 200 + ".img": "image name",
        "\u0440outer.img": "image name",
        world.image.upper(): f"({world.image}) is already in the catalog",
    }
    for name in dropped:
        (images / name).write_bytes(bytes(1 << 16))
    try:
        before = snapshot(world)["lists"]
        with world.client() as c:
            report = c.post("/api/images/scan").raise_for_status().json()
        assert report["added"] == [], report
        refused = report["refused"]
        for name, why in dropped.items():
            key = name.replace("\x1b", "\\x1b")  # control characters escaped
            assert why in refused[key], (name, refused[key])
            assert "rename the file" in refused[key]
        assert snapshot(world)["lists"] == before
    finally:
        for name in dropped:
            (images / name).unlink()


# -- the CLI says the same ----------------------------------------------------------------------


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **server.cli_env, "COLUMNS": "200"}
    return subprocess.run([VIRTLAB, *args], capture_output=True, text=True, timeout=120, env=env)


def test_the_cli_shows_the_rule(world: World) -> None:
    before = snapshot(world)
    lab = _cli(world.server, "lab", "create", "../x")
    assert lab.returncode != 0 and LAB.rule in lab.stderr, lab.stderr
    node = _cli(world.server, "node", "create", "r1.", "--image", world.image, "--lab", LAB_NAME)
    assert node.returncode != 0 and NODE.rule in node.stderr, node.stderr
    same = _cli(world.server, "node", "create", "R1", "--image", world.image, "--lab", LAB_NAME)
    assert same.returncode != 0 and "a node named r1" in same.stderr, same.stderr
    assert snapshot(world) == before


def test_a_name_made_under_the_older_rule_is_still_found_started_and_edited() -> None:
    """Before virtlab.names, a node or lab name could end with '.', '-' or '_': such a node
    keeps its name through edits and QEMU still gets it; only new names follow today's rule."""
    from virtlab.nodes.names import validate_existing_name
    from virtlab.services.node_settings import NodeSettings

    assert validate_existing_name("r1.") == "r1."
    with pytest.raises(InvalidRequest, match="a node name is 1 to 63"):
        validate_existing_name("../x")
    old = NodeSettings(name="r1-", image="x.qcow2")
    assert old.checked(new_name=False).name == "r1-"
    with pytest.raises(InvalidRequest, match="invalid node name 'r1-'"):
        old.checked()
