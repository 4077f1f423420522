"""A resolved lab back to a lab file that redeploys to the same lab.

``load_lab(export_yaml(lab)) == lab.canonical()`` for every lab that resolves: that round trip
is the contract (the tests check it over several labs). The file is also meant to be read, so
shared values are factored out, deterministically:

- ``topology.defaults`` gets a setting when every plain node has the same value and it is not
  the builtin default (``host``: every node, nat nodes included);
- ``topology.kinds.<kind>`` gets a setting when every node of a kind of the file has the same
  value, other than the one the defaults give; every such kind is listed, if only as ``{}``;
- a node writes what still differs. ``management`` and ``position`` stay on their node.

Nodes come in natural name order, links in canonical order; the dumper writes short mappings
and lists of plain values on one line (``r2: {kind: router}``, ``endpoints: [r1:eth1, …]``).
"""

from __future__ import annotations

import enum
from typing import Any

import yaml

from virtlab.topology.kinds import BUILTIN_KINDS, DEFAULT_KIND
from virtlab.topology.model import LinkState
from virtlab.topology.specs import (
    BUILTIN_DEFAULTS,
    NODE_SETTINGS,
    Impairment,
    NatSpec,
    ResolvedLab,
    ResolvedLink,
    ResolvedNode,
    natural_key,
)

__all__ = ["export_document", "export_yaml"]

_FACTORED = tuple(s for s in NODE_SETTINGS if s not in ("management", "host"))
_MISSING = object()


def export_yaml(lab: ResolvedLab) -> str:
    """The lab as a YAML lab file."""
    header = f"# virtlab lab {lab.name}: deploy with `virtlab lab deploy FILE`\n"
    body = yaml.dump(
        export_document(lab),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    return header + body


def export_document(lab: ResolvedLab) -> dict[str, Any]:
    """The lab as the mapping a lab file holds (also fit for JSON)."""
    lab = lab.canonical()
    machines = [n for n in lab.nodes if not n.is_nat]
    defaults = _common(machines, _FACTORED, lambda s: BUILTIN_DEFAULTS[s])
    host = _same({n.host for n in lab.nodes})
    if host is not _MISSING and host is not None:
        defaults["host"] = host

    def base(setting: str) -> Any:
        return defaults.get(setting, BUILTIN_DEFAULTS[setting])

    kinds: dict[str, dict[str, Any]] = {}
    for kind in sorted({n.kind for n in machines} - set(BUILTIN_KINDS), key=natural_key):
        kinds[kind] = _common([n for n in machines if n.kind == kind], _FACTORED, base)

    nodes = {}
    for node in lab.nodes:
        level = kinds.get(node.kind, {})
        nodes[node.name] = _node(node, lambda s, level=level: level.get(s, base(s)))
    topology: dict[str, Any] = {}
    if defaults:
        topology["defaults"] = {k: _plain(v) for k, v in defaults.items()}
    if kinds:
        topology["kinds"] = {
            k: {s: _plain(v) for s, v in vals.items()} for k, vals in kinds.items()
        }
    topology["nodes"] = nodes
    if lab.links:
        topology["links"] = [_link(link) for link in lab.links]
    return {"name": lab.name, "topology": topology}


def _same(values: set[Any]) -> Any:
    return next(iter(values)) if len(values) == 1 else _MISSING


def _common(nodes: list[ResolvedNode], settings: tuple[str, ...], below: Any) -> dict[str, Any]:
    """The settings on which all ``nodes`` agree, where that differs from ``below(setting)``."""
    out = {}
    for setting in settings:
        value = _same({getattr(n, setting) for n in nodes})
        if value is not _MISSING and value is not None and value != below(setting):
            out[setting] = value
    return out


def _node(node: ResolvedNode, level: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node.kind != DEFAULT_KIND:
        out["kind"] = node.kind
    if node.is_nat:
        assert node.nat is not None
        if node.nat != NatSpec():
            out["management"] = _user_net(node.nat)
    else:
        for setting in _FACTORED:
            value = getattr(node, setting)
            if value != level(setting):
                out[setting] = _plain(value)
        if node.management is not None:
            out["management"] = _user_net(node.management)
    if node.host != level("host"):
        out["host"] = node.host
    if node.position is not None:
        out["position"] = {"x": _number(node.position.x), "y": _number(node.position.y)}
    return out


def _user_net(spec: NatSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "forwards": [
            {"proto": str(f.proto), "host_port": f.host_port, "guest_port": f.guest_port}
            for f in spec.forwards
        ]
    }
    if not spec.restrict:
        out["restrict"] = False
    return out


def _link(link: ResolvedLink) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoints": [str(link.a), str(link.b)]}
    if link.state is not LinkState.UP:
        out["state"] = str(link.state)
    if link.a_to_b == link.b_to_a:
        if not link.a_to_b.is_none:
            out["impairment"] = _impairment(link.a_to_b)
    else:
        ways = {"a_to_b": _impairment(link.a_to_b), "b_to_a": _impairment(link.b_to_a)}
        out["impairment"] = {way: values for way, values in ways.items() if values}
    if link.relayed:
        out["relayed"] = True
    return out


def _impairment(value: Impairment) -> dict[str, Any]:
    zero = Impairment()
    return {
        name: _number(getattr(value, name))
        for name in ("delay_ms", "jitter_ms", "loss_pct", "corrupt_pct", "rate_kbps")
        if getattr(value, name) != getattr(zero, name)
    }


def _number(value: float) -> float | int:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


class _Dumper(yaml.SafeDumper):
    """Short containers of plain values on one line; everything else in block style."""


def _flat(items: list[Any]) -> bool:
    return len(items) <= 4 and not any(isinstance(v, dict | list) for v in items)


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = _flat(list(data.values()))
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=_flat(data))


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
