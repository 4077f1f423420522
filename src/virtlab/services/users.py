"""Users, their passwords, API tokens and browser sessions, kept in the catalog.

The first start makes an ``admin`` user: its password comes from ``VIRTLAB_ADMIN_PASSWORD``, or
is generated and handed back once for the server to print. There is no default password.
A bearer value (``vl_<id>_<secret>``, see :mod:`virtlab.auth.tokens`) is either an API token
(``kind="api"``, no expiry unless asked) or a browser session (``kind="session"``, made by a
login, ending after ``session_hours``). :meth:`UserService.authenticate` turns one into a
:class:`Principal` or nothing.
"""

from __future__ import annotations

import contextlib
import functools
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from virtlab.auth import passwords, tokens
from virtlab.auth.recent import RecentTokens
from virtlab.auth.throttle import LoginThrottle
from virtlab.catalog import Catalog
from virtlab.catalog.users import TokenRecord, UserRecord, UserRepository
from virtlab.errors import (
    CatalogBusy,
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    TooManyAttempts,
    Unauthorized,
)
from virtlab.names import TOKEN_LABEL, USER

__all__ = ["MAX_TOKEN_HOURS", "ROLES", "Principal", "UserService", "validate_user_name"]

ROLES = ("admin", "user")
MAX_TOKEN_HOURS = 24 * 365 * 10  # a token's longest lifetime, when it has one
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token


def validate_user_name(name: str) -> str:
    return USER.check(name)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    user_id: str
    name: str
    role: str
    token_id: str
    token_kind: str  # api | session

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class UserService:
    def __init__(
        self,
        catalog: Catalog,
        *,
        session_hours: float = 12.0,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.catalog = catalog
        self.session_hours = session_hours
        self.throttle = throttle or LoginThrottle()
        self.recent: RecentTokens[Principal] = RecentTokens()  # see virtlab.auth.recent

    # -- the first start ------------------------------------------------------------------------

    def bootstrap(self, admin_password: str | None) -> str | None:
        """Make the ``admin`` user when there is no user at all.

        Returns the generated password to print once, or None (a password was given, or
        users exist already).
        """
        with self.catalog.session() as session:
            if UserRepository(session).count() > 0:
                return None
        generated = None if admin_password else passwords.generate()
        self.add("admin", "admin", admin_password or generated)
        return generated

    # -- users ----------------------------------------------------------------------------------

    def add(self, name: str, role: str, password: str | None) -> tuple[UserRecord, str | None]:
        """The new user, and its password if one was generated (to show once)."""
        validate_user_name(name)
        if role not in ROLES:
            raise InvalidRequest(f"unknown role {role!r}: a role is one of {', '.join(ROLES)}")
        generated = None if password else passwords.generate()
        record = UserRecord(
            uuid.uuid4().hex, name, role, passwords.hash_password(password or generated), _now()
        )  # fmt: skip
        with self.catalog.session() as session:
            repo = UserRepository(session)
            if repo.by_name(name) is not None:
                raise Conflict(f"user {name} exists already; pick another name")
            repo.add(record)
        return record, generated

    def get(self, name: str) -> UserRecord:
        with self.catalog.session() as session:
            record = UserRepository(session).by_name(name)
        if record is None:
            raise NotFound(f"no user {name!r}; `virtlab user list` shows the users")
        return record

    def by_id(self, user_id: str) -> UserRecord | None:
        with self.catalog.session() as session:
            return UserRepository(session).get(user_id)

    def list(self) -> list[UserRecord]:
        with self.catalog.session() as session:
            return UserRepository(session).list()

    def set_password(self, name: str, password: str, *, end_sessions: bool = True) -> None:
        """Change a password; the user's browser sessions end (API tokens stay)."""
        stored = passwords.hash_password(password)
        user = self.get(name)
        with self.catalog.session() as session:
            repo = UserRepository(session)
            repo.update(user.id, password_hash=stored)
            if end_sessions:
                for token in repo.tokens(user.id, "session"):
                    repo.remove_token(token.id)
        self.recent.forget()

    def set_role(self, name: str, role: str) -> UserRecord:
        if role not in ROLES:
            raise InvalidRequest(f"unknown role {role!r}: a role is one of {', '.join(ROLES)}")
        user = self.get(name)
        with self.catalog.session() as session:
            repo = UserRepository(session)
            if user.is_admin and role != "admin" and repo.count("admin") == 1:
                raise Conflict(f"{name} is the last admin; make another admin first")
            changed = repo.update(user.id, role=role)
        self.recent.forget()
        return changed

    def remove(self, name: str) -> None:
        """Remove a user and every token of theirs; never the last admin."""
        user = self.get(name)
        with self.catalog.session() as session:
            repo = UserRepository(session)
            if user.is_admin and repo.count("admin") == 1:
                raise Conflict(f"{name} is the last admin; make another admin before removing it")
            repo.remove(user.id)
        self.recent.forget()

    # -- tokens and sessions --------------------------------------------------------------------

    def issue(
        self, name: str, *, kind: str = "api", label: str = "", hours: float | None = None
    ) -> tuple[TokenRecord, str]:
        """A new token for ``name``: its record and the value to hand over once."""
        if kind not in ("api", "session"):
            raise InvalidRequest(f"a token is an api token or a session, not {kind!r}")
        TOKEN_LABEL.check(label)
        if hours is not None and not 0 < hours <= MAX_TOKEN_HOURS:
            raise InvalidRequest(
                f"a token's lifetime is more than 0 and at most {MAX_TOKEN_HOURS} hours "
                "(ten years); for a token that lasts until revoked, give none"
            )
        user = self.get(name)
        issued = tokens.issue()
        now = _now()
        record = TokenRecord(
            issued.id, user.id, kind, label[:63], issued.digest, now,
            now + timedelta(hours=hours) if hours is not None else None,
        )  # fmt: skip
        with self.catalog.session() as session:
            UserRepository(session).add_token(record)
        return record, issued.value

    def login(
        self,
        name: str,
        password: str,
        *,
        kind: str = "session",
        label: str = "",
        address: str = "",
    ) -> tuple[UserRecord, str]:
        """A browser session (or an API token) for a correct name and password; the same
        refusal otherwise, whichever was wrong. Repeated failures for ``name`` from ``address``
        lock that pair out for a while (:class:`virtlab.auth.throttle.LoginThrottle`)."""
        wait = self.throttle.wait_for(name, address)
        if wait:
            raise TooManyAttempts(
                f"too many failed logins for {name!r} from {address or 'this address'}; "
                f"try again in {wait} s", wait,
            )  # fmt: skip
        refused = Unauthorized("wrong user name or password; check both and log in again")
        # The rule before virtlab.names (a trailing '.', '-' or '_' allowed), so that users
        # made then still log in; new users follow USER.
        if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,31}", name):
            self.throttle.failed(name, address)
            raise refused
        dummy = _dummy_hash()  # before the look-up: the first login pays for it either way
        with self.catalog.session() as session:
            user = UserRepository(session).by_name(name)
        stored = user.password_hash if user else dummy  # the same work either way
        if not passwords.verify(stored, password) or user is None:
            self.throttle.failed(name, address)
            raise refused
        self.throttle.succeeded(name, address)
        if passwords.needs_rehash(user.password_hash):
            self.set_password(name, password, end_sessions=False)
        if kind == "session":
            _, value = self.issue(name, kind="session", label=label or "login",
                                  hours=self.session_hours)  # fmt: skip
        else:
            _, value = self.issue(name, kind=kind, label=label)
        return user, value

    def recently_verified(self, value: str) -> Principal | None:
        """The principal of a bearer value :meth:`authenticate` verified a moment ago and that
        nothing has changed since (no catalog read: for the event loop); else None."""
        parsed = tokens.parse(value)
        return self.recent.get(parsed[0], value) if parsed else None

    def authenticate(self, value: str | None) -> Principal | None:
        """The principal a bearer value stands for, or None when it is unknown or expired."""
        parsed = tokens.parse(value) if value else None
        if parsed is None or value is None:
            return None
        token_id, secret = parsed
        known = self.recent.get(token_id, value)
        if known is not None:
            return known
        generation, now = self.recent.generation, _now()
        with self.catalog.session() as session:
            repo = UserRepository(session)
            token = repo.token(token_id)
            if token is None or not tokens.matches(token.digest, secret):
                return None
            if token.expires_at is not None and token.expires_at <= now:
                repo.remove_token(token.id)
                return None
            user = repo.get(token.user_id)
            if user is None:
                return None
        if token.last_used_at is None or now - token.last_used_at > _TOUCH_EVERY:
            # Only a note: a busy catalog or a full disk must not refuse the request.
            with (
                contextlib.suppress(CatalogBusy, InsufficientStorage),
                self.catalog.session() as session,
            ):
                UserRepository(session).touch_token(token.id, now)
        who = Principal(user.id, user.name, user.role, token.id, token.kind)
        self.recent.put(token_id, value, who, token.expires_at, generation)
        return who

    def tokens(self, name: str) -> list[TokenRecord]:
        user = self.get(name)
        with self.catalog.session() as session:
            return UserRepository(session).tokens(user.id, "api")

    def revoke(self, token_id: str, *, owner: str | None = None) -> None:
        """End a token or session (``owner``: only if it is theirs)."""
        with self.catalog.session() as session:
            repo = UserRepository(session)
            token = repo.token(token_id)
            user = repo.get(token.user_id) if token else None
            if token is None or user is None or (owner is not None and user.name != owner):
                raise NotFound(f"no token {token_id!r}; `virtlab user token list` shows yours")
            repo.remove_token(token.id)
        self.recent.forget()


@functools.cache
def _dummy_hash() -> str:
    """What a login for a user that does not exist verifies against, so that it costs what a
    wrong password costs. Made at the first login, not at import: an argon2 hash is about 0.2 s
    that every server start (and every test server) would pay."""
    return passwords.hash_password("virtlab-no-such-user")
