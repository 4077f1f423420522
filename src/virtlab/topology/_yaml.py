"""Reading a lab file's YAML as hostile input: PyYAML's safe loader, with three additions.

- Duplicate keys are reported (plain YAML loading keeps the last one silently, so two nodes
  named ``r1`` would become one).
- Every key and list item gets its line number, so problems can say where they are.
- The document, with YAML aliases expanded, has a bounded size: a few lines of nested aliases
  ("billion laughs") would otherwise make validation walk billions of values.

Construction is PyYAML's ``SafeLoader`` (the loader behind ``yaml.safe_load``): plain mappings,
lists and scalars, never Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from virtlab.topology._problems import Loc, Problems

__all__ = ["MAX_TEXT", "MAX_VALUES", "Loaded", "load_yaml"]

MAX_TEXT = 1 << 20  # characters of YAML
MAX_VALUES = 200_000  # keys, items and scalars, aliases expanded


@dataclass
class Loaded:
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)  # location -> 1-based line


class _TooBig(Exception):
    pass


def load_yaml(text: str, problems: Problems) -> Loaded:
    """Parse ``text``; duplicate keys go to ``problems``; raise on what cannot be read at all."""
    if len(text) > MAX_TEXT:
        problems.fatal((), f"the file is too large: {len(text)} characters, at most {MAX_TEXT}")
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return Loaded(None)
        lines: dict[Loc, int] = {}
        try:
            _walk(root, (), lines, problems, [0])
        except _TooBig:
            problems.fatal(
                (),
                f"the file expands to more than {MAX_VALUES} values (through YAML aliases?)",
            )
        return Loaded(loader.construct_document(root), lines)
    except yaml.YAMLError as exc:
        problems.fatal((), f"not valid YAML: {_yaml_message(exc)}")
    finally:
        loader.dispose()


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc).replace("\n", " ")


def _scalar_key(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        if node.tag.endswith((":str", ":merge")):
            return node.value
        return _construct_scalar(node)
    return f"<{node.id}>"


def _construct_scalar(node: yaml.ScalarNode) -> Any:
    # A key such as 1 or true: construct it the way the loader will, to name it the same way.
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node)
    finally:
        loader.dispose()


def _walk(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: Problems, count: list[int]
) -> None:
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise _TooBig
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _scalar_key(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.add(loc, _duplicate(loc, key, seen[key]), line=line)
                continue
            seen[key] = line
            lines.setdefault((*loc, key), line)
            _walk(value_node, (*loc, key), lines, problems, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*loc, index), item.start_mark.line + 1)
            _walk(item, (*loc, index), lines, problems, count)


def _duplicate(loc: Loc, key: Any, first: int) -> str:
    what = {
        ("topology", "nodes"): "node name",
        ("topology", "kinds"): "kind",
    }.get(tuple(loc), "key")
    return f"duplicate {what} {key!r} (first on line {first})"
