"""A lab built and run in a real browser: canvas, links, live states, consoles.

One scenario, in the order a person works: create a lab, put two nodes of the bootable test
disk on the canvas (one dragged from the palette, one added by a click), move a node by mouse
and by keyboard and find it where it was left after a reload, draw a link between two
interfaces, start the lab, capture and impair the link, open the serial console (the boot
marker shows, a typed command answers) and the VNC console (the canvas is not blank), and see a
state change made through the API without reloading. Every wait is on an event or a condition,
never a fixed sleep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

if TYPE_CHECKING:
    from support.browser import UI  # imported by pytest_plugins, so that pytest rewrites it

pytest_plugins = ["support.browser"]
pytestmark = pytest.mark.slow

BOOT = 120_000  # ms: two guests booting under TCG on a busy machine
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"}

# Is the VNC canvas showing something: several colours, and more than a few lit pixels?
CANVAS_NOT_BLANK = """(selector) => {
    const canvas = document.querySelector(selector);
    if (!canvas || canvas.width < 100 || canvas.height < 100) return false;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) {
        const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
        colours.add(rgb);
        if (rgb !== 0) lit += 1;
    }
    return colours.size >= 2 && lit >= 200;
}"""


def _centre(locator: Locator) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None, locator
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _node_hit(page: Page, name: str) -> Locator:
    """The node's button over the canvas (accessible name ``Node NAME, STATE``)."""
    return page.locator(f'.node-hit[data-node="{name}"]')


def _is_patch(response) -> bool:  # type: ignore[no-untyped-def]
    return response.request.method == "PATCH" and "/api/nodes/" in response.url


def _add_node(page: Page, image: str, name: str) -> None:
    dialog = page.get_by_role("dialog", name=f"Add a node from {image}")
    dialog.get_by_label("Name").fill(name)
    dialog.get_by_label("RAM (MB)").fill("128")
    dialog.get_by_label("NICs").fill("2")
    dialog.get_by_role("button", name="Add node").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name=f"Node {name}, stopped")).to_be_attached()


def _select_node(page: Page, name: str) -> None:
    back = page.get_by_role("button", name="← All nodes and links")
    if back.count():
        back.click()
    page.get_by_role("list", name="Nodes").get_by_role("button", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(rf"^Node {name}\b"))).to_be_visible()


def _direction(page: Page) -> float:
    (x1, y1), (x2, y2) = _centre(_node_hit(page, "r1")), _centre(_node_hit(page, "r2"))
    return math.atan2(y2 - y1, x2 - x1)


@pytest.fixture
def api(booted_server: tuple[Server, str]) -> Iterator[httpx.Client]:
    with booted_server[0].client() as client:
        yield client


def test_lab_on_the_canvas_with_consoles_and_live_states(
    booted_server: tuple[Server, str], ui: UI, api: httpx.Client
) -> None:
    server, image = booted_server
    page = ui.open(server, "#/labs")
    expect(page.locator("#live")).to_have_text("Live")

    # A new lab.
    page.get_by_label("Lab name").fill("ui1")
    page.get_by_role("button", name="Create lab").click()
    expect(page).to_have_url(re.compile(r"#/labs/ui1$"))
    expect(page.get_by_role("heading", name="ui1", level=1)).to_be_visible()
    canvas = page.get_by_role("region", name="Topology canvas")

    # r1 dragged from the palette onto the canvas, r2 added by a click on the palette.
    palette_item = page.get_by_role("button", name=f"Add node from {image}")
    palette_item.drag_to(canvas, target_position={"x": 220, "y": 200})
    _add_node(page, image, "r1")
    box = canvas.bounding_box()
    assert box is not None
    x, y = _centre(_node_hit(page, "r1"))  # where it was dropped (a new lab's view: zoom 1)
    assert abs(x - box["x"] - 220) <= 2 and abs(y - box["y"] - 200) <= 2, (x, y, box)
    palette_item.click()
    _add_node(page, image, "r2")
    r1, r2 = (api.get(f"/api/nodes/ui1:{n}").json() for n in ("r1", "r2"))
    assert r1["position"] and r2["position"] and r1["position"] != r2["position"]

    # Drag r2 with the mouse: the new position is saved through the API.
    x, y = _centre(_node_hit(page, "r2"))
    with page.expect_response(_is_patch) as saved:
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 160, y + 80, steps=8)
        page.mouse.up()
    assert saved.value.ok
    moved = api.get("/api/nodes/ui1:r2").json()["position"]
    dx, dy = moved["x"] - r2["position"]["x"], moved["y"] - r2["position"]["y"]
    assert dx > 0 and dy > 0 and abs(dx / dy - 2) < 0.2, (r2["position"], moved)

    # And r1 with the keyboard: focus its button, press the right arrow.
    before = api.get("/api/nodes/ui1:r1").json()["position"]
    with page.expect_response(_is_patch):
        _node_hit(page, "r1").focus()
        page.keyboard.press("ArrowRight")
    after = api.get("/api/nodes/ui1:r1").json()["position"]
    assert (after["x"] - before["x"], after["y"]) == (10, before["y"])

    # After a reload, the nodes are where they were left.
    direction = _direction(page)
    page.reload()
    expect(_node_hit(page, "r2")).to_have_attribute("data-state", "stopped")
    assert abs(_direction(page) - direction) < 0.05
    assert api.get("/api/nodes/ui1:r2").json()["position"] == moved

    # Draw a link: pick r1, then r2, on the canvas; choose the interfaces.
    page.get_by_role("button", name="Draw link").click()
    expect(page.get_by_role("button", name="Draw link")).to_have_attribute("aria-pressed", "true")
    page.mouse.click(*_centre(_node_hit(page, "r1")))
    expect(canvas.get_by_role("status")).to_contain_text("Link from r1")
    page.mouse.click(*_centre(_node_hit(page, "r2")))
    dialog = page.get_by_role("dialog", name="Add a link")
    dialog.get_by_label("From interface").select_option("eth1")
    dialog.get_by_label("To interface").select_option("eth1")
    dialog.get_by_role("button", name="Add link").click()
    links = page.get_by_role("list", name="Links")
    expect(links).to_contain_text("r1:eth1 ⟷ r2:eth1")
    ui.shot(page, "lab-canvas")

    # Start the lab: the states turn to running as the events come.
    page.get_by_role("button", name="Start lab").click()
    for name in ("r1", "r2"):
        expect(_node_hit(page, name)).to_have_attribute("data-state", "running", timeout=BOOT)
        expect(page.locator(f'li[data-node="{name}"]')).to_contain_text("running")

    # The link: capture, impairment, pcap download.
    links.get_by_role("button", name="r1:eth1 ⟷ r2:eth1").click()
    expect(page.get_by_role("heading", name="Link r1:eth1 ⟷ r2:eth1")).to_be_visible()
    page.get_by_role("button", name="Start capture").click()
    expect(page.get_by_role("button", name="Stop capture")).to_be_visible()
    ahead = page.get_by_role("group", name="r1:eth1 → r2:eth1")
    ahead.get_by_label("Delay (ms)").fill("5")
    ahead.get_by_label("Loss (%)").fill("1")
    page.get_by_role("button", name="Apply impairment").click()
    expect(page.get_by_role("form", name="Impairment").get_by_role("status")).to_have_text(
        "Impairment: done"
    )
    (link,) = api.get("/api/links", params={"lab": "ui1"}).json()
    assert link["capturing"] and link["impairment"]["a_to_b"]["delay_ms"] == 5
    assert link["impairment"]["a_to_b"]["loss_pct"] == 1
    with page.expect_download() as download:
        page.get_by_role("link", name="Download pcap").click()
    pcap = download.value.path().read_bytes()
    assert pcap[:4] in PCAP_MAGICS, pcap[:16]
    # For the picture only. The inspector is drawn again on every link event (capture bytes),
    # which can detach the heading in the middle of a Playwright scroll: scroll in the page.
    heading = page.get_by_role("heading", name="Link r1:eth1 ⟷ r2:eth1")
    expect(heading).to_be_visible()
    heading.evaluate("element => element.scrollIntoView({block: 'nearest'})")
    ui.shot(page, "lab-link")
    page.get_by_role("button", name="Stop capture").click()
    expect(page.get_by_role("button", name="Start capture")).to_be_visible()

    # The node's screenshot as a thumbnail.
    _select_node(page, "r1")
    expect(page.get_by_role("img", name="Screen of r1")).to_be_visible(timeout=60_000)
    ui.shot(page, "lab-running")

    # The serial console: the boot marker, and a typed command's answer.
    page.get_by_role("button", name="Serial console of r1").click()
    expect(page).to_have_url(re.compile(r"#/consoles$"))
    serial = page.get_by_role("tabpanel", name="r1 serial console")
    rows = serial.locator(".xterm-rows")
    expect(rows).to_contain_text(BOOT_MARKER, timeout=BOOT)
    expect(serial.get_by_role("status")).to_have_text("Connected")
    serial.locator(".xterm-screen").click()
    page.keyboard.type("echo VL$((6*7))X")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("VL42X")
    ui.shot(page, "console-serial")

    # The same console in a window of its own: another client of the same serial line.
    with page.expect_popup() as popup:
        serial.get_by_role("button", name="Open in new window").click()
    window = ui.watch(popup.value, server)
    expect(window.get_by_role("heading", name="ui1:r1 serial")).to_be_visible()
    expect(window.locator(".xterm-rows")).to_contain_text("VL42X")
    window.close()

    # The VNC console, in a second tab: its canvas shows the guest's screen.
    page.go_back()
    _select_node(page, "r1")
    page.get_by_role("button", name="VNC console of r1").click()
    vnc = page.get_by_role("tabpanel", name="r1 VNC console")
    expect(vnc.get_by_role("status")).to_have_text("Connected")
    page.wait_for_function(
        CANVAS_NOT_BLANK, arg='[data-console$="/vnc"] canvas', timeout=BOOT, polling=250
    )
    expect(page.get_by_role("tab")).to_have_count(2)
    ui.shot(page, "console-vnc")

    # Both stay open: back on the serial tab, the shell still answers.
    page.get_by_role("tab", name="r1 serial console").click()
    expect(serial).to_be_visible()
    serial.locator(".xterm-screen").click()
    page.keyboard.type("echo VL$((6*9))Y")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("VL54Y")

    # A change made through the API shows on the lab's page without a reload.
    page.go_back()
    expect(_node_hit(page, "r2")).to_have_attribute("data-state", "running")
    page.evaluate("window.__sameDocument = true")
    assert api.post("/api/nodes/ui1:r2/kill").json()["state"] == "stopped"
    expect(_node_hit(page, "r2")).to_have_attribute("data-state", "stopped")
    expect(page.locator('li[data-node="r2"]')).to_contain_text("stopped")
    expect(page.get_by_role("status").filter(has_text="nodes,")).to_have_text(
        "2 nodes, 1 running, 1 link"
    )
    assert page.evaluate("window.__sameDocument") is True

    # Wipe the lab: its stopped node gets a fresh disk.
    page.get_by_role("button", name="Wipe lab").click()
    page.get_by_role("dialog", name="Wipe lab ui1?").get_by_role("button", name="Wipe").click()
    expect(page.locator("#toasts")).to_contain_text("Wiped 1 node(s)")

    # An image in use cannot be deleted: the page says why, in the server's words.
    refusal = api.delete(f"/api/images/{image}")
    assert refusal.status_code == 409
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Images").click()
    page.get_by_role("button", name=f"Delete {image}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete image").click()
    expect(page.locator(".alerts .reason")).to_have_text(refusal.json()["detail"])

    # The labs list, with the counts; then the whole lab stopped from its page.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Labs").click()
    row = page.locator('tr[data-lab="ui1"]')
    expect(row).to_contain_text("2")
    ui.shot(page, "labs")
    row.get_by_role("link", name="ui1").click()
    page.get_by_role("button", name="Stop lab").click()
    expect(_node_hit(page, "r1")).to_have_attribute("data-state", "stopped", timeout=BOOT)


def test_lab_page_fits_laptop_and_large_screens(
    booted_server: tuple[Server, str], ui: UI, api: httpx.Client
) -> None:
    server, _ = booted_server
    assert api.post("/api/labs", json={"name": "sizes"}).status_code == 201
    for width, height in ((1280, 720), (1920, 1080)):
        page = ui.open(server, "#/labs/sizes", viewport={"width": width, "height": height})
        expect(page.get_by_role("region", name="Topology canvas")).to_be_visible()
        for control in ("Start lab", "Draw link", "Destroy lab"):
            expect(page.get_by_role("button", name=control)).to_be_in_viewport()
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        box = page.get_by_role("region", name="Topology canvas").bounding_box()
        assert box is not None and box["width"] > width * 0.4 and box["height"] > 400
        page.close()
