"""The REST API fuzzed with schemathesis, over real HTTP against a running server.

Every operation of the server's ``/openapi.json`` gets :data:`EXAMPLES` generated requests, sent
as the admin: valid ones and invalid ones (bodies, query and path parameters that break their
schema), about half of those with a path parameter pointed at a real node, lab, link, image or
user (:func:`_seed` makes them, again whenever a case deleted or renamed one), so that the
routes are driven past their 404s. Each answer is checked:

- ``not_a_server_error``: no 5xx, whatever the input;
- ``response_schema_conformance``: the body matches the schema the operation declares for that
  status (an error's ``{"detail": ...}`` included);
- ``status_code_conformance``: the status is one the operation declares;
- ``content_type_conformance``: the media type is one the operation declares.

The run is reproducible (hypothesis ``derandomize``, no example database) and bounded. Each
operation is one subtest. schemathesis' own pytest plugin (``from_fixture``) is not used: it
fails under pytest 9.2 (it sets ``Function._nodeid``); the loop here draws schemathesis' cases
for each operation with hypothesis directly, in its positive and negative modes (not its
"coverage" phase of boundary values).

Not fuzzed, each for its reason in :data:`EXCLUDED`: operations that would start QEMU guests or
take minutes (node and lab start, boot tests, taking and resuming checkpoints, which save or
load running guests), and adding a libvirt host (it connects to whatever the URI names). A
deploy (``POST /api/labs``) and a node's creation (``POST /api/nodes``) are fuzzed with
``start`` forced to false.
WebSockets (consoles, events) are not in the OpenAPI. Uploads get the small bodies hypothesis
makes; huge bodies are the upload limits' own tests. ``POST /api/logout`` revokes the token it
comes with, so each of its cases gets a token of its own; the fuzzer's own token cannot be
revoked by a case (a token id is 16 random hex digits), and the admin's name is not among the
users the fuzzer may edit or remove (those are random names, or :data:`USER`).
Not checked here: answers to requests without a login or from a plain user (the fuzzer is
the admin); tests/test_auth_api.py walks every route for those.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.server import Server

EXAMPLES = 25

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]

# A lab archive (POST /api/labs/import) is sent as bytes, like any binary body.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")

# Operations not fuzzed, by schemathesis label: why.
EXCLUDED: dict[str, str] = {
    "POST /api/nodes/{ref}/start": "starts a QEMU guest",
    "POST /api/labs/{name}/start": "starts every node of a lab: QEMU guests in bulk",
    "POST /api/images/{name}/boot-test": "boots an image in QEMU for up to minutes",
    "POST /api/nodes/{ref}/checkpoints": "saves a running guest's memory and disk",
    "POST /api/nodes/{ref}/checkpoints/{tag}/resume": "starts a guest from a checkpoint",
    "POST /api/labs/{name}/checkpoints": "saves every running guest of a lab",
    "POST /api/labs/{name}/checkpoints/{tag}/resume": "starts a lab's guests from a checkpoint",
    "POST /api/hosts": "connects to the libvirt host a URI names (name lookups, ssh, up to "
    "30 s each); tests/test_hosts_server.py adds hosts, refusals included",
}


# Path parameters that a case may be pointed at instead of a random value, so that operations
# on a node, lab, link, image or user meet a real one and not only 404s.
LAB, NODES, USER = "fuzz", ("n1", "n2"), "fuzzuser"
# Not pointed at the real link: a live capture stream runs until the client goes away.
NOT_SEEDED = {"GET /api/links/{link_id}/capture/stream"}


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(server.url + "/openapi.json", headers=server.headers)


def _seed(server: Server) -> dict[str, dict[str, str]]:
    """Make the known objects (again, if a case removed or renamed them); their names by the
    prefix of the paths that take them."""
    with server.client() as client:
        images = [i["name"] for i in client.get("/api/images").json()]
        image = next((n for n in images if n.startswith("fuzzseed")), None)
        if image is None:
            made = client.put("/api/images/fuzzseed.img", content=bytes(1 << 20))
            image = made.raise_for_status().json()["name"]
        # The lab's detail has its nodes and links: one request, not one for each.
        lab = client.get(f"/api/labs/{LAB}")
        if lab.status_code == 404:
            client.post("/api/labs", json={"name": LAB}).raise_for_status()
            lab = client.get(f"/api/labs/{LAB}")
        detail = lab.raise_for_status().json()
        names = {n["name"].casefold() for n in detail["node_list"]}
        for node in NODES:
            if node not in names:
                body = {"name": node, "image": image, "lab": LAB, "nics": 2}
                client.post("/api/nodes", json=body).raise_for_status()
        links = detail["link_list"]
        if not links:
            body = {"lab": LAB, "a": f"{NODES[0]}:eth1", "b": f"{NODES[1]}:eth1"}
            links = [client.post("/api/links", json=body).raise_for_status().json()]
        if USER not in {u["name"] for u in client.get("/api/users").json()}:
            client.post("/api/users", json={"name": USER}).raise_for_status()
    return {
        "/api/nodes/": {"ref": f"{LAB}:{NODES[0]}"},
        "/api/labs/": {"name": LAB},
        "/api/links/": {"link_id": links[0]["id"]},
        "/api/images/": {"name": image},
        "/api/users/": {"name": USER},
    }


def _own_token(server: Server) -> str:
    """A token of the admin's, for a case that may revoke it."""
    with server.client() as client:
        reply = client.post("/api/tokens", json={"label": "fuzz: logout"})
        reply.raise_for_status()
        return reply.json()["value"]


def _send(case: schemathesis.Case, server: Server) -> None:
    headers = dict(server.headers)
    if case.operation.label == "POST /api/logout":
        headers["Authorization"] = f"Bearer {_own_token(server)}"
    if case.operation.label == "POST /api/labs":
        # A deploy starts its nodes unless told not to: never here.
        if isinstance(case.body, dict):
            case.body["start"] = False
        case.query = {**(case.query or {}), "start": "false"}
    if case.operation.label == "POST /api/nodes" and isinstance(case.body, dict):
        case.body["start"] = False  # a node created started is a QEMU guest
    case.call_and_validate(base_url=server.url, headers=headers, checks=CHECKS, timeout=60)


def _fuzz(operation: APIOperation, server: Server) -> None:
    known = {}
    if operation.label not in NOT_SEEDED:
        seeded = _seed(server)
        known = next((v for k, v in seeded.items() if operation.path.startswith(k)), {})

    def at_known(case: schemathesis.Case) -> schemathesis.Case:
        for key in set(known) & set(case.path_parameters or {}):
            case.path_parameters[key] = known[key]
        return case

    drawn = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    cases = st.one_of(drawn, drawn.map(at_known)) if known else drawn

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: schemathesis.Case) -> None:
        _send(case, server)

    run()


def test_api_fuzz(
    api_schema: schemathesis.BaseSchema, server: Server, subtests: pytest.Subtests
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert set(EXCLUDED) | NOT_SEEDED <= labels, "an operation named here no longer exists"
    for operation in operations:
        if operation.label in EXCLUDED:
            continue
        with subtests.test(operation.label):
            _fuzz(operation, server)
