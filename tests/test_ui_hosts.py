"""The Hosts page and nodes on hosts in a real browser, with one real libvirtd host.

One server and one libvirtd "host" (``h1``, plain TCP on 127.0.0.1, see
``tests/support/libvirt_hosts.py``) for the module, in the order a person works: the Hosts page
lists the local host; an admin adds h1 through the form and sees its facts; a URI where nothing
answers shows the API's refusal and adds nothing; drain and undrain show; a user who is not an
admin reads the same table without the actions; a node made in the lab view on h1 shows its
host in the inspector; stopping h1's libvirtd turns that node ``unknown`` on the canvas, in the
inspector and h1 "not answering" on the Hosts page (live, from the events), and starting it
again brings both back. Every wait is on what the page shows, never a fixed sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Locator, Page, expect

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install -e '.[libvirt]'"
)

from support.hosts_server import hosts_server, libvirt_hosts, needs_libvirtd
from support.libvirt_hosts import LibvirtHost, free_port
from support.server import Server

if TYPE_CHECKING:
    from support.browser import UI  # imported by pytest_plugins, so that pytest rewrites it

pytest_plugins = ["support.browser"]
pytestmark = [pytest.mark.slow, needs_libvirtd]

HOST_CHANGE = 60_000  # ms: libvirt's keepalive, then the reconnect back-off (10 s at most)


@pytest.fixture(scope="module")
def h1() -> Iterator[LibvirtHost]:
    with libvirt_hosts("vhu-", "h1") as (host,):
        yield host


@pytest.fixture(scope="module")
def srv(h1: LibvirtHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with the boot disk imported and a lab ``hl``; h1 is added by the first test."""
    with hosts_server(tmp_path_factory) as (server, image):
        with server.client() as api:
            api.post("/api/labs", json={"name": "hl"}).raise_for_status()
        yield server, image


def _row(page: Page, host: str) -> Locator:
    return page.get_by_role("table", name="Hosts").locator(f'tbody tr[data-host="{host}"]')


def test_the_hosts_page_lists_adds_refuses_and_drains(
    srv: tuple[Server, str], h1: LibvirtHost, ui: UI
) -> None:
    server, _ = srv
    page = ui.open(server, "#/hosts")
    expect(page.get_by_role("heading", name="Hosts", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Hosts", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    with server.client() as api:
        local = api.get("/api/hosts/local").json()
    row = _row(page, "local")
    expect(row).to_contain_text("answering")
    expect(row).to_contain_text(local["facts"]["qemu_version"])
    expect(row).to_contain_text("direct QEMU")
    expect(row.get_by_role("button", name="Drain local")).to_be_visible()
    expect(row.get_by_role("button", name="Remove local")).to_have_count(0)

    form = page.get_by_role("form", name="Add a libvirt host")
    form.get_by_label("Host name").fill("h1")
    form.get_by_label("URI").fill(h1.uri)
    form.get_by_role("button", name="Add host").click()
    row = _row(page, "h1")
    expect(row).to_have_attribute("data-reachable", "true")
    with server.client() as api:
        facts = api.get("/api/hosts/h1").json()["facts"]
    assert facts["libvirt_version"] and facts["qemu_version"], facts
    for text in (h1.uri, "answering", facts["libvirt_version"], facts["qemu_version"],
                 ", ".join(facts["accelerators"])):  # fmt: skip
        expect(row).to_contain_text(text)
    expect(row.locator("td.num").nth(1)).to_have_text(str(facts["cpus"]))
    expect(row.locator("td.num").nth(2)).to_have_text("0")  # nodes
    expect(form.get_by_label("Host name")).to_have_value("")  # the form is ready for another

    # Nothing answers there: the API's reason is shown as it came, and nothing is added.
    form.get_by_label("Host name").fill("bad")
    form.get_by_label("URI").fill(f"qemu+tcp://127.0.0.1:{free_port()}/system")
    form.get_by_role("button", name="Add host").click()
    alert = form.get_by_role("alert")
    expect(alert).to_contain_text("cannot add host bad")
    expect(alert).to_contain_text("Check that libvirtd runs there")
    expect(page.get_by_role("table", name="Hosts").locator("tbody tr")).to_have_count(2)
    form.get_by_label("URI").fill("http://example.invalid/")
    form.get_by_role("button", name="Add host").click()
    expect(alert).to_contain_text("invalid host URI")
    with server.client() as api:
        assert [h["name"] for h in api.get("/api/hosts").json()] == ["local", "h1"]

    row.get_by_role("button", name="Drain h1").click()
    expect(row).to_have_attribute("data-drained", "true")
    expect(row.get_by_role("cell", name="drained")).to_be_visible()
    ui.shot(page, "hosts")
    with server.client() as api:
        assert api.get("/api/hosts/h1").json()["drained"]
    row.get_by_role("button", name="Undrain h1").click()
    expect(row).to_have_attribute("data-drained", "false")
    expect(row.get_by_role("button", name="Drain h1")).to_be_visible()

    with page.expect_response(lambda r: r.url.endswith("/api/hosts/h1")) as shown:
        page.get_by_role("button", name="Read facts again").click()
    assert shown.value.status == 200, shown.value.text()
    expect(page.get_by_role("button", name="Read facts again")).to_be_enabled()
    expect(row).to_contain_text(facts["libvirt_version"])


def test_a_user_who_is_not_an_admin_reads_the_hosts_without_actions(
    srv: tuple[Server, str], ui: UI
) -> None:
    server, _ = srv
    with server.client() as api:
        made = api.post("/api/users", json={"name": "viewer"}).json()
    page = ui.open(server, "#/hosts")
    page.locator("#logout").click()
    ui.log_in(page, "viewer", made["password"])
    page.goto(f"{server.url}/#/hosts")
    expect(_row(page, "h1")).to_contain_text("answering")
    expect(_row(page, "local")).to_be_visible()
    expect(page.get_by_text("Adding, draining and removing hosts is for admins.")).to_be_visible()
    expect(page.get_by_role("form", name="Add a libvirt host")).to_have_count(0)
    expect(page.get_by_role("button", name="Drain h1")).to_have_count(0)
    expect(page.get_by_role("columnheader", name="Actions")).to_have_count(0)
    page.locator("#logout").click()
    ui.log_in(page, "admin", str(server.admin_password))  # the module's browser goes on as admin


def test_a_node_on_the_libvirt_host_shows_its_host_and_goes_unknown_while_it_is_down(
    srv: tuple[Server, str], h1: LibvirtHost, ui: UI
) -> None:
    server, image = srv
    page = ui.open(server, "#/labs/hl")
    page.get_by_role("button", name=f"Add node from {image}").click()
    dialog = page.get_by_role("dialog", name=f"Add a node from {image}")
    dialog.get_by_label("Name").fill("n1")
    dialog.get_by_label("RAM (MB)").fill("128")
    dialog.get_by_label("NICs").fill("1")
    host = dialog.get_by_label("Host")
    expect(host.locator("option")).to_have_text(
        ["Automatic placement", "local (0 nodes)", "h1 (0 nodes)"]
    )
    host.select_option("h1")
    dialog.get_by_label("Start it once created").check()
    dialog.get_by_role("button", name="Add node").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Node n1, running")).to_be_attached(timeout=120_000)
    page.get_by_role("list", name="Nodes").get_by_role("button", name="n1", exact=True).click()
    inspector = page.get_by_role("complementary", name="Details")
    expect(inspector.locator("dd.node-host")).to_have_text("h1")
    with server.client() as api:
        node = next(n for n in api.get("/api/nodes").json() if n["name"] == "n1")
    assert node["host"] == "h1" and node["state"] == "running", node
    assert h1.qemu_pids(), "it runs under h1's libvirtd"

    hosts = ui.open(server, "#/hosts")  # a second tab, kept current by the events
    expect(_row(hosts, "h1").locator("td.num").nth(2)).to_have_text("1")

    h1.stop_daemon()  # its QEMU runs on; virtlab no longer knows what it does
    unknown = page.get_by_role("button", name="Node n1, unknown, host h1 not answering")
    expect(unknown).to_be_attached(timeout=HOST_CHANGE)
    note = inspector.get_by_role("status", name="Host of n1 not answering")
    expect(note).to_contain_text("Host h1 is not answering")
    expect(inspector.get_by_role("button", name="Stop n1")).to_be_disabled()
    expect(inspector.locator(".state-unknown")).to_have_text("unknown")
    row = _row(hosts, "h1")
    expect(row).to_have_attribute("data-reachable", "false", timeout=HOST_CHANGE)
    expect(row.locator("td.reach")).to_contain_text("not answering")
    expect(row.locator("td.reach .reason")).not_to_be_empty()
    ui.shot(page, "node-unknown")
    ui.shot(hosts, "hosts-not-answering")

    # A host that does not answer is offered for new nodes, but cannot be picked.
    page.get_by_role("button", name=f"Add node from {image}").click()
    dialog = page.get_by_role("dialog", name=f"Add a node from {image}")
    expect(dialog.get_by_role("option", name="h1 (not answering)")).to_be_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    # A host with a node cannot be removed: the API's 409 is shown as it came.
    row.get_by_role("button", name="Remove h1").click()
    hosts.get_by_role("dialog", name="Remove host h1?").get_by_role(
        "button", name="Remove host"
    ).click()
    expect(hosts.get_by_role("alert").filter(has_text="Cannot remove h1")).to_contain_text(
        "host h1 has 1 node(s): n1"
    )

    h1.start_daemon()
    expect(page.get_by_role("button", name="Node n1, running")).to_be_attached(timeout=HOST_CHANGE)
    expect(note).to_have_count(0)
    expect(row).to_have_attribute("data-reachable", "true", timeout=HOST_CHANGE)
    expect(row.locator("td.reach")).to_have_text("answering")

    inspector.get_by_role("button", name="Kill n1").click()
    expect(page.get_by_role("button", name="Node n1, stopped")).to_be_attached(timeout=HOST_CHANGE)
    inspector.get_by_role("button", name="Delete n1").click()
    page.get_by_role("dialog", name="Delete node n1?").get_by_role(
        "button", name="Delete node"
    ).click()
    expect(_row(hosts, "h1").locator("td.num").nth(2)).to_have_text("0")
    _row(hosts, "h1").get_by_role("button", name="Remove h1").click()
    hosts.get_by_role("dialog", name="Remove host h1?").get_by_role(
        "button", name="Remove host"
    ).click()
    expect(_row(hosts, "h1")).to_have_count(0)
    with server.client() as api:
        assert [h["name"] for h in api.get("/api/hosts").json()] == ["local"]
