"""The Images page in a real browser: upload, progress, the catalog, boot test, refusals.

The bootable test disk goes up as a VMDK through the page's file picker and comes back listed
as qcow2; a hostile image (a qcow2 whose backing file is outside the upload) is dropped on the
drop zone and the page shows the server's reason, word for word.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from support.bootdisk import boot_disk
from support.formats import make_qcow2_backing
from support.qimg import convert
from support.server import Server
from virtlab.devtools.bootdisk import BOOT_MARKER

if TYPE_CHECKING:
    from support.browser import UI  # imported by pytest_plugins, so that pytest rewrites it

pytest_plugins = ["support.browser"]
pytestmark = pytest.mark.slow


def _drop_file(page: Page, target: str, path: Path) -> None:
    """Drop ``path`` on ``target`` as a file dragged from the desktop would be."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.locator(target).evaluate(
        """(zone, [name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name));
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                         dataTransfer: transfer }));
            }
        }""",
        [path.name, data],
    )


def test_upload_vmdk_listed_as_qcow2_then_boot_test(
    server: Server, ui: UI, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    vmdk = convert(
        boot_disk(tmp_path_factory), tmp_path / "router.vmdk", "vmdk", "subformat=streamOptimized"
    )
    page = ui.open(server, "#/images")
    expect(page.get_by_role("heading", name="Images", level=1)).to_be_visible()
    expect(page.locator("#live")).to_have_text("Live")

    page.get_by_label("Choose image files to upload").set_input_files(vmdk)
    row = page.locator(".upload-row", has_text="router.vmdk")
    expect(row.locator(".outcome")).to_contain_text("Imported as router_", timeout=120_000)
    expect(row.locator(".outcome")).to_contain_text("qcow2, from vmdk")
    expect(row.get_by_label("Upload of router.vmdk")).to_have_js_property("value", 100)
    expect(row.get_by_label("Import of router.vmdk")).to_have_js_property("value", 100)
    expect(row.locator(".stages li.done")).to_have_count(7)  # upload … register, each done

    with server.client() as api:
        (image,) = api.get("/api/images").json()
    assert (image["format"], image["source_format"]) == ("qcow2", "vmdk")
    listed = page.locator(f'tr[data-image="{image["name"]}"]')
    expect(listed).to_contain_text("qcow2")
    expect(listed).to_contain_text("vmdk streamOptimized")
    expect(listed.locator("code.sha")).to_have_attribute("title", image["sha256"])
    ui.shot(page, "images")

    # Verify the catalog: every image sound.
    page.get_by_role("button", name="Verify catalog").click()
    expect(page.get_by_role("region", name="Verification result")).to_contain_text(
        "Catalog verified", timeout=60_000
    )

    # Boot test: the serial console shows the marker, and the page shows the screenshot.
    page.get_by_role("button", name=f"Boot test {image['name']}").click()
    dialog = page.get_by_role("dialog", name=f"Boot test: {image['name']}")
    dialog.get_by_label("Expected serial text").fill(BOOT_MARKER)
    dialog.get_by_label("RAM (MB)").fill("128")
    dialog.get_by_role("button", name="Run boot test").click()
    expect(dialog.locator(".verdict-line")).to_contain_text("Passed", timeout=120_000)
    shot = dialog.get_by_role("img", name=f"Screen of {image['name']} at the end of the boot test")
    expect(shot).to_be_visible()
    assert shot.evaluate("img => img.naturalWidth") > 100
    ui.shot(page, "boot-test")
    dialog.get_by_role("button", name="Close", exact=True).first.click()
    expect(dialog).to_be_hidden()


def test_hostile_upload_shows_the_servers_reason(server: Server, ui: UI, tmp_path: Path) -> None:
    hostile = make_qcow2_backing(tmp_path, "router.qcow2")
    with server.client() as api:  # what the server says about it, to compare word for word
        refused = api.put("/api/images/router.qcow2", content=hostile.read_bytes())
    assert refused.status_code == 422
    reason = refused.json()["detail"]

    page = ui.open(server, "#/images")
    expect(page.locator("#live")).to_have_text("Live")
    _drop_file(page, '[data-testid="dropzone"]', hostile)
    row = page.locator(".upload-row", has_text="router.qcow2")
    expect(row.get_by_role("alert")).to_contain_text("Refused (422)")
    expect(row.locator(".reason")).to_have_text(reason)
    expect(row).to_have_class("upload-row failed")
    ui.shot(page, "images-refused")
