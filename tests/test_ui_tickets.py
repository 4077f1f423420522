"""Console tickets in a real browser: when the server's telnet and VNC ports ask for tickets,
a running node's inspector offers "Telnet ticket" and "VNC ticket"; each fetches one and shows
it with its expiry and the address to use, and the ticket shown lets a telnet client in.

The server runs with ``VIRTLAB_CONSOLE_TICKETS=always`` on 127.0.0.1 (tests listen on loopback
only): the same ports ``auto`` gives a console host beyond loopback. One guest (TCG, the tiny
test disk) runs; every wait is on an event or a condition.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from support.bootdisk import boot_disk
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

if TYPE_CHECKING:
    from support.browser import UI  # imported by pytest_plugins, so that pytest rewrites it

pytest_plugins = ["support.browser"]
pytestmark = pytest.mark.slow

PROMPT = b"virtlab console ticket: "


def _read_until(conn: socket.socket, wanted: bytes) -> bytes:
    """Read until ``wanted`` has come (each read waits up to the socket's timeout)."""
    seen = b""
    while wanted not in seen:
        chunk = conn.recv(4096)
        assert chunk, f"the port closed before {wanted!r}: {seen[-200:]!r}"
        seen += chunk
    return seen


def test_a_running_nodes_inspector_hands_out_telnet_and_vnc_tickets(
    make_server, tmp_path_factory: pytest.TempPathFactory, ui: UI
) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(env={"VIRTLAB_CONSOLE_TICKETS": "always"})
    with server.client(timeout=600) as api:
        raw = boot_disk(tmp_path_factory).read_bytes()
        image = api.put("/api/images/boot.img", content=raw).raise_for_status().json()["name"]
        api.post("/api/labs", json={"name": "tix"}).raise_for_status()
        for name in ("k1", "k2"):
            body = {"name": name, "image": image, "lab": "tix", "ram_mb": 128}
            api.post("/api/nodes", json=body).raise_for_status()
        node = api.post("/api/nodes/tix:k1/start").raise_for_status().json()
    telnet_port = node["consoles"]["serial"]["telnet_port"]
    vnc_port = node["consoles"]["vnc"]["port"]

    page = ui.open(server, "#/labs/tix")
    page.get_by_role("list", name="Nodes").get_by_role("button", name="k1", exact=True).click()
    panel = page.get_by_role("region", name="Console tickets of k1")
    expect(panel).to_contain_text("ask for a ticket")

    with page.expect_response(lambda r: r.url.endswith("/console/ticket")) as answer:
        panel.get_by_role("button", name="Telnet ticket for k1").click()
    assert answer.value.status == 200, answer.value.text()
    shown = panel.get_by_role("status", name="Console ticket of k1")
    expect(shown).to_contain_text(f"telnet 127.0.0.1 {telnet_port}")
    expect(shown).to_contain_text(re.compile(r"works once, within \d+ s \(until "))
    ticket = shown.locator("code.secret").inner_text()
    assert re.fullmatch(r"[A-Za-z0-9]{24}", ticket), ticket
    ui.shot(page, "console-ticket")

    # The ticket shown is the one the port takes (a plain socket: Playwright's sync API owns
    # this thread's event loop).
    with socket.create_connection(("127.0.0.1", telnet_port), timeout=120) as conn:
        _read_until(conn, PROMPT)
        conn.sendall(ticket.encode() + b"\r\n")
        _read_until(conn, BOOT_MARKER.encode())

    panel.get_by_role("button", name="VNC ticket for k1").click()
    expect(shown).to_contain_text(f"127.0.0.1:{vnc_port}")
    expect(shown).to_contain_text("VNC ticket")
    expect(shown.locator("code.secret")).to_have_text(re.compile(r"^[A-Za-z0-9]{8}$"))

    # A stopped node's inspector offers the tickets too, but cannot fetch one yet.
    page.get_by_role("button", name="← All nodes and links").click()
    page.get_by_role("list", name="Nodes").get_by_role("button", name="k2", exact=True).click()
    other = page.get_by_role("region", name="Console tickets of k2")
    expect(other.get_by_role("button", name="Telnet ticket for k2")).to_be_disabled()
    expect(other.get_by_role("button", name="VNC ticket for k2")).to_be_disabled()
