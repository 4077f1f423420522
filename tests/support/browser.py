"""A real browser for the web UI's tests: Debian's chromium, driven by Playwright.

Playwright's own browser download cannot work here, so it drives ``/usr/bin/chromium``
(``apt-get install chromium``, done by ``make setup``), headless, with a fresh profile per test
module. Load the fixtures in a test module with ``pytest_plugins = ["support.browser"]``::

    def test_page(server, ui) -> None:
        page = ui.open(server, "#/images")
        expect(page.get_by_role("heading", name="Images")).to_be_visible()
        ui.shot(page, "images")            # artifacts/ui/images.png

``open()`` logs in as the server's admin through the login form when the page shows it (the
browser then keeps the session cookie for that server). Every page fails its test on a
JavaScript error, and on a request to anywhere but the server
(the UI must fetch nothing from outside). A failing test leaves a screenshot of its page
beside the others, named ``FAILED-<test>.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright

from support.server import Server

__all__ = ["ARTIFACTS", "CHROMIUM", "UI", "chromium_context"]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "ui"
DIST = ROOT / "src" / "virtlab" / "web" / "dist"
LAPTOP = {"width": 1366, "height": 800}

expect.set_options(timeout=15_000)  # a page waits on a server that runs guests under TCG


def chromium_context(pw: Playwright, profile: Path) -> BrowserContext:
    """Debian's chromium on a fresh profile directory (``profile`` must be empty)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    return pw.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS,
        viewport=LAPTOP, accept_downloads=True, locale="en-GB", timezone_id="UTC",
    )  # fmt: skip


@dataclass
class UI:
    """The module's browser; ``open()`` gives a page watched for errors and outside requests."""

    context: BrowserContext
    pages: list[tuple[Page, str, list[str]]] = field(default_factory=list)

    def open(self, server: Server, route: str = "", *, viewport: dict | None = None) -> Page:
        page = self.context.new_page()
        if viewport:
            page.set_viewport_size(viewport)
        self.watch(page, server)
        page.goto(f"{server.url}/{route}")
        page.wait_for_selector("body[data-auth]")  # the page has asked /api/me
        if page.get_attribute("body", "data-auth") == "out":
            self.log_in(page, "admin", str(server.admin_password))
        return page

    def log_in(self, page: Page, name: str, password: str) -> None:
        """Through the login form, as a person would: by the fields' labels."""
        form = page.get_by_role("form", name="Log in to virtlab")
        form.get_by_label("User name").fill(name)
        form.get_by_label("Password").fill(password)
        form.get_by_role("button", name="Log in").click()
        expect(page.locator("#account")).to_contain_text(name)

    def watch(self, page: Page, server: Server) -> Page:
        """Fail the test on ``page``'s JavaScript errors and requests outside ``server``
        (``open()`` does it; call it for a popup the page opened)."""
        problems: list[str] = []
        allowed = (f"{server.url}/", server.url.replace("http", "ws", 1) + "/", "data:", "blob:")

        def check(url: str) -> None:
            if not url.startswith(allowed):
                problems.append(f"request outside the server: {url}")

        page.on("pageerror", lambda exc: problems.append(f"JavaScript error: {exc}"))
        page.on("request", lambda request: check(request.url))
        page.on("websocket", lambda ws: check(ws.url))
        self.pages.append((page, server.url, problems))
        return page

    def shot(self, page: Page, name: str, *, full_page: bool = False) -> Path:
        """Save the page as ``artifacts/ui/NAME.png`` (the user guide's pictures), without the
        passing notifications and the blinking caret."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(
            path=str(path), full_page=full_page, animations="disabled", caret="hide",
            style=".toasts { display: none !important; }",
        )  # fmt: skip
        return path

    def problems(self) -> list[str]:
        return [p for _, _, problems in self.pages for p in problems]

    def close_pages(self, failed_name: str | None) -> None:
        for page, _, _ in self.pages:
            if failed_name and not page.is_closed():
                self.shot(page, f"FAILED-{failed_name}")
            if not page.is_closed():
                page.close()
        self.pages.clear()


@pytest.fixture(scope="module")
def ui_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not (DIST / "index.html").is_file():
        pytest.fail(f"the web UI is not built ({DIST}): run `make setup`")
    with sync_playwright() as pw:
        context = chromium_context(pw, tmp_path_factory.mktemp("chromium-profile"))
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def ui(ui_context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[UI]:
    """Pages for one test; it fails on a JavaScript error or a request outside the server."""
    browser = UI(ui_context)
    yield browser
    report = getattr(request.node, "ui_call_report", None)
    failed = report is not None and report.failed
    problems = browser.problems()
    browser.close_pages(request.node.name if failed else None)
    assert not problems, "\n".join(problems)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.ui_call_report = report  # type: ignore[attr-defined]
    return report
