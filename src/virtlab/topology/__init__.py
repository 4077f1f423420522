"""Lab files: parse → resolve (node > kind > defaults) → export, graph; and their JSON Schema.

A lab file, in the spirit of containerlab's::

    name: lab1
    topology:
      defaults: {image: boot.qcow2, nics: 2}
      kinds: {router: {ram_mb: 512, nics: 4}}
      nodes:
        r1: {kind: router}
        r2: {kind: router, cpus: 2}
        h1: {}
      links:
        - endpoints: ["r1:eth1", "r2:eth1"]
          impairment: {delay_ms: 20, b_to_a: {loss_pct: 5}}

``load_lab(text)`` gives a :class:`ResolvedLab` or raises :class:`LabFileInvalid` listing every
problem; ``export_yaml(lab)`` writes a lab back; ``to_dot`` / ``to_svg`` draw it;
``json_schema()`` describes the file for editors.
"""

from typing import Any

from virtlab.topology._problems import LabFileInvalid
from virtlab.topology.export import export_document, export_yaml
from virtlab.topology.graph import GraphvizMissing, to_dot, to_svg
from virtlab.topology.kinds import BUILTIN_KINDS, BuiltinKind
from virtlab.topology.model import LabFile, LinkState, Proto
from virtlab.topology.resolve import load_lab, parse_lab, resolve_lab
from virtlab.topology.specs import (
    FORWARD_HOST,
    Endpoint,
    Impairment,
    NatSpec,
    PortForward,
    Position,
    ResolvedLab,
    ResolvedLink,
    ResolvedNode,
)

__all__ = [
    "BUILTIN_KINDS",
    "FORWARD_HOST",
    "BuiltinKind",
    "Endpoint",
    "GraphvizMissing",
    "Impairment",
    "LabFile",
    "LabFileInvalid",
    "LinkState",
    "NatSpec",
    "PortForward",
    "Position",
    "Proto",
    "ResolvedLab",
    "ResolvedLink",
    "ResolvedNode",
    "export_document",
    "export_yaml",
    "json_schema",
    "load_lab",
    "parse_lab",
    "resolve_lab",
    "to_dot",
    "to_svg",
]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of lab files (see ``virtlab.topology.schema``)."""
    # Imported here, not above: ``python -m virtlab.topology.schema`` must find it unimported.
    from virtlab.topology import schema

    return schema.json_schema()
