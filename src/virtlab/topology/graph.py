"""A picture of a lab: Graphviz DOT text, and SVG drawn by Graphviz's ``dot``.

``to_dot`` is pure. ``to_svg`` runs ``dot -Tsvg`` (Debian package ``graphviz``) with the DOT on
its standard input, under a timeout, with no shell; it opens no network connection and reads no
file (the DOT written here names no images or includes). Node labels carry the node's name and
image; edges carry the interface at each end; a link that is down is dashed, an impaired link
red and labelled with its impairment.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from virtlab.errors import ToolFailure
from virtlab.topology.model import LinkState
from virtlab.topology.specs import FORWARD_HOST, Impairment, ResolvedLab, ResolvedLink, ResolvedNode

__all__ = ["GraphvizMissing", "to_dot", "to_svg"]

_TAIL = 2000


class GraphvizMissing(ToolFailure):
    """Graphviz's ``dot`` is not installed on the server, so no SVG can be drawn."""


def _quote(text: str) -> str:
    """A DOT double-quoted string; a newline becomes DOT's centred line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _node_line(node: ResolvedNode) -> str:
    if node.nat is not None:
        forwards = [
            f"{f.proto} {FORWARD_HOST}:{f.host_port}→{f.guest_port}" for f in node.nat.forwards
        ]
        label = "\n".join([node.name, "NAT (user networking)", *forwards])
        attrs = f"label={_quote(label)}, shape=ellipse, style=dashed"
    else:
        label = f"{node.name}\n{node.image}"
        attrs = f"label={_quote(label)}"
        if node.kind != "linux":
            attrs += f", tooltip={_quote('kind ' + node.kind)}"
    return f"  {_quote(node.name)} [{attrs}];"


def _impairment_text(way: Impairment) -> str:
    parts = []
    if way.delay_ms or way.jitter_ms:
        parts.append(
            f"{way.delay_ms:g}±{way.jitter_ms:g} ms" if way.jitter_ms else f"{way.delay_ms:g} ms"
        )
    if way.loss_pct:
        parts.append(f"loss {way.loss_pct:g}%")
    if way.corrupt_pct:
        parts.append(f"corrupt {way.corrupt_pct:g}%")
    if way.rate_kbps:
        parts.append(f"{way.rate_kbps} kbit/s")
    return ", ".join(parts) or "none"


def _edge_line(link: ResolvedLink) -> str:
    attrs = [f"taillabel={_quote(link.a.iface)}", f"headlabel={_quote(link.b.iface)}"]
    if link.state is LinkState.DOWN:
        attrs.append("style=dashed")
    if link.impaired:
        if link.a_to_b == link.b_to_a:
            text = _impairment_text(link.a_to_b)
        else:
            text = f"→ {_impairment_text(link.a_to_b)}\n← {_impairment_text(link.b_to_a)}"
        attrs.append(f'label={_quote(text)}, color="red3", fontcolor="red3"')
    elif link.state is LinkState.DOWN:
        attrs.append('color="gray50"')
    return f"  {_quote(link.a.node)} -- {_quote(link.b.node)} [{', '.join(attrs)}];"


def to_dot(lab: ResolvedLab) -> str:
    """The lab as an undirected Graphviz graph, in canonical order (same lab, same text)."""
    lab = lab.canonical()
    lines = [
        f"graph {_quote(lab.name)} {{",
        f'  graph [label={_quote(lab.name)}, labelloc="t", fontname="Helvetica"];',
        '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
        *(_node_line(node) for node in lab.nodes),
        *(_edge_line(link) for link in lab.links),
        "}",
    ]
    return "\n".join(lines) + "\n"


def to_svg(lab: ResolvedLab, *, timeout: float = 20.0, dot_binary: str | None = None) -> str:
    """The lab drawn as SVG by ``dot``; raise :class:`GraphvizMissing` if it is not installed."""
    binary = dot_binary or shutil.which("dot")
    if binary is None:
        raise GraphvizMissing(
            "cannot draw SVG: Graphviz's dot is not installed on the server "
            "(apt-get install graphviz); ask for the DOT text instead"
        )
    argv = [binary, "-Tsvg"]
    try:
        proc = subprocess.run(
            argv,
            input=to_dot(lab),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolFailure(f"dot took more than {timeout:g} s to draw lab {lab.name}", argv) from exc
    except OSError as exc:
        raise GraphvizMissing(f"cannot run {binary}: {exc.strerror}", argv) from exc
    if proc.returncode != 0 or "<svg" not in proc.stdout:
        raise ToolFailure(
            f"dot failed to draw lab {lab.name} (exit status {proc.returncode})",
            argv,
            proc.returncode,
            proc.stderr[-_TAIL:],
        )
    return proc.stdout
