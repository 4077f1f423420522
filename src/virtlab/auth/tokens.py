"""Bearer secrets: API tokens and browser sessions.

A token reads ``vl_<id>_<secret>``: ``id`` (16 hex digits) finds its row, and only the sha256
of ``secret`` (43 URL-safe characters, 256 random bits) is stored. A secret that random needs
no slow hash: nobody can guess it, and a stolen catalog gives away no usable token. The
comparison runs in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["Issued", "digest", "issue", "matches", "parse"]

_SHAPE = re.compile(r"^vl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Issued:
    id: str
    secret: str

    @property
    def value(self) -> str:
        """What the client keeps and sends: shown once, never stored."""
        return f"vl_{self.id}_{self.secret}"

    @property
    def digest(self) -> str:
        return digest(self.secret)


def issue() -> Issued:
    return Issued(secrets.token_hex(8), secrets.token_urlsafe(32))


def parse(value: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    match = _SHAPE.match(value.strip())
    return (match[1], match[2]) if match else None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(stored_digest: str, secret: str) -> bool:
    return hmac.compare_digest(stored_digest, digest(secret))
