"""Who is asking: the bearer of a request (HTTP or WebSocket), and the checks on it.

A request carries its bearer value (see :mod:`virtlab.auth.tokens`) in ``Authorization:
Bearer …`` (the CLI, scripts) or in the ``virtlab_session`` cookie (the web UI: HttpOnly,
SameSite=Strict). :func:`principal` is applied to every router but ``/api/health``,
``/api/login`` and the UI's static files; without a valid bearer an HTTP request gets 401
(``WWW-Authenticate: Bearer``) and a WebSocket is refused before it is accepted.

Cross-site requests: there is no CORS middleware, so no other origin may read a response. A
cookie rides along on any request the browser makes, so a cookie-authenticated request with an
unsafe method, and every WebSocket (browsers send cookies with them whatever the page's
origin), must come with no ``Origin`` (a program, not a page) or the server's own.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from virtlab.errors import Forbidden, Unauthorized
from virtlab.services.users import Principal

__all__ = [
    "COOKIE",
    "HOW_TO_LOG_IN",
    "AdminDep",
    "PrincipalDep",
    "bearer",
    "own_origin",
    "principal",
    "require_admin",
    "require_role",
]

COOKIE = "virtlab_session"
HOW_TO_LOG_IN = (
    "log in with `virtlab login` (or the web UI's login page), or pass a token (VIRTLAB_TOKEN)"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def bearer(conn: HTTPConnection) -> tuple[str | None, bool]:
    """The bearer value of a request and whether it came from the session cookie."""
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        return (value.strip() if scheme.lower() == "bearer" else ""), False
    cookie = conn.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def own_origin(conn: HTTPConnection) -> str:
    """``scheme://host[:port]`` of this server as the request reached it (its Host header)."""
    scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
    return f"{scheme}://{conn.headers.get('host', '')}".lower()


def _what(conn: HTTPConnection) -> str:
    if conn.scope["type"] == "websocket":
        return f"the WebSocket {conn.url.path}"
    return f"{conn.scope['method']} {conn.url.path}"


def check_origin(conn: HTTPConnection) -> None:
    origin = conn.headers.get("origin")
    if origin is None:
        return  # not a browser page: a program, which cannot be made to send our cookie
    own = own_origin(conn)
    if origin.strip().rstrip("/").lower() != own:
        raise Forbidden(
            f"{_what(conn)} came from a page of another site ({origin}) and is refused: only "
            f"the pages of this server ({own}) may use its session; a program should send "
            "no Origin header and pass a token (VIRTLAB_TOKEN)"
        )


async def principal(conn: HTTPConnection) -> Principal:
    """The user a request comes from, or :class:`Unauthorized` / :class:`Forbidden`.

    A value verified a moment ago is known without the catalog (``virtlab.auth.recent``);
    otherwise the catalog look-up runs in a worker thread, never on the event loop. FastAPI
    caches it per request, so routes may depend on it again.
    """
    value, from_cookie = bearer(conn)
    if conn.scope["type"] == "websocket" or (
        from_cookie and conn.scope["method"] not in SAFE_METHODS
    ):
        check_origin(conn)
    if value is None:
        raise Unauthorized(f"{_what(conn)} needs a login: {HOW_TO_LOG_IN}")
    users = conn.app.state.runtime.users
    who = users.recently_verified(value) or await asyncio.to_thread(users.authenticate, value)
    if who is None:
        gone = (
            "the session has ended" if from_cookie else "the token is unknown, expired or revoked"
        )
        raise Unauthorized(f"{_what(conn)} refused: {gone}; {HOW_TO_LOG_IN}")
    conn.state.principal = who
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


def require_admin(who: PrincipalDep) -> Principal:
    if not who.is_admin:
        raise Forbidden(
            f"{who.name} has the role 'user', and this needs the role 'admin'; ask an admin"
        )
    return who


AdminDep = Annotated[Principal, Depends(require_admin)]


def require_role(who: Principal, role: str, action: str) -> None:
    """Refuse ``action`` unless ``who`` has ``role`` (an admin has every role)."""
    if role == "admin" and not who.is_admin:
        raise Forbidden(
            f"{who.name} may not {action}: on this server it needs the role 'admin' "
            f"(VIRTLAB_UPLOAD_ROLE / VIRTLAB_IMAGE_DELETE_ROLE); ask an admin"
        )
