"""The web UI's login: the form, its refusal in the server's words, the account in the header,
logging out; and a session that ends while the page is open brings the form back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from playwright.sync_api import expect

from support.server import Server

if TYPE_CHECKING:
    from support.browser import UI  # imported by pytest_plugins, so that pytest rewrites it

pytest_plugins = ["support.browser"]


def test_login_form_then_account_and_logout(server: Server, ui: UI) -> None:
    page = ui.context.new_page()
    ui.watch(page, server)
    page.goto(f"{server.url}/#/images")
    form = page.get_by_role("form", name="Log in to virtlab")
    expect(form).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    ui.shot(page, "login")

    form.get_by_label("User name").fill("admin")
    form.get_by_label("Password").fill("not-the-password")
    form.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong user name or password")

    ui.log_in(page, "admin", str(server.admin_password))
    expect(page.get_by_role("heading", name="Images")).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()

    # The session ends behind the page's back: the next request brings the form back.
    with server.client() as client:
        client.patch("/api/users/admin", json={"password": server.admin_password})
    page.reload()
    expect(form).to_be_visible()
    ui.log_in(page, "admin", str(server.admin_password))
    page.get_by_role("button", name="Log out").click()
    expect(form).to_be_visible()
    with server.client(token="") as anon:
        assert anon.get("/api/me").status_code == 401
