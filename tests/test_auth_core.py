"""The pure pieces of access control: password hashes, bearer tokens, console tickets."""

from __future__ import annotations

import pytest

from virtlab.auth import passwords, tokens
from virtlab.auth.throttle import LoginThrottle
from virtlab.auth.tickets import TicketBook
from virtlab.errors import InvalidRequest


def test_a_password_hash_is_argon2id_and_checks_only_the_password() -> None:
    stored = passwords.hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert passwords.verify(stored, "correct horse")
    assert not passwords.verify(stored, "correct horsE")
    assert not passwords.verify("not a hash", "correct horse")
    assert not passwords.needs_rehash(stored)
    assert passwords.hash_password("correct horse") != stored  # salted


@pytest.mark.parametrize(
    ("password", "needle"),
    [("short", "at least 8"), ("x" * 1025, "longer than 1024"), ("tab\there!", "control")],
)
def test_weak_or_odd_passwords_are_refused_with_the_reason(password: str, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        passwords.hash_password(password)


def test_generated_passwords_pass_the_policy_and_differ() -> None:
    made = {passwords.generate() for _ in range(50)}
    assert len(made) == 50
    for password in made:
        passwords.check_policy(password)
        assert len(password) == 24


def test_a_token_round_trips_and_only_its_digest_is_kept() -> None:
    issued = tokens.issue()
    assert tokens.parse(issued.value) == (issued.id, issued.secret)
    assert issued.secret not in issued.digest
    assert tokens.matches(issued.digest, issued.secret)
    assert not tokens.matches(issued.digest, tokens.issue().secret)


@pytest.mark.parametrize(
    "value",
    ["", "vl_", "vl_0123456789abcdef_short", "xx_0123456789abcdef_" + "a" * 43,
     "vl_0123456789ABCDEF_" + "a" * 43, "vl_0123456789abcdef_" + "a" * 42 + "!"],
)  # fmt: skip
def test_malformed_tokens_do_not_parse(value: str) -> None:
    assert tokens.parse(value) is None


def test_a_ticket_is_good_once_for_its_node_and_kind_until_it_expires() -> None:
    now = [100.0]
    book = TicketBook(ttl=30, clock=lambda: now[0])
    vnc = book.issue("n1", "vnc")
    assert len(vnc.secret) == 8 and vnc.secret.isalnum()
    telnet = book.issue("n1", "telnet")
    assert not book.redeem("n2", "vnc", vnc.secret)  # another node
    assert not book.redeem("n1", "telnet", vnc.secret)  # another kind
    assert book.redeem("n1", "vnc", vnc.secret)
    assert not book.redeem("n1", "vnc", vnc.secret)  # used up
    now[0] += 31
    assert not book.redeem("n1", "telnet", telnet.secret)  # expired


def test_failed_logins_lock_one_name_at_one_address_with_a_growing_lockout() -> None:
    now = [0.0]
    throttle = LoginThrottle(limit=3, window=60, lockout=10, max_lockout=25, clock=lambda: now[0])
    for _ in range(2):
        throttle.failed("ann", "10.0.0.1")
    assert throttle.wait_for("ann", "10.0.0.1") == 0
    throttle.failed("ann", "10.0.0.1")
    assert throttle.wait_for("ann", "10.0.0.1") == 10
    assert throttle.wait_for("ann", "10.0.0.2") == 0  # another address
    assert throttle.wait_for("bob", "10.0.0.1") == 0  # another name
    now[0] = 11
    for _ in range(3):
        throttle.failed("ann", "10.0.0.1")
    assert throttle.wait_for("ann", "10.0.0.1") == 20  # doubled
    now[0] = 40
    for _ in range(3):
        throttle.failed("ann", "10.0.0.1")
    assert throttle.wait_for("ann", "10.0.0.1") == 25  # capped
    throttle.succeeded("ann", "10.0.0.1")
    assert throttle.wait_for("ann", "10.0.0.1") == 0


def test_failures_older_than_the_window_do_not_count() -> None:
    now = [0.0]
    throttle = LoginThrottle(limit=2, window=60, lockout=10, clock=lambda: now[0])
    throttle.failed("ann", "a")
    now[0] = 61
    throttle.failed("ann", "a")
    assert throttle.wait_for("ann", "a") == 0
