"""The parse stage: YAML text or a mapping → :class:`~virtlab.topology.model.LabFile`.

What fails to parse is reported, then dropped where that is safe (a node, a kind, a link), so
that resolution can still check the rest and one report lists everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from virtlab.topology._problems import Loc, Problems
from virtlab.topology._yaml import load_yaml
from virtlab.topology.model import LabFile

__all__ = ["Parsed", "Source", "parse"]

Source = str | bytes | Mapping[str, Any]
NODES: Loc = ("topology", "nodes")
KINDS: Loc = ("topology", "kinds")
LINKS: Loc = ("topology", "links")


@dataclass
class Parsed:
    lab: LabFile | None
    broken_nodes: set[str] = field(default_factory=set)  # failed to parse: not resolved
    broken_kinds: set[str] = field(default_factory=set)
    link_index: list[int] | None = None  # position in the file of each parsed link


def parse(source: Source, problems: Problems) -> Parsed:
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.fatal((), f"not UTF-8 text: byte {exc.start} cannot be read")
    if isinstance(source, str):
        loaded = load_yaml(source, problems)
        problems.lines = loaded.lines
        data = loaded.data
    else:
        data = source
    if not isinstance(data, Mapping):
        problems.fatal((), f"a lab file is a mapping with name and topology, not {_what(data)}")
    try:
        return Parsed(LabFile.model_validate(data))
    except ValidationError as exc:
        errors = problems.add_validation_error(exc)
    return _salvage(dict(data), errors)


def _what(data: Any) -> str:
    return "an empty file" if data is None else f"a {type(data).__name__}"


def _salvage(data: dict[str, Any], errors: Iterable[tuple[Loc, str]]) -> Parsed:
    """Drop what failed (nodes, kinds, links, unknown keys), so the rest can still be checked.

    Failures in the defaults or in the file's shape leave nothing sure to resolve against.
    """
    parsed = Parsed(None)
    topology = data.get("topology", {})
    if not isinstance(topology, Mapping):
        return parsed
    topology = data["topology"] = dict(topology)
    dropped_links: set[int] = set()
    for loc, kind in errors:
        if loc == ("name",):
            data["name"] = "lab"  # reported; any valid name lets the rest be checked
        elif kind == "extra_forbidden" and len(loc) <= 2:
            (topology if len(loc) == 2 else data).pop(loc[-1], None)
        elif len(loc) >= 3 and loc[:2] in (NODES, KINDS) and isinstance(topology[loc[1]], dict):
            section = topology[loc[1]] = dict(topology[loc[1]])
            section.pop(loc[2], None)
            (parsed.broken_nodes if loc[1] == "nodes" else parsed.broken_kinds).add(str(loc[2]))
        elif len(loc) >= 3 and loc[:2] == LINKS and isinstance(loc[2], int):
            dropped_links.add(loc[2])
        else:
            return parsed
    if dropped_links and isinstance(topology.get("links"), list):
        kept = [i for i in range(len(topology["links"])) if i not in dropped_links]
        topology["links"] = [topology["links"][i] for i in kept]
        parsed.link_index = kept
    try:
        parsed.lab = LabFile.model_validate(data)
    except ValidationError:
        parsed.lab = None
    return parsed
