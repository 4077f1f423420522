"""Problems with a lab file: collected, located, worded for a person, raised all at once.

A location is the path of keys and list indexes from the document's root, written the way a
person finds it in the file: ``topology.nodes.r1.nics``, ``topology.links[2].endpoints[0]``;
the line number follows when the file was YAML text.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from virtlab.errors import InvalidRequest
from virtlab.names import shown
from virtlab.nodes.names import NAME_RULE
from virtlab.topology.model import BOUNDS, ENDPOINT_RULE, LabFile

__all__ = ["LabFileInvalid", "Loc", "Problems", "format_loc"]

Loc = tuple[Any, ...]
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class LabFileInvalid(InvalidRequest):
    """A lab file has problems; ``problems`` lists each one, located (``where: what``)."""

    def __init__(self, problems: Sequence[str]) -> None:
        count = len(problems)
        head = f"the lab file has {count} problem{'' if count == 1 else 's'}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))
        self.problems = tuple(problems)


def format_loc(loc: Loc) -> str:
    """``("topology", "links", 2, "endpoints")`` → ``topology.links[2].endpoints``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        elif isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f"[{part!r}]"
    return out or "(the file)"


class Problems:
    """Every problem found so far, in the order of the file when lines are known."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self._items: list[tuple[Loc, str, int | None]] = []

    def __bool__(self) -> bool:
        return bool(self._items)

    def line_of(self, loc: Loc) -> int | None:
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def add(self, loc: Loc, message: str, *, line: int | None = None) -> None:
        item = (tuple(loc), message, line if line is not None else self.line_of(loc))
        if item not in self._items:  # a kind's problem, met again through its next node
            self._items.append(item)

    def fatal(self, loc: Loc, message: str) -> NoReturn:
        self.add(loc, message)
        raise self.error()

    def messages(self) -> list[str]:
        ordered = sorted(self._items, key=lambda item: item[2] if item[2] is not None else 1 << 30)
        return [
            f"{format_loc(loc)}: {message}" + (f" (line {line})" if line is not None else "")
            for loc, message, line in ordered
        ]

    def error(self) -> LabFileInvalid:
        return LabFileInvalid(self.messages())

    def raise_if_any(self) -> None:
        if self._items:
            raise self.error()

    def add_validation_error(self, exc: ValidationError, prefix: Loc = ()) -> list[tuple[Loc, str]]:
        """Add pydantic's errors, reworded; return their locations and types."""
        found = []
        for err in exc.errors():
            loc = (*prefix, *err["loc"])
            found.append((loc, err["type"]))
            if loc and loc[-1] == "[key]":
                where, key = loc[:-2], loc[-2]
                self.add(where, _key_message(where, key, err), line=self.line_of(loc[:-1]))
            elif err["type"] == "extra_forbidden":
                self.add(loc[:-1], _extra_message(loc), line=self.line_of(loc))
            else:
                self.add(loc, _message(loc, err))
        return found


# --- pydantic's errors, reworded ---------------------------------------------------------------

_NAMED = {("topology", "nodes"): "node name", ("topology", "kinds"): "kind name"}


def _key_message(where: Loc, key: Any, err: Any) -> str:
    what = _NAMED.get(tuple(where[-2:]), "key")
    if err["type"] == "string_type":
        return f"{what} {key!r} must be text: quote it ('{key}')"
    return f"invalid {what} {shown(key)}: a {what} is {NAME_RULE}"


def _extra_message(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    allowed = ", ".join(model.model_fields) if model else ""
    where = "top-level key" if len(loc) == 1 else "key"
    return f"unknown {where} {loc[-1]!r}" + (f"; expected one of: {allowed}" if allowed else "")


def _described(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _message(loc: Loc, err: Any) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    bound = kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than")
    if bound and field in BOUNDS:
        low, high = BOUNDS[field]
        return f"must be between {low} and {high}, not {value!r}"
    if kind == "missing":
        return "required"
    if kind in ("too_short", "too_long"):
        if field == "endpoints":
            return f"a link has exactly 2 endpoints, not {ctx.get('actual_length')}"
        bound = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
        most = "at most" if kind == "too_long" else "at least"
        return f"{most} {bound} items, not {ctx.get('actual_length')}"
    if kind == "string_pattern_mismatch":
        return _pattern_message(loc, field, value)
    if kind == "enum":
        return f"must be one of {ctx.get('expected')}, not {value!r}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping (key: value), not {_described(value)}"
    if kind == "list_type":
        return f"must be a list, not {_described(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, not {_described(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {_described(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, not {_described(value)}"
    if kind == "string_type":
        return f"must be text, not {_described(value)}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg.replace("Input should", "must", 1)


def _pattern_message(loc: Loc, field: str, value: Any) -> str:
    if "endpoints" in loc:
        return f"{shown(value)} is not an endpoint: {ENDPOINT_RULE}"
    what = {"name": "lab name", "kind": "kind name", "host": "host name"}.get(field, field)
    return f"invalid {what} {shown(value)}: a {what} is {NAME_RULE}"


def _model_at(loc: Iterable[Any]) -> type[BaseModel] | None:
    """The model class that describes the mapping at ``loc`` in a lab file, if any."""
    tp: Any = LabFile
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """``X | None`` and ``Annotated[X, …]`` → ``X``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
