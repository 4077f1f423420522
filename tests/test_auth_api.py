"""Access to the API: every route and WebSocket needs a login, sessions and tokens, roles,
and requests from other sites.

The route walk reads the routers themselves (hidden routes and WebSockets included) and the
OpenAPI, so a new route cannot forget the login.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import virtlab.api.routes
from support.server import Server

OPEN = {("GET", "/api/health"), ("POST", "/api/login")}
HOW = ("virtlab login", "VIRTLAB_TOKEN")
EVIL = "http://evil.example"


def _routes() -> tuple[list[tuple[str, str]], list[str]]:
    """(method, path) of every HTTP route and the path of every WebSocket of the API."""
    http: list[tuple[str, str]] = []
    sockets: list[str] = []
    for info in pkgutil.iter_modules(virtlab.api.routes.__path__):
        module = importlib.import_module(f"virtlab.api.routes.{info.name}")
        for router in (getattr(module, "router", None), getattr(module, "public", None)):
            for route in getattr(router, "routes", []):
                if isinstance(route, APIWebSocketRoute):
                    sockets.append(route.path)
                elif isinstance(route, APIRoute):
                    # path_format: {name:rest} is {name} in the OpenAPI
                    http += [(m, route.path_format) for m in sorted(route.methods - {"HEAD"})]
    return http, sockets


def _fill(path: str) -> str:
    path = path.replace("{token_id}", "0123456789abcdef")
    return re.sub(r"\{[^}]+\}", "nothere1", path)


def _refused(reply: httpx.Response, *words: str) -> None:
    assert reply.status_code == 401, (reply.request.method, reply.request.url, reply.text)
    assert reply.headers["www-authenticate"] == "Bearer"
    detail = reply.json()["detail"]
    for word in (*HOW, *words):
        assert word in detail, detail


@pytest.fixture(scope="module")
def bad_tokens(server: Server) -> dict[str, str]:
    """A malformed, an unknown, an expired and a revoked token."""
    with server.client() as client:
        expired = client.post("/api/tokens", json={"label": "old", "hours": 1e-9}).json()["value"]
        revoked = client.post("/api/tokens", json={"label": "gone"}).json()
        assert client.delete(f"/api/tokens/{revoked['token']['id']}").status_code == 204
    unknown = "vl_0123456789abcdef_" + "A" * 43
    return {
        "malformed": "nope",
        "unknown": unknown,
        "expired": expired,
        "revoked": revoked["value"],
    }


def test_the_walk_covers_the_openapi(server: Server) -> None:
    http, sockets = _routes()
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented <= set(http)
    assert len(http) > 50 and {"/api/events", "/api/nodes/{ref}/console/serial"} <= set(sockets)


def test_every_route_refuses_a_request_without_a_valid_token(
    server: Server, bad_tokens: dict[str, str]
) -> None:
    http, _ = _routes()
    with server.client(token="") as anon:
        for method, path in http:
            if (method, path) in OPEN:
                continue
            url = _fill(path)
            _refused(anon.request(method, url), "needs a login")
            for value in bad_tokens.values():
                reply = anon.request(method, url, headers={"Authorization": f"Bearer {value}"})
                _refused(reply, "unknown, expired or revoked")
            _refused(anon.request(method, url, headers={"Authorization": "Basic YWRtaW46eA=="}))
            cookie = {"Cookie": f"virtlab_session={bad_tokens['expired']}"}
            _refused(anon.request(method, url, headers=cookie), "the session has ended")


def test_every_websocket_refuses_before_it_is_accepted(
    server: Server, bad_tokens: dict[str, str]
) -> None:
    _, sockets = _routes()

    async def attempt(path: str, headers: dict[str, str]) -> tuple[int, str]:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url(_fill(path)), additional_headers=headers):
                pass
        response = refused.value.response
        return response.status_code, response.body.decode()

    async def walk() -> None:
        for path in sockets:
            status, body = await attempt(path, {})
            assert status == 401 and all(w in body for w in HOW), body
            for value in bad_tokens.values():
                status, body = await attempt(path, {"Authorization": f"Bearer {value}"})
                assert status == 401 and "unknown, expired or revoked" in body, body

    asyncio.run(walk())


def test_health_login_and_the_pages_need_no_login(server: Server) -> None:
    with server.client(token="") as anon:
        assert anon.get("/api/health").status_code == 200
        assert anon.get("/").status_code in (200, 503)  # 503: the UI is not built
        wrong = anon.post("/api/login", json={"name": "admin", "password": "not-the-one"})
        assert wrong.status_code == 401
        assert "wrong user name or password" in wrong.json()["detail"]
        nobody = anon.post("/api/login", json={"name": "nobody", "password": "whatever1"})
        assert nobody.status_code == 401 and nobody.json() == wrong.json()


def test_a_session_login_sets_a_strict_cookie_and_logout_ends_it(server: Server) -> None:
    with server.client(token="") as browser:
        reply = browser.post(
            "/api/login", json={"name": "admin", "password": server.admin_password}
        )
        assert reply.status_code == 200, reply.text
        cookie = reply.headers["set-cookie"].lower()
        for part in ("virtlab_session=", "httponly", "samesite=strict", "path=/"):
            assert part in cookie, cookie
        assert browser.get("/api/me").json() == {"name": "admin", "role": "admin", "via": "session"}
        assert browser.post("/api/logout").status_code == 204
        assert "virtlab_session" not in browser.cookies
        token = reply.json()["token"]
        stale = {"Cookie": f"virtlab_session={token}"}
        _refused(browser.get("/api/me", headers=stale), "session has ended")


def test_a_change_to_a_token_or_its_user_counts_from_the_next_request(server: Server) -> None:
    """A value just verified is known for a few seconds without the catalog
    (virtlab.auth.recent): a revoke or a role change right after a request must still count
    for the very next one."""
    with server.client() as admin:
        made = admin.post("/api/users", json={"name": "rita"}).json()
        token = admin.post("/api/tokens", json={"label": "soon gone"}).json()
        with server.client(token=token["value"]) as mine:
            assert mine.get("/api/me").status_code == 200  # verified: now known for a while
            assert admin.delete(f"/api/tokens/{token['token']['id']}").status_code == 204
            _refused(mine.get("/api/me"), "unknown, expired or revoked")
        rita = server.login("rita", made["password"])
        with server.client(token=rita) as client:
            assert client.get("/api/me").json()["role"] == "user"
            assert admin.patch("/api/users/rita", json={"role": "admin"}).status_code == 200
            assert client.get("/api/me").json()["role"] == "admin"
            assert client.get("/api/users").status_code == 200
            assert admin.patch("/api/users/rita", json={"role": "user"}).status_code == 200
            assert client.get("/api/users").status_code == 403
        assert admin.delete("/api/users/rita").status_code == 204


def test_roles_and_password_changes(server: Server) -> None:
    with server.client() as admin:
        made = admin.post("/api/users", json={"name": "rolf"})
        assert made.status_code == 201, made.text
        password = made.json()["password"]
        assert password and made.json()["user"]["role"] == "user"
        taken = admin.post("/api/users", json={"name": "rolf"})
        assert taken.status_code == 409 and "pick another name" in taken.json()["detail"]
        session = server.login("rolf", password, kind="session")
        api = server.login("rolf", password)
        with server.client(token=session) as rolf:
            assert rolf.get("/api/me").json()["role"] == "user"
            for method, path in [("GET", "/api/users"), ("POST", "/api/users"),
                                 ("DELETE", "/api/users/admin"), ("POST", "/api/images/scan"),
                                 ("POST", "/api/images/verify?fix=true")]:  # fmt: skip
                reply = rolf.request(method, path, json={"name": "x2"})
                assert reply.status_code == 403, (path, reply.text)
                assert "ask an admin" in reply.json()["detail"]
            weak = rolf.post("/api/me/password", json={"current": "wrong-one", "new": "x" * 12})
            assert weak.status_code == 401 and "type it again" in weak.json()["detail"]
        # An admin changes rolf's password: rolf's sessions end, the API token stays.
        assert admin.patch("/api/users/rolf", json={"password": "n3w-password"}).status_code == 200
        with server.client(token=session) as rolf:
            _refused(rolf.get("/api/me"), "unknown, expired or revoked")
        with server.client(token=api) as rolf:
            assert rolf.get("/api/me").status_code == 200
            short = rolf.post("/api/me/password", json={"current": "n3w-password", "new": "x"})
            assert short.status_code == 400 and "at least 8" in short.json()["detail"]
        last = admin.delete("/api/users/admin")
        assert last.status_code == 409 and "last admin" in last.json()["detail"]
        assert admin.delete("/api/users/rolf").status_code == 204
        with server.client(token=api) as rolf:
            _refused(rolf.get("/api/me"))


def test_who_may_upload_and_delete_images_is_a_setting(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"VIRTLAB_UPLOAD_ROLE": "admin"})
    raw = b"\0" * (1 << 20)
    with srv.client() as admin:
        password = admin.post("/api/users", json={"name": "uma"}).json()["password"]
        image = admin.put("/api/images/shared.img", content=raw).json()["name"]
    with srv.client(token=srv.login("uma", password)) as uma:
        reply = uma.put("/api/images/mine.img", content=raw)
        assert reply.status_code == 403, reply.text
        assert (
            "upload images" in reply.json()["detail"] and "ask an admin" in reply.json()["detail"]
        )
        assert [i["name"] for i in uma.get("/api/images").json()] == [image]  # shared, read-only
        reply = uma.delete(f"/api/images/{image}")
        assert reply.status_code == 403 and f"delete the image {image}" in reply.json()["detail"]


def test_a_token_lifetime_past_ten_years_is_refused_not_a_server_error(server: Server) -> None:
    with server.client() as client:
        for hours in (1e300, 24 * 365 * 10 + 1):
            reply = client.post("/api/tokens", json={"hours": hours})
            assert reply.status_code == 422 and "hours" in reply.text, reply.text
        assert client.post("/api/tokens", json={"hours": 24 * 365 * 10}).status_code == 201


def test_requests_from_another_site_are_refused(server: Server) -> None:
    with server.client(token="") as browser:
        browser.post("/api/login", json={"name": "admin", "password": server.admin_password})
        body = {"label": "from a page"}
        evil = browser.post("/api/tokens", json=body, headers={"Origin": EVIL})
        assert evil.status_code == 403 and EVIL in evil.json()["detail"]
        assert "pass a token" in evil.json()["detail"]
        own = browser.post("/api/tokens", json=body, headers={"Origin": server.url})
        assert own.status_code == 201, own.text
        assert browser.post("/api/tokens", json=body).status_code == 201  # no Origin: a program
        for reply in (evil, own, browser.get("/api/me", headers={"Origin": EVIL}),
                      browser.options("/api/me", headers={
                          "Origin": EVIL, "Access-Control-Request-Method": "DELETE"})):  # fmt: skip
            assert "access-control-allow-origin" not in reply.headers
    # A WebSocket from another site's page is refused even with a valid token.

    async def socket(origin: str) -> int:
        try:
            async with connect(server.ws_url("/api/events"), origin=origin,  # type: ignore[arg-type]
                               additional_headers=server.headers):  # fmt: skip
                return 101
        except InvalidStatus as refused:
            assert "another site" in refused.response.body.decode()
            return refused.response.status_code

    assert asyncio.run(socket(EVIL)) == 403
    assert asyncio.run(socket(server.url)) == 101


def test_first_start_prints_a_generated_password_once(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"VIRTLAB_ADMIN_PASSWORD": ""})
    lines = [line for line in srv.log if "made the first user 'admin'" in line]
    assert len(lines) == 1, srv.log
    password = re.search(r"with password (\S+) \(shown once", lines[0])[1]  # type: ignore[index]
    assert "virtlab user passwd admin" in lines[0]
    srv.token = srv.login("admin", password)
    srv.stop()
    srv.start()
    assert sum("made the first user" in line for line in srv.log) == 1
    with srv.client(token=srv.login("admin", password)) as client:
        assert client.get("/api/me").json()["name"] == "admin"


def test_a_given_admin_password_is_not_printed(server: Server) -> None:
    assert not [line for line in server.log if "made the first user" in line], server.log
    assert not [line for line in server.log if str(server.admin_password) in line]


def test_repeated_failed_logins_lock_the_name_out_for_a_while(server: Server) -> None:
    with server.client() as admin:
        made = admin.post("/api/users", json={"name": "guessed", "password": "right-password"})
        assert made.status_code == 201, made.text
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:

        def login(password: str) -> httpx.Response:
            body = {"name": "guessed", "password": password, "kind": "api"}
            return anonymous.post("/api/login", json=body)

        assert login("right-password").status_code == 200
        for attempt in range(5):
            wrong = login(f"wrong-{attempt}")
            assert wrong.status_code == 401, wrong.text
            assert "wrong user name or password" in wrong.json()["detail"]
        locked = login("right-password")  # even the right one, for now
        assert locked.status_code == 429, locked.text
        assert int(locked.headers["retry-after"]) > 0
        assert "too many failed logins for 'guessed'" in locked.json()["detail"]
        assert "try again in" in locked.json()["detail"]
        # Another name is not locked out by this one's failures.
        other = anonymous.post(
            "/api/login", json={"name": "admin", "password": server.admin_password, "kind": "api"}
        )
        assert other.status_code == 200, other.text
