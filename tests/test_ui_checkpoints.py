"""Lab checkpoints in a real browser: take, resume, refuse and delete them from the lab's page.

A lab of two linked nodes of the tiny boot disk runs; a shell variable is set on a serial
console typed into in the browser. The page takes a checkpoint (its progress shows from the
events while it saves, then the entry with its size), the nodes are killed through the API,
the page resumes the lab, and the console answers with the variable still set. The server's
refusals show as written: a resume while the nodes run (force offered, and used), a resume of
a checkpoint that another client deleted meanwhile (no force offered). A node's own checkpoint
is taken and deleted from its inspector; another client's checkpoint appears without a reload;
the lab's checkpoint is deleted from the page. Every wait is on an event or a condition.
"""

from __future__ import annotations

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
SAVE = 120_000  # ms: a checkpoint of two 128 MiB guests, written on a busy disk

# Record every text the lab's "saves in flight" area takes while a checkpoint is saved.
WATCH_SAVES = """(label) => {
    const el = document.querySelector(`[aria-label="${label}"]`);
    window.__saves = [];
    new MutationObserver(() => window.__saves.push(el.textContent))
        .observe(el, { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture
def api(booted_server: tuple[Server, str]) -> Iterator[httpx.Client]:
    with booted_server[0].client(timeout=600) as client:
        yield client


def _node_hit(page: Page, name: str) -> Locator:
    return page.locator(f'.node-hit[data-node="{name}"]')


def _states(page: Page, state: str, timeout: float = BOOT) -> None:
    for name in ("a", "b"):
        expect(_node_hit(page, name)).to_have_attribute("data-state", state, timeout=timeout)


def _select_node(page: Page, name: str) -> None:
    page.get_by_role("list", name="Nodes").get_by_role("button", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(rf"^Node {name}\b"))).to_be_visible()


def _serial(page: Page, node: str) -> Locator:
    """Open ``node``'s serial console from the lab page; its rows, once the shell is there."""
    _select_node(page, node)
    page.get_by_role("button", name=f"Serial console of {node}").click()
    expect(page).to_have_url(re.compile(r"#/consoles$"))
    serial = page.get_by_role("tabpanel", name=f"{node} serial console")
    expect(serial.get_by_role("status")).to_have_text("Connected")
    serial.locator(".xterm-screen").click()
    return serial.locator(".xterm-rows")


def _type(page: Page, line: str) -> None:
    page.keyboard.type(line)
    page.keyboard.press("Enter")


def test_checkpoints_taken_resumed_and_deleted_from_the_lab_page(
    booted_server: tuple[Server, str], ui: UI, api: httpx.Client
) -> None:
    server, image = booted_server
    topology = (
        f"name: cp\ntopology:\n  defaults: {{image: {image}, ram_mb: 128, nics: 1}}\n"
        '  nodes: {a: {}, b: {}}\n  links:\n    - endpoints: ["a:eth0", "b:eth0"]\n'
    )
    made = api.post("/api/labs", json={"topology": topology, "start": True})
    assert made.status_code == 201, made.text
    page = ui.open(server, "#/labs/cp")
    expect(page.locator("#live")).to_have_text("Live")
    _states(page, "running")
    panel = page.get_by_role("region", name="Checkpoints of lab cp")
    expect(panel).to_contain_text("No checkpoints yet")

    # A shell variable, set on a's serial console.
    rows = _serial(page, "a")
    expect(rows).to_contain_text(BOOT_MARKER, timeout=BOOT)
    _type(page, "CPV=$((40+2)); echo CP$((CPV+1))Z")
    expect(rows).to_contain_text("CP43Z")
    page.get_by_role("button", name="Close serial console of a").click()
    page.go_back()
    _states(page, "running")

    # Take a checkpoint of the lab: the save's progress shows, then the entry with its size.
    page.evaluate(WATCH_SAVES, "Checkpoint saves of lab cp")
    panel.get_by_role("button", name="Take checkpoint of lab cp").click()
    dialog = page.get_by_role("dialog", name="Take a checkpoint of lab cp")
    dialog.get_by_label("Tag").fill("configured")
    dialog.get_by_role("button", name="Take checkpoint").click()
    expect(dialog).to_be_hidden(timeout=SAVE)
    entry = panel.locator('li[data-tag="configured"]')
    expect(entry).to_have_attribute("data-state", "ready", timeout=SAVE)
    expect(panel.get_by_role("status")).to_have_text(re.compile(r"^Saved configured: \d"))
    (saved,) = api.get("/api/labs/cp/checkpoints").json()
    assert saved["vm_state_size"] > 1 << 20, saved
    expect(entry).to_contain_text(re.compile(r"\d+(\.\d+)? MiB · nodes a, b · saved in \d"))
    seen = page.evaluate("window.__saves")
    assert any(s.startswith("Saving configured") for s in seen), seen
    assert any("2 of 2 nodes saved" in s for s in seen), seen

    # Kill the nodes through the API; resume the lab from the page.
    page.evaluate("window.__sameDocument = true")
    for name in ("a", "b"):
        assert api.post(f"/api/nodes/cp:{name}/kill").json()["state"] == "stopped"
    _states(page, "stopped")
    panel.get_by_role("button", name="Resume lab cp from configured").click()
    confirm = page.get_by_role("dialog", name="Resume lab cp from configured?")
    expect(confirm).to_contain_text("a, b start from the saved state")
    confirm.get_by_role("button", name="Resume").click()
    expect(panel.get_by_role("status")).to_have_text("Resumed from configured", timeout=BOOT)
    _states(page, "running", timeout=15_000)  # no boot: running at once

    # The console answers at once, the variable still set.
    rows = _serial(page, "a")
    expect(rows).to_contain_text("CP43Z")  # the scrollback as it was
    _type(page, "echo CP$((CPV*2))Y")
    expect(rows).to_contain_text("CP84Y")
    page.get_by_role("button", name="Close serial console of a").click()
    page.go_back()

    # A resume while the nodes run: the server's refusal as written, and force offered.
    refusal = api.post("/api/labs/cp/checkpoints/configured/resume")
    assert refusal.status_code == 409, refusal.text
    reason = refusal.json()["detail"]
    panel.get_by_role("button", name="Resume lab cp from configured").click()
    page.get_by_role("dialog", name="Resume lab cp from configured?").get_by_role(
        "button", name="Resume"
    ).click()
    forced = page.get_by_role("dialog", name="Resume lab cp from configured by force?")
    expect(forced.locator(".reason")).to_have_text(reason)
    expect(page.locator("section.checkpoints .checkpoint-refusal").first).to_have_text(reason)
    forced.get_by_role("button", name="Force resume").click()
    expect(panel.get_by_role("status")).to_have_text("Resumed from configured", timeout=BOOT)
    expect(panel.locator(".checkpoint-refusal")).to_be_empty()
    _states(page, "running", timeout=15_000)

    # A node's own checkpoint, from its inspector: taken, listed beside its part of the lab's,
    # deleted.
    _select_node(page, "a")
    mine = page.get_by_role("region", name="Checkpoints of a")
    expect(mine.locator('li[data-tag="configured"]')).to_contain_text("part of the lab's")
    mine.get_by_role("button", name="Take checkpoint of a").click()
    dialog = page.get_by_role("dialog", name="Take a checkpoint of a")
    dialog.get_by_label("Tag").fill("configured")  # taken: refused in the dialog, as written
    dialog.get_by_role("button", name="Take checkpoint").click()
    taken = api.post("/api/nodes/cp:a/checkpoints", json={"tag": "configured"})
    assert taken.status_code == 409, taken.text
    expect(dialog.get_by_role("alert")).to_have_text(taken.json()["detail"])
    dialog.get_by_label("Tag").fill("solo")
    dialog.get_by_role("button", name="Take checkpoint").click()
    expect(dialog).to_be_hidden(timeout=SAVE)
    solo = mine.locator('li[data-tag="solo"]')
    expect(solo).to_have_attribute("data-state", "ready", timeout=SAVE)
    expect(solo).to_contain_text(re.compile(r"\d+(\.\d+)? MiB · saved in"))
    mine.get_by_role("button", name="Delete checkpoint solo of a").click()
    page.get_by_role("dialog", name="Delete checkpoint solo of a?").get_by_role(
        "button", name="Delete checkpoint"
    ).click()
    expect(solo).to_have_count(0)
    assert [c["tag"] for c in api.get("/api/nodes/cp:a/checkpoints").json()] == ["configured"]
    page.get_by_role("button", name="← All nodes and links").click()

    # Another client's checkpoint appears without a reload.
    assert api.post("/api/labs/cp/checkpoints", json={"tag": "second"}).status_code == 201
    second = panel.locator('li[data-tag="second"]')
    expect(second).to_have_attribute("data-state", "ready")
    panel.scroll_into_view_if_needed()
    ui.shot(page, "checkpoints")

    # Resume a checkpoint that another client deletes meanwhile: its reason, and no force.
    panel.get_by_role("button", name="Resume lab cp from second").click()
    confirm = page.get_by_role("dialog", name="Resume lab cp from second?")
    assert api.delete("/api/labs/cp/checkpoints/second").status_code == 204
    behind = page.locator('section.checkpoints li[data-tag="second"]')
    expect(behind).to_have_count(0)  # gone from the list behind the dialog
    confirm.get_by_role("button", name="Resume").click()
    missing = api.post("/api/labs/cp/checkpoints/second/resume")
    assert missing.status_code == 404, missing.text
    expect(panel.get_by_role("alert")).to_have_text(missing.json()["detail"])
    expect(page.get_by_role("dialog")).to_have_count(0)

    # Delete the lab's checkpoint from the page.
    panel.get_by_role("button", name="Delete checkpoint configured of lab cp").click()
    page.get_by_role("dialog", name="Delete checkpoint configured of lab cp?").get_by_role(
        "button", name="Delete checkpoint"
    ).click()
    expect(entry).to_have_count(0)
    expect(panel.get_by_role("status")).to_have_text("Deleted configured")
    expect(panel).to_contain_text("No checkpoints yet")
    assert api.get("/api/labs/cp/checkpoints").json() == []
    assert page.evaluate("window.__sameDocument") is True
