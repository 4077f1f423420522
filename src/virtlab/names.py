"""Every name a user gives, and the one rule each kind of name follows.

A name arrives in a JSON body, a URL path or query, a multipart part's file name, a lab file,
a lab archive, an OVA, or as a file dropped into ``DATA/images``. Each kind of name has one
:class:`NameRule` here, with the sentence that explains it; every route, service and parser
checks through it, and a refusal quotes the sentence. Pydantic fields use :meth:`NameRule.field`
(the JSON Schema and OpenAPI carry the pattern; the refusal carries the sentence).

Decisions, and why:

- **ASCII only** for the names of things (nodes, labs, hosts, images, checkpoints, users): they
  go into URLs, QEMU's command line, ``nodes/NAME.qcow2`` inside lab archives, DNS-like
  hostnames and terminals. Unicode would bring look-alikes (Cyrillic ``\\u0440`` is drawn as
  Latin ``p``), normalisation forms that differ byte for byte, and right-to-left overrides that
  make a name read backwards; refusing it costs nothing a network lab needs. An upload's *file
  name* is only a label (the stored image gets an ASCII name made from it), so it may be any
  printable text, but never a control or format character (``\\x00``, ``\\x1b``, U+202E).
- **No path in a name**: no ``/`` or ``\\``, never ``.`` or ``..``, and no leading or
  trailing dot or space (Windows drops them, shells lose them, ``.x`` hides a file).
- **Lengths**: 63 characters (a DNS label; QEMU's ``-name``) for nodes, labs, hosts and
  checkpoint tags; 32 for users; 128 for image names; 255 (a file name) for an upload's name.
- **Case**: two names that differ only in case collide (``R1`` and ``r1`` in one lab, two labs
  ``Core`` and ``core``, images ``Router.qcow2`` and ``router.qcow2``): a lab archive unpacked
  on a case-insensitive file system (macOS, Windows) would write ``nodes/R1.qcow2`` over
  ``nodes/r1.qcow2``, hostnames are case-insensitive, and people say "r1" for both. Names
  keep the case they were given; lookups stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from virtlab.errors import Conflict, InvalidRequest

__all__ = [
    "ENDPOINT",
    "HOST",
    "IMAGE",
    "LAB",
    "LEGACY_LABEL",
    "NODE",
    "RULES",
    "TAG",
    "TOKEN_LABEL",
    "UPLOAD",
    "USER",
    "NameRule",
    "shown",
]

_SHOWN = 60  # characters of a refused name quoted back


def shown(value: object) -> str:
    """A refused value as a refusal quotes it: escaped (``repr``), and cut if long."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}… ({len(value)} characters)"


@dataclass(frozen=True)
class NameRule:
    """One kind of name: what it is called, the rule in words, the same rule as a pattern."""

    what: str  # "node name"
    rule: str  # the sentence a refusal quotes
    pattern: str  # anchored; published in the OpenAPI and the lab file's JSON Schema
    max_length: int
    extra: Any = None  # a further check: a callable returning why a name is refused, or None

    def problem(self, value: object) -> str | None:
        """Why ``value`` cannot be such a name (the whole sentence), or None if it can."""
        ok = (
            isinstance(value, str)
            and len(value) <= self.max_length
            and re.fullmatch(self.pattern, value) is not None
        )
        if ok and self.extra is not None:
            why = self.extra(value)
            if why:
                return f"invalid {self.what} {shown(value)}: {why}; {self.sentence}"
        if ok:
            return None
        return f"invalid {self.what} {shown(value)}: {self.sentence}"

    @property
    def sentence(self) -> str:
        """ "a node name is …": the rule as a refusal says it."""
        article = "an" if self.what[0] in "aeiou" else "a"
        return f"{article} {self.what} is {self.rule}"

    def check(self, value: object) -> str:
        """``value`` if it can be such a name, else :class:`InvalidRequest` quoting the rule."""
        why = self.problem(value)
        if why:
            raise InvalidRequest(why)
        assert isinstance(value, str)
        return value

    @staticmethod
    def key(value: str) -> str:
        """What two names must not share: names that differ only in case collide."""
        return value.casefold()

    def clash(self, value: str, existing: Iterable[str]) -> str | None:
        """The existing name ``value`` collides with (the same, or the same but for case)."""
        key = self.key(value)
        return next((name for name in existing if self.key(name) == key), None)

    def refuse_clash(self, value: str, existing: Iterable[str], where: str) -> None:
        """:class:`Conflict` naming the existing one, if ``value`` collides with it."""
        other = self.clash(value, existing)
        if other is None:
            return
        same = "" if other == value else " (names that differ only in case collide)"
        raise Conflict(f"{where} already has a {self.what.split()[0]} named {other}{same}; "
                       "choose another name")  # fmt: skip

    def field(self, description: str | None = None) -> Any:
        """A pydantic ``str`` type checked by this rule: a refusal (422) quotes the rule, the
        schema carries the pattern."""

        def validate(value: str) -> str:
            why = self.problem(value)
            if why:
                raise ValueError(why)
            return value

        schema = {"type": "string", "pattern": self.pattern,
                  "minLength": 0 if re.fullmatch(self.pattern, "") else 1,
                  "maxLength": self.max_length,
                  "description": description or f"a {self.what}: {self.rule}"}  # fmt: skip
        return Annotated[str, AfterValidator(validate), WithJsonSchema(schema)]


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"  # a DNS-label-like name, 63 at most
_LABEL_RULE = (
    "1 to 63 ASCII characters: letters, digits, '_', '.' and '-', starting and ending with a "
    "letter or digit"
)

NODE = NameRule("node name", _LABEL_RULE, f"^{_LABEL}$", 63)
LAB = NameRule("lab name", _LABEL_RULE, f"^{_LABEL}$", 63)
HOST = NameRule("host name", _LABEL_RULE, f"^{_LABEL}$", 63)
TAG = NameRule(
    "checkpoint tag",
    "1 to 63 ASCII characters: letters, digits, '_', '.' and '-', starting with a letter (QEMU "
    "would read a leading digit as a snapshot number) and ending with a letter or digit",
    r"^[A-Za-z](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$",
    63,
)
USER = NameRule(
    "user name",
    "1 to 32 characters: lower-case ASCII letters, digits, '_', '.' and '-', starting with a "
    "letter and ending with a letter or digit",
    r"^[a-z](?:[a-z0-9_.-]{0,30}[a-z0-9])?$",
    32,
)
IMAGE = NameRule(
    "image name",
    "1 to 128 ASCII characters: letters, digits, '_', '.', '+' and '-', starting and ending "
    "with a letter or digit (a file in DATA/images)",
    r"^[A-Za-z0-9](?:[A-Za-z0-9_.+-]{0,126}[A-Za-z0-9])?$",
    128,
)


def _upload_problem(value: str) -> str | None:
    if value in (".", ".."):
        return "it is a directory, not a file"
    if not value.isprintable():
        return "it holds a control or format character"
    if value != value.strip() or value.startswith(".") or value.endswith("."):
        return "it starts or ends with a space or a dot"
    return None


UPLOAD = NameRule(
    "upload file name",
    "1 to 255 printable characters (no control or format characters), without '/' or '\\', "
    "not starting or ending with a space or a dot; the stored image is named after it "
    "(router.vmdk → router_<ms>.qcow2)",
    r"^[^/\\]{1,255}$",
    255,
    extra=_upload_problem,
)


def _label_problem(value: str) -> str | None:
    if not value.isprintable():
        return "it holds a control or format character"
    return None


TOKEN_LABEL = NameRule(
    "token label",
    "up to 63 printable characters (no control or format characters): what the token is for",
    r"^[^\x00-\x1f\x7f]{0,63}$",
    63,
    extra=_label_problem,
)
ENDPOINT = NameRule(
    "endpoint",
    "NODE:ethN, a node name and one of its NICs, e.g. r1:eth1",
    rf"^{_LABEL}:eth(0|[1-9][0-9]?)$",
    63 + 6,
)

# Node and lab names as rules before virtlab.names allowed them (a trailing '.', '-' or '_'):
# what a *lookup* accepts, and what QEMU's -name is given, so that a node or lab made then can
# still be found, started and renamed. Nothing new is made with it.
LEGACY_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

RULES: dict[str, NameRule] = {
    "node": NODE, "lab": LAB, "host": HOST, "checkpoint": TAG, "user": USER, "image": IMAGE,
    "upload": UPLOAD, "endpoint": ENDPOINT, "token": TOKEN_LABEL,
}  # fmt: skip
