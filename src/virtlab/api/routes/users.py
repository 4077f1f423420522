"""Access: ``/api/login``, ``/api/logout``, ``/api/me``, ``/api/users`` (admins),
``/api/tokens`` (one's own API tokens).

``POST /api/login`` is the one route besides ``/api/health`` that needs no login: a ``session``
login sets the ``virtlab_session`` cookie (HttpOnly, SameSite=Strict) for the web UI; an ``api``
login hands back a token for the CLI to keep. Either way the bearer value is in the answer once.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from virtlab.api.auth import COOKIE, AdminDep, PrincipalDep
from virtlab.api.deps import RuntimeDep
from virtlab.api.errors import refusal
from virtlab.auth import passwords
from virtlab.catalog.users import TokenRecord, UserRecord
from virtlab.errors import InvalidRequest, Unauthorized
from virtlab.names import TOKEN_LABEL, USER
from virtlab.services.users import MAX_TOKEN_HOURS

__all__ = ["public", "router"]

public = APIRouter(tags=["access"])  # no login needed
router = APIRouter(tags=["access"])

REFUSED = {
    400: refusal("Bad name, role or password"),
    401: refusal("Not logged in, or a wrong password"),
    403: refusal("Needs the admin role"),
    404: refusal("No such user or token"),
    409: refusal("The name is taken, or the last admin"),
}
UserName = Annotated[str, Path(min_length=1, max_length=32)]
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
NewUserName = USER.field()
TokenLabel = TOKEN_LABEL.field("what the token is for (api)")
Role = Literal["admin", "user"]


class User(BaseModel):
    name: str
    role: Role
    created_at: datetime

    @classmethod
    def of(cls, record: UserRecord) -> User:
        return cls(name=record.name, role=record.role, created_at=record.created_at)  # type: ignore[arg-type]


class Token(BaseModel):
    id: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, record: TokenRecord) -> Token:
        return cls(
            id=record.id, label=record.name, created_at=record.created_at,
            expires_at=record.expires_at, last_used_at=record.last_used_at,
        )  # fmt: skip


class LoginRequest(BaseModel):
    name: str = Field(max_length=64)
    password: str = Field(max_length=passwords.MAX_LENGTH)
    kind: Literal["session", "api"] = Field(
        "session", description="session: a browser cookie; api: a token for the CLI or scripts"
    )
    label: TokenLabel = ""


class LoginResult(BaseModel):
    user: User
    token: str = Field(description="the bearer value, shown this once")


class Me(BaseModel):
    name: str
    role: Role
    via: Literal["session", "api"] = Field(description="how this request was authenticated")


class UserCreate(BaseModel):
    name: NewUserName
    role: Role = "user"
    password: str | None = Field(
        None, max_length=passwords.MAX_LENGTH, description="generated (and returned) if absent"
    )


class UserCreated(BaseModel):
    user: User
    password: str | None = Field(None, description="the generated password, shown this once")


class UserUpdate(BaseModel):
    role: Role | None = None
    password: str | None = Field(None, max_length=passwords.MAX_LENGTH)


class PasswordChange(BaseModel):
    current: str = Field(max_length=passwords.MAX_LENGTH)
    new: str = Field(max_length=passwords.MAX_LENGTH)


class TokenCreate(BaseModel):
    label: TokenLabel = ""
    hours: float | None = Field(
        None, gt=0, le=MAX_TOKEN_HOURS, description="lifetime; none: until revoked"
    )


class TokenCreated(BaseModel):
    token: Token
    value: str = Field(description="the bearer value, shown this once")


def _set_cookie(request: Request, response: Response, value: str, hours: float) -> None:
    response.set_cookie(
        COOKIE, value, max_age=int(hours * 3600), path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


# -- logging in and out ---------------------------------------------------------------------------


@public.post(
    "/api/login", response_model=LoginResult, summary="Log in",
    responses={**REFUSED, 429: refusal("Too many failed logins of this name from here: wait "
                                       "Retry-After seconds")},
)  # fmt: skip
async def login(
    body: LoginRequest, request: Request, response: Response, runtime: RuntimeDep
) -> LoginResult:
    """With ``kind: "session"`` the answer also sets the ``virtlab_session`` cookie."""
    users = runtime.users
    user, value = await asyncio.to_thread(
        users.login,
        body.name,
        body.password,
        kind=body.kind,
        label=body.label,
        address=request.client.host if request.client else "",
    )
    if body.kind == "session":
        _set_cookie(request, response, value, users.session_hours)
    return LoginResult(user=User.of(user), token=value)


@router.post("/api/logout", status_code=204, responses=REFUSED, summary="Log out")
def logout(who: PrincipalDep, runtime: RuntimeDep) -> Response:
    """Revokes the token or session this request came with, and clears the cookie."""
    runtime.users.revoke(who.token_id)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/api/me", response_model=Me, responses=REFUSED, summary="Who am I")
def me(who: PrincipalDep) -> Me:
    return Me(name=who.name, role=who.role, via=who.token_kind)  # type: ignore[arg-type]


@router.post("/api/me/password", status_code=204, responses=REFUSED, summary="Change my password")
async def change_my_password(
    body: PasswordChange, who: PrincipalDep, request: Request, runtime: RuntimeDep
) -> Response:
    """Every browser session of yours ends; if this request came from one, a new one is set."""
    users = runtime.users
    record = await asyncio.to_thread(users.get, who.name)
    if not await asyncio.to_thread(passwords.verify, record.password_hash, body.current):
        raise Unauthorized(f"the current password of {who.name} is wrong; type it again")
    await asyncio.to_thread(users.set_password, who.name, body.new)
    response = Response(status_code=204)
    if who.token_kind == "session":
        _, value = await asyncio.to_thread(
            users.issue, who.name, kind="session", label="login", hours=users.session_hours
        )
        _set_cookie(request, response, value, users.session_hours)
    return response


# -- users (admins) -------------------------------------------------------------------------------


@router.get("/api/users", response_model=list[User], responses=REFUSED, summary="List users")
def list_users(_admin: AdminDep, runtime: RuntimeDep) -> list[User]:
    return [User.of(u) for u in runtime.users.list()]


@router.post("/api/users", status_code=201, response_model=UserCreated, responses=REFUSED,
             summary="Add a user")  # fmt: skip
async def add_user(body: UserCreate, _admin: AdminDep, runtime: RuntimeDep) -> UserCreated:
    record, generated = await asyncio.to_thread(
        runtime.users.add, body.name, body.role, body.password
    )
    return UserCreated(user=User.of(record), password=generated)


@router.patch("/api/users/{name}", response_model=User, responses=REFUSED,
              summary="Change a user's role or password")  # fmt: skip
async def update_user(
    name: UserName, body: UserUpdate, _admin: AdminDep, runtime: RuntimeDep
) -> User:
    if body.role is None and body.password is None:
        raise InvalidRequest("nothing to change: give a role, a password or both")
    if body.password is not None:
        await asyncio.to_thread(runtime.users.set_password, name, body.password)
    if body.role is not None:
        await asyncio.to_thread(runtime.users.set_role, name, body.role)
    return User.of(runtime.users.get(name))


@router.delete("/api/users/{name}", status_code=204, responses=REFUSED, summary="Remove a user")
def remove_user(name: UserName, _admin: AdminDep, runtime: RuntimeDep) -> Response:
    """Their tokens and sessions end; labs they owned go to the admins."""
    runtime.users.remove(name)
    return Response(status_code=204)


# -- one's own API tokens -------------------------------------------------------------------------


@router.get("/api/tokens", response_model=list[Token], responses=REFUSED,
            summary="List my API tokens")  # fmt: skip
def list_tokens(who: PrincipalDep, runtime: RuntimeDep) -> list[Token]:
    return [Token.of(t) for t in runtime.users.tokens(who.name)]


@router.post("/api/tokens", status_code=201, response_model=TokenCreated, responses=REFUSED,
             summary="Make an API token")  # fmt: skip
def create_token(body: TokenCreate, who: PrincipalDep, runtime: RuntimeDep) -> TokenCreated:
    record, value = runtime.users.issue(who.name, kind="api", label=body.label, hours=body.hours)
    return TokenCreated(token=Token.of(record), value=value)


@router.delete("/api/tokens/{token_id}", status_code=204, responses=REFUSED,
               summary="Revoke an API token")  # fmt: skip
def revoke_token(token_id: TokenId, who: PrincipalDep, runtime: RuntimeDep) -> Response:
    """Your own tokens; an admin may revoke anyone's."""
    runtime.users.revoke(token_id, owner=None if who.is_admin else who.name)
    return Response(status_code=204)
