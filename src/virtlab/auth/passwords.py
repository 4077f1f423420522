"""Passwords: argon2id hashes (argon2-cffi, RFC 9106 parameters), a policy, generated ones.

A hash carries its own parameters, so hashes made with older parameters still verify;
:func:`needs_rehash` tells when to store a fresh one after a successful login.
"""

from __future__ import annotations

import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from virtlab.errors import InvalidRequest

__all__ = [
    "MAX_LENGTH",
    "MIN_LENGTH",
    "check_policy",
    "generate",
    "hash_password",
    "needs_rehash",
    "verify",
]

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; this keeps a request from costing much
_HASHER = PasswordHasher()


def check_policy(password: str) -> None:
    """Refuse a password that is too short, too long or holds control characters."""
    if len(password) < MIN_LENGTH:
        raise InvalidRequest(
            f"the password is {len(password)} characters long; use at least {MIN_LENGTH}"
        )
    if len(password) > MAX_LENGTH:
        raise InvalidRequest(f"the password is longer than {MAX_LENGTH} characters")
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise InvalidRequest("the password holds control characters; use printable ones")


def hash_password(password: str) -> str:
    """The argon2id hash to store, after the policy check."""
    check_policy(password)
    return _HASHER.hash(password)


def verify(stored: str, password: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash; a damaged hash matches nothing."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)


def generate() -> str:
    """A password to print once: 24 URL-safe characters (144 random bits)."""
    return secrets.token_urlsafe(18)
