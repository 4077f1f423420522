"""Parse a lab file, then resolve it into a :class:`~virtlab.topology.specs.ResolvedLab`.

Two stages, one report. *Parse* reads YAML (PyYAML's safe loader) or an already-parsed mapping
into the models of ``virtlab.topology.model``. *Resolve* fills every node's settings, most
specific first (node > kind > ``topology.defaults`` > builtin defaults; a value replaces, lists
included, never merges) and checks what refers to what: kinds, link endpoints and NIC numbers,
interfaces used twice, host ports forwarded twice.

Every problem is collected, parse and resolve alike: a node that fails to parse is left out of
resolution (and links to it are not reported again), so one :class:`LabFileInvalid` lists them
all, each with its location (``topology.nodes.r1.nics: must be between 0 and 32 (line 7)``).

``image_override`` replaces ``topology.defaults.image``: an example file written with a
placeholder image (``boot.qcow2``) deploys on whatever the catalog holds; a node or kind naming
an image of its own keeps it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from virtlab.errors import InvalidRequest
from virtlab.names import NODE
from virtlab.nodes.qemu.extra_args import check_extra_args
from virtlab.topology._parse import KINDS, LINKS, NODES, Parsed, Source, parse
from virtlab.topology._problems import LabFileInvalid, Loc, Problems, format_loc
from virtlab.topology.kinds import BUILTIN_KINDS, DEFAULT_KIND, BuiltinKind
from virtlab.topology.model import (
    DirectionImpairmentConfig,
    ImpairmentConfig,
    KindConfig,
    LabFile,
    LinkConfig,
    ManagementConfig,
    NodeConfig,
    NodeDefaults,
    TopologyDefaults,
)
from virtlab.topology.specs import (
    BUILTIN_DEFAULTS,
    NODE_SETTINGS,
    Endpoint,
    Impairment,
    NatSpec,
    PortForward,
    Position,
    ResolvedLab,
    ResolvedLink,
    ResolvedNode,
)

__all__ = ["LabFileInvalid", "load_lab", "parse_lab", "resolve_lab"]

_DEFAULTS: Loc = ("topology", "defaults")


def load_lab(source: Source, *, image_override: str | None = None) -> ResolvedLab:
    """Parse and resolve a lab file (YAML text, or a mapping already parsed from JSON/YAML).

    Raises :class:`LabFileInvalid` (an ``InvalidRequest``) listing every problem found.
    """
    problems = Problems()
    parsed = parse(source, problems)
    lab = _Resolver(parsed, problems, image_override).run() if parsed.lab else None
    problems.raise_if_any()
    assert lab is not None
    return lab


def parse_lab(source: Source) -> LabFile:
    """The file as written (no defaults filled in, no references checked)."""
    problems = Problems()
    parsed = parse(source, problems)
    problems.raise_if_any()
    assert parsed.lab is not None
    return parsed.lab


def resolve_lab(lab: LabFile, *, image_override: str | None = None) -> ResolvedLab:
    """Resolve a parsed file: settings filled in, references checked."""
    problems = Problems()
    resolved = _Resolver(Parsed(lab), problems, image_override).run()
    problems.raise_if_any()
    return resolved


# --- resolve --------------------------------------------------------------------------------


class _Resolver:
    def __init__(self, parsed: Parsed, problems: Problems, image_override: str | None) -> None:
        assert parsed.lab is not None
        self.lab = parsed.lab
        self.parsed = parsed
        self.problems = problems
        self.defaults = self.lab.topology.defaults or TopologyDefaults()
        if image_override is not None:
            if not 1 <= len(image_override) <= 255:
                problems.add((*_DEFAULTS, "image"), "the image override must be an image's name")
            self.defaults = self.defaults.model_copy(update={"image": image_override})
        self.kinds: dict[str, KindConfig] = dict(self.lab.topology.kinds or {})
        self.nodes: dict[str, ResolvedNode] = {}
        self.skipped: set[str] = set(parsed.broken_nodes)  # exist, but unresolved
        self.forward_locs: dict[str, Loc] = {}  # node -> where its forwards were written

    def run(self) -> ResolvedLab:
        self._check_case_clashes()
        for name, config in self.lab.topology.nodes.items():
            node = self._node(name, config or NodeConfig())
            if node is None:
                self.skipped.add(name)
            else:
                self.nodes[name] = node
        self._check_forwards()
        links = self._links(self.lab.topology.links)
        return ResolvedLab(self.lab.name, tuple(self.nodes.values()), tuple(links)).canonical()

    # nodes

    def _check_case_clashes(self) -> None:
        """Node names that differ only in case collide (virtlab.names: ``nodes/R1.qcow2`` and
        ``nodes/r1.qcow2`` are one file on a case-insensitive file system)."""
        seen: list[str] = []
        for name in self.lab.topology.nodes:
            other = NODE.clash(name, seen)
            if other is not None:
                self.problems.add(
                    (*NODES, name),
                    f"node {name!r} collides with node {other!r}: node names that differ only "
                    "in case collide; rename one",
                )
            seen.append(name)

    def _kind_of(self, name: str, config: NodeConfig) -> tuple[str, Loc]:
        if config.kind is not None:
            return config.kind, (*NODES, name, "kind")
        if self.defaults.kind is not None:
            return self.defaults.kind, (*_DEFAULTS, "kind")
        return DEFAULT_KIND, (*NODES, name)

    def _node(self, name: str, config: NodeConfig) -> ResolvedNode | None:
        kind, kind_loc = self._kind_of(name, config)
        if kind in self.parsed.broken_kinds:
            return None
        builtin = BUILTIN_KINDS.get(kind) or (
            BUILTIN_KINDS[DEFAULT_KIND] if kind in self.kinds else None
        )
        if builtin is None:
            known = sorted({*BUILTIN_KINDS, *self.kinds})
            self.problems.add(
                kind_loc,
                f"unknown kind {kind!r}{_hint(kind, known)}; kinds are: {', '.join(known)}",
            )
            return None
        loc = (*NODES, name)
        layers: list[tuple[NodeDefaults, Loc, Iterable[str]]] = [
            (config, loc, builtin.settings),
            (self.kinds.get(kind) or KindConfig(), (*KINDS, kind), builtin.settings),
            (self.defaults, _DEFAULTS, builtin.from_defaults),
        ]
        values: dict[str, Any] = {}
        sources: dict[str, Loc] = {}
        for setting in NODE_SETTINGS:
            for layer, layer_loc, allowed in layers:
                value = getattr(layer, setting)
                if value is None:
                    continue
                if setting not in allowed:
                    if layer_loc != _DEFAULTS:
                        self._refuse(builtin, (*layer_loc, setting), setting)
                    continue
                values[setting], sources[setting] = value, (*layer_loc, setting)
                break
        ok = self._check_node(name, kind, builtin, values, sources)
        return self._build(name, kind, builtin, values, sources, config) if ok else None

    def _refuse(self, builtin: BuiltinKind, loc: Loc, setting: str) -> None:
        self.problems.add(loc, f"a {builtin.name} node has no {setting}: {builtin.why}")

    def _check_node(
        self,
        name: str,
        kind: str,
        builtin: BuiltinKind,
        values: dict[str, Any],
        sources: dict[str, Loc],
    ) -> bool:
        ok = True
        for setting, fixed in builtin.fixed.items():
            if setting in values and values[setting] != fixed:
                ok = False
                self.problems.add(
                    sources[setting],
                    f"a {builtin.name} node has {setting} {fixed}, not {values[setting]}: "
                    f"{builtin.why_fixed}",
                )
        if builtin.machine and values.get("image") is None:
            ok = False
            self.problems.add(
                (*NODES, name),
                f"no image: set image on the node, on its kind ({format_loc((*KINDS, kind))}) "
                f"or in {format_loc(_DEFAULTS)}",
            )
        if values.get("extra_args"):
            try:
                values["extra_args"] = check_extra_args(values["extra_args"])
            except InvalidRequest as exc:
                ok = False
                self.problems.add(sources["extra_args"], exc.message)
        return ok

    def _build(
        self,
        name: str,
        kind: str,
        builtin: BuiltinKind,
        values: dict[str, Any],
        sources: dict[str, Loc],
        config: NodeConfig,
    ) -> ResolvedNode:
        settings = {**BUILTIN_DEFAULTS, **builtin.fixed, **values}
        settings["extra_args"] = tuple(settings["extra_args"])
        user_net = _nat_spec(values.get("management"))
        if user_net is not None:
            self.forward_locs[name] = (*sources["management"], "forwards")
        if builtin.machine:
            settings["management"] = user_net
            nat = None
        else:
            settings["management"] = None
            nat = user_net or NatSpec()
        position = Position(config.position.x, config.position.y) if config.position else None
        return ResolvedNode(name=name, kind=kind, position=position, nat=nat, **settings)

    def _check_forwards(self) -> None:
        first: dict[tuple[str, int], tuple[str, Loc]] = {}
        for name, node in self.nodes.items():
            spec = node.nat or node.management
            for index, forward in enumerate(spec.forwards if spec else ()):
                key = (str(forward.proto), forward.host_port)
                loc = (*self.forward_locs[name], index, "host_port")
                if key in first:
                    owner, where = first[key]
                    self.problems.add(
                        loc,
                        f"{key[0]} host port {key[1]} of {name} is already forwarded to {owner} "
                        f"(by {format_loc(where)})",
                    )
                else:
                    first[key] = (name, loc)

    # links

    def _links(self, links: list[LinkConfig]) -> list[ResolvedLink]:
        index = self.parsed.link_index or list(range(len(links)))
        used: dict[Endpoint, int] = {}
        resolved = []
        for position, link in zip(index, links, strict=True):
            loc = (*LINKS, position)
            ends = tuple(Endpoint.parse(text) for text in link.endpoints)
            if ends[0] == ends[1]:
                self.problems.add((*loc, "endpoints"), f"a link cannot join {ends[0]} to itself")
                continue
            ok = True
            for j, end in enumerate(ends):
                ok = self._check_end(end, (*loc, "endpoints", j), used, position) and ok
            ok = ok and self._check_nat(link, ends, loc)
            if ok:
                a_to_b, b_to_a = _impairments(link.impairment)
                resolved.append(
                    ResolvedLink(ends[0], ends[1], link.state, a_to_b, b_to_a, link.relayed)
                )
        return resolved

    def _check_end(self, end: Endpoint, loc: Loc, used: dict[Endpoint, int], position: int) -> bool:
        if end.node in self.skipped:
            return False  # its own problems are reported already
        node = self.nodes.get(end.node)
        if node is None:
            self.problems.add(
                loc, f"{end}: no node {end.node!r} in this lab{_hint(end.node, self.nodes)}"
            )
            return False
        if end.nic >= node.nics:
            self.problems.add(loc, f"{end} does not exist: {node.name} has {_nic_range(node.nics)}")
            return False
        if end in used:
            self.problems.add(loc, f"{end} is already used by {format_loc((*LINKS, used[end]))}")
            return False
        used[end] = position
        return True

    def _check_nat(self, link: LinkConfig, ends: tuple[Endpoint, ...], loc: Loc) -> bool:
        nats = [end.node for end in ends if self.nodes[end.node].is_nat]
        if len(nats) == 2:
            self.problems.add(
                loc, "a link between two nat nodes carries nothing: link a nat node to a plain node"
            )
            return False
        a_to_b, b_to_a = _impairments(link.impairment)
        if nats and not (a_to_b.is_none and b_to_a.is_none):
            self.problems.add(
                (*loc, "impairment"),
                f"a link to a nat node ({nats[0]}) cannot be impaired: QEMU user networking has "
                "no tunnel to put a relay on",
            )
            return False
        return True


def _nic_range(count: int) -> str:
    if count == 0:
        return "no NICs (set nics)"
    if count == 1:
        return "1 NIC (eth0)"
    return f"{count} NICs (eth0-eth{count - 1})"


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _nat_spec(config: ManagementConfig | None) -> NatSpec | None:
    if config is None:
        return None
    forwards = tuple(PortForward(f.proto, f.host_port, f.guest_port) for f in config.forwards)
    return NatSpec(forwards, config.restrict)


_IMPAIRMENT_FIELDS = tuple(DirectionImpairmentConfig.model_fields)


def _impairments(config: ImpairmentConfig | None) -> tuple[Impairment, Impairment]:
    """Both ways: a direction's own value, else the link's value, else none."""
    if config is None:
        return Impairment(), Impairment()

    def one(direction: DirectionImpairmentConfig | None) -> Impairment:
        values = {}
        for name in _IMPAIRMENT_FIELDS:
            value = getattr(direction, name) if direction is not None else None
            value = getattr(config, name) if value is None else value
            if value is not None:
                values[name] = value
        return Impairment(**values)

    return one(config.a_to_b), one(config.b_to_a)
