"""Lab files: parse → resolve, every validation problem at once, export round trips, schema,
and pictures (DOT always; SVG when Graphviz is installed)."""

from __future__ import annotations

import json
import random
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import virtlab.topology as topology
from virtlab.errors import InvalidRequest, ToolFailure
from virtlab.nodes.spec import DiskBus, NicModel
from virtlab.topology import (
    Endpoint,
    GraphvizMissing,
    Impairment,
    LabFileInvalid,
    LinkState,
    NatSpec,
    PortForward,
    Position,
    Proto,
    ResolvedLab,
    ResolvedLink,
    ResolvedNode,
    export_document,
    export_yaml,
    json_schema,
    load_lab,
    parse_lab,
    resolve_lab,
    to_dot,
    to_svg,
)
from virtlab.topology.schema import SCHEMA_FILE, render
from virtlab.topology.specs import natural_key

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> str:
    return (EXAMPLES / name).read_text()


def problems_of(text: str | dict, **kwargs) -> list[str]:
    with pytest.raises(LabFileInvalid) as info:
        load_lab(text, **kwargs)
    assert isinstance(info.value, InvalidRequest)
    assert str(info.value).count("\n  - ") == len(info.value.problems)
    return list(info.value.problems)


def one_problem(text: str | dict) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# --- parse and resolve --------------------------------------------------------------------------


def test_full_example_resolves_node_over_kind_over_defaults():
    lab = load_lab(example("full.yaml"))
    assert lab.name == "full"
    assert [n.name for n in lab.nodes] == ["h1", "nat", "r1", "r2"]

    r1 = lab.node("r1")
    assert (r1.kind, r1.image, r1.cpus, r1.ram_mb, r1.nics) == ("router", "boot.qcow2", 2, 512, 4)
    assert r1.extra_args == ("-device", "virtio-rng-pci")
    assert r1.position == Position(100, 50)
    assert r1.interfaces == ("eth0", "eth1", "eth2", "eth3")

    r2 = lab.node("r2")
    assert (r2.image, r2.cpus, r2.disk_bus, r2.vnc, r2.serial) == (
        "other.qcow2", 1, DiskBus.SATA, False, True,
    )  # fmt: skip

    h1 = lab.node("h1")  # the defaults only, and a management NIC
    assert (h1.kind, h1.ram_mb, h1.nics, h1.nic_model) == ("linux", 256, 2, NicModel.VIRTIO)
    assert h1.management == NatSpec((PortForward(Proto.TCP, 2201, 22),), restrict=True)
    assert h1.nat is None and h1.position is None

    nat = lab.node("nat")
    assert nat.is_nat and nat.image is None and nat.nics == 1 and nat.management is None
    assert nat.host == "local"  # from kinds.nat
    assert nat.nat == NatSpec(
        (PortForward(Proto.TCP, 2222, 22), PortForward(Proto.UDP, 5353, 53)), restrict=True
    )

    links = {(str(link.a), str(link.b)): link for link in lab.links}
    assert list(links) == [("r1:eth0", "nat:eth0"), ("r1:eth1", "r2:eth1"), ("r1:eth2", "h1:eth1")]
    per_way = links["r1:eth1", "r2:eth1"]
    assert per_way.a_to_b == Impairment(delay_ms=100) and per_way.b_to_a == Impairment(loss_pct=5)
    both = links["r1:eth2", "h1:eth1"]
    assert both.state is LinkState.DOWN
    assert both.a_to_b == both.b_to_a == Impairment(delay_ms=20, jitter_ms=5, rate_kbps=10000)
    plain = links["r1:eth0", "nat:eth0"]
    assert plain.state is LinkState.UP and not plain.impaired


def test_impairment_direction_overrides_the_link_values():
    lab = load_lab(
        "name: x\ntopology:\n  defaults: {image: i, nics: 1}\n  nodes: {a: {}, b: {}}\n"
        "  links:\n    - endpoints: [a:eth0, b:eth0]\n"
        "      impairment: {delay_ms: 50, loss_pct: 1, rate_kbps: 64,\n"
        "                   b_to_a: {delay_ms: 0.5, rate_kbps: 0}}\n"
    )
    (link,) = lab.links
    assert link.a_to_b == Impairment(delay_ms=50, loss_pct=1, rate_kbps=64)
    assert link.b_to_a == Impairment(delay_ms=0.5, loss_pct=1)  # rate 0: unlimited


def test_examples_resolve_and_images_can_be_overridden():
    two = load_lab(example("two-routers.yaml"), image_override="disk-1234")
    assert [(n.name, n.image, n.nics) for n in two.nodes] == [
        ("r1", "disk-1234", 1), ("r2", "disk-1234", 1),
    ]  # fmt: skip
    assert [(str(link.a), str(link.b)) for link in two.links] == [("r1:eth0", "r2:eth0")]

    ring = load_lab(example("ring10.yaml"))
    assert [n.name for n in ring.nodes] == [f"n{i}" for i in range(1, 11)]  # natural order
    ends = [str(end) for link in ring.links for end in link.endpoints]
    assert sorted(ends) == sorted(f"n{i}:eth{j}" for i in range(1, 11) for j in (0, 1))

    chain = load_lab(example("chain3.yaml"))
    assert chain.node("r").nics == 2 and chain.node("h1").nics == 1

    assert problems_of(example("two-routers.yaml"), image_override="") == [
        "topology.defaults.image: the image override must be an image's name (line 8)"
    ]

    full = load_lab(example("full.yaml"), image_override="disk-1234")
    assert {n.name: n.image for n in full.nodes} == {
        "h1": "disk-1234", "nat": None, "r1": "disk-1234", "r2": "other.qcow2",
    }  # fmt: skip


def test_parse_then_resolve_equals_load_and_mappings_are_accepted():
    text = example("full.yaml")
    assert resolve_lab(parse_lab(text)) == load_lab(text)
    assert load_lab(text.encode()) == load_lab(text)
    as_json = json.loads(json.dumps(parse_lab(text).model_dump(mode="json", exclude_none=True)))
    assert load_lab(as_json) == load_lab(text)


def test_blank_nodes_and_sections_are_allowed():
    lab = load_lab(
        "name: x\ntopology:\n  defaults: {image: i}\n  kinds:\n  nodes:\n    h1:\n  links:\n"
    )
    assert lab.nodes == (ResolvedNode("h1", image="i"),) and lab.links == ()
    assert load_lab("name: empty\n") == ResolvedLab("empty")


# --- problems, each worded and located -------------------------------------------------------

HEAD = "name: x\ntopology:\n  defaults: {image: boot.qcow2}\n  kinds: {router: {nics: 4}}\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "  nodes:\n    r1: {nics: 40}\n",
            "topology.nodes.r1.nics: must be between 0 and 32, not 40 (line 6)",
        ),
        (
            "  nodes: {r1: {kind: router}, r2: {kind: router}}\n"
            "  links:\n    - endpoints: [r1:eth1, r2:eth1]\n    - endpoints: [r1:eth2, r2:eth2]\n"
            "    - endpoints: [r1:eth5, r2:eth3]\n",
            "topology.links[2].endpoints[0]: r1:eth5 does not exist: r1 has 4 NICs (eth0-eth3)",
        ),
        (
            "  nodes: {r1: {kind: router}, r2: {kind: router}}\n"
            "  links:\n    - endpoints: [r1:eth1, r2:eth2]\n    - endpoints: [r1:eth2, r2:eth1]\n"
            "    - endpoints: [r1:eth3, r2:eth3]\n    - endpoints: [r1:eth0, r2:eth1]\n",
            "topology.links[3].endpoints[1]: r2:eth1 is already used by topology.links[1]",
        ),
        (
            "  nodes:\n    r1: {kind: routr}\n",
            "topology.nodes.r1.kind: unknown kind 'routr' (did you mean 'router'?); "
            "kinds are: linux, nat, router (line 6)",
        ),
        (
            "  nodes:\n    r1: {}\n    r1: {cpus: 2}\n",
            "topology.nodes: duplicate node name 'r1' (first on line 6) (line 7)",
        ),
        (
            "  nodes: {r1: {}}\n  links:\n    - endpoints: [r1-eth1, r1:eth0]\n",
            "topology.links[0].endpoints[0]: 'r1-eth1' is not an endpoint: write an endpoint as "
            "node:ethN, e.g. r1:eth1",
        ),
        (
            "  nodes: {r1: {}}\n  links:\n    - endpoints: [r1:eth0, r1:eth0]\n",
            "topology.links[0].endpoints: a link cannot join r1:eth0 to itself",
        ),
        (
            "  nodes: {r1: {}}\n  links:\n    - endpoints: [r1:eth0, r9:eth0]\n",
            "topology.links[0].endpoints[1]: r9:eth0: no node 'r9' in this lab "
            "(did you mean 'r1'?)",
        ),
        (
            "  nodes: {r1: {}}\n  links:\n    - {endpoints: [r1:eth0]}\n",
            "topology.links[0].endpoints: a link has exactly 2 endpoints, not 1",
        ),
        (
            "  nodes: {r1: {nics: 0}, r2: {}}\n  links:\n    - endpoints: [r1:eth0, r2:eth0]\n",
            "r1:eth0 does not exist: r1 has no NICs (set nics)",
        ),
        (
            "  nodes:\n    bad name: {}\n",
            "topology.nodes: invalid node name 'bad name': a node name is",
        ),
        ("  nodes:\n    1: {}\n", "topology.nodes: node name 1 must be text: quote it ('1')"),
        (
            "  nodes:\n    r1: {disk_bus: floppy}\n",
            "topology.nodes.r1.disk_bus: must be one of 'virtio', 'ide', 'sata' or 'scsi', "
            "not 'floppy'",
        ),
        (
            "  nodes:\n    r1: {cpu: 2}\n",
            "topology.nodes.r1: unknown key 'cpu'; expected one of: image, cpus",
        ),
        (
            "  nodes:\n    r1: {extra_args: [-hda, /etc/passwd]}\n",
            "topology.nodes.r1.extra_args: extra QEMU argument -hda is not allowed",
        ),
        ("  nodes:\n    r1: 5\n", "topology.nodes.r1: must be a mapping (key: value), not 5"),
        ("  nodes: [r1, r2]\n", "topology.nodes: must be a mapping (key: value), not a list"),
    ],
)
def test_each_problem_is_worded_and_located(body: str, expected: str):
    assert expected in one_problem(HEAD + body)


def test_unknown_top_level_key_and_bad_lab_name():
    assert one_problem({"name": "x", "nodes": {}}) == (
        "(the file): unknown top-level key 'nodes'; expected one of: name, topology"
    )
    assert "name: invalid lab name 'my lab': a lab name is 1 to 63" in one_problem(
        {"name": "my lab"}
    )
    assert one_problem({"topology": {}}) == "name: required"


def test_a_node_needs_an_image_unless_it_is_nat():
    message = one_problem(
        "name: x\ntopology:\n  kinds: {router: {}}\n  nodes: {r1: {kind: router}}\n"
    )
    assert message == (
        "topology.nodes.r1: no image: set image on the node, on its kind (topology.kinds.router) "
        "or in topology.defaults (line 4)"
    )


def test_nat_nodes_have_one_nic_no_machine_and_no_impairment():
    problems = problems_of(
        HEAD + "  nodes:\n"
        "    r1: {kind: router}\n"
        "    n1: {kind: nat, nics: 2}\n"
        "    n2: {kind: nat, image: x.qcow2, cpus: 2}\n"
        "    n3: {kind: nat}\n"
        "    n4: {kind: nat}\n"
        "    n5: {kind: nat}\n"
        "  links:\n"
        "    - endpoints: [n3:eth0, n4:eth0]\n"
        "    - {endpoints: [r1:eth1, n5:eth0], impairment: {delay_ms: 5}}\n"
    )
    assert problems == [
        "topology.nodes.n1.nics: a nat node has nics 1, not 2: its one NIC, eth0, serves one "
        "node; give each node that needs a way out a nat node of its own (line 7)",
        "topology.nodes.n2.image: a nat node has no image: it is no machine, only user networking "
        "for the node linked to it (line 8)",
        "topology.nodes.n2.cpus: a nat node has no cpus: it is no machine, only user networking "
        "for the node linked to it (line 8)",
        "topology.links[0]: a link between two nat nodes carries nothing: link a nat node to a "
        "plain node (line 13)",
        "topology.links[1].impairment: a link to a nat node (n5) cannot be impaired: QEMU user "
        "networking has no tunnel to put a relay on (line 14)",
    ]


def test_a_kinds_problem_is_reported_once_however_many_nodes_have_it():
    problems = problems_of(
        "name: x\ntopology:\n  kinds:\n    nat: {image: x.qcow2}\n"
        "  nodes: {n1: {kind: nat}, n2: {kind: nat}}\n"
    )
    assert problems == [
        "topology.kinds.nat.image: a nat node has no image: it is no machine, only user "
        "networking for the node linked to it (line 4)"
    ]


def test_natural_order_of_names():
    names = ["r10", "r2", "16", "a.b0", "r1", "r01", "R1"]
    assert sorted(names, key=natural_key) == ["16", "R1", "a.b0", "r01", "r1", "r2", "r10"]


def test_a_host_port_is_forwarded_once():
    message = one_problem(
        HEAD + "  nodes:\n"
        "    r1: {management: {forwards: [{host_port: 2222, guest_port: 22}]}}\n"
        "    r2: {management: {forwards: [{proto: udp, host_port: 2222, guest_port: 22},\n"
        "                                 {host_port: 2222, guest_port: 80}]}}\n"
    )
    assert message.startswith(
        "topology.nodes.r2.management.forwards[1].host_port: tcp host port 2222 of r2 is already "
        "forwarded to r1 (by topology.nodes.r1.management.forwards[0].host_port)"
    )


def test_every_problem_is_reported_together_in_file_order():
    problems = problems_of(
        "name: x\n"  # 1
        "colour: red\n"  # 2
        "topology:\n"  # 3
        "  defaults: {image: boot.qcow2, nics: 2}\n"  # 4
        "  nodes:\n"  # 5
        "    r1: {nics: 40}\n"  # 6
        "    r2: {kind: routr}\n"  # 7
        "    r3: {}\n"  # 8
        "    r3: {}\n"  # 9
        "  links:\n"  # 10
        "    - endpoints: [r1:eth0, r3:eth0]\n"  # 11  (r1 is broken: not reported again)
        "    - endpoints: [r3:eth1, r4:eth1]\n"  # 12
        "    - endpoints: [r3:eth1, r3:eth0]\n"  # 13  (both ends taken, by links 1 and 0)
        "    - endpoints: [r3:eth2, r3]\n"  # 14
    )
    assert [p.rsplit(" (line ", 1)[1] for p in problems] == [
        "2)", "6)", "7)", "9)", "12)", "13)", "13)", "14)",
    ]  # fmt: skip
    assert "unknown top-level key 'colour'" in problems[0]
    assert "must be between 0 and 32" in problems[1]
    assert "unknown kind 'routr'" in problems[2]
    assert "duplicate node name 'r3'" in problems[3]
    assert "no node 'r4'" in problems[4]
    assert "r3:eth1 is already used by topology.links[1]" in problems[5]
    assert "r3:eth0 is already used by topology.links[0]" in problems[6]
    assert "'r3' is not an endpoint" in problems[7]


def test_files_that_cannot_be_read_at_all():
    assert one_problem("name: [unclosed\n").startswith("(the file): not valid YAML: ")
    assert "(line 2, column 1)" in one_problem("name: [unclosed\n")
    assert (
        one_problem("")
        == "(the file): a lab file is a mapping with name and topology, not an empty file"
    )
    assert one_problem("- a\n- b\n").endswith("not a list")
    assert one_problem(b"name: \xff\n") == "(the file): not UTF-8 text: byte 6 cannot be read"
    assert "python/object:os.system" in one_problem("name: !!python/object:os.system x\n")


def test_yaml_alias_expansion_is_bounded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    assert "expands to more than 200000 values" in one_problem("\n".join(lines) + "\n")


# --- export: the round trip ------------------------------------------------------------------


def _random_lab(seed: int) -> ResolvedLab:
    """A valid lab, built directly as resolved values: what the catalog may hold."""
    rng = random.Random(seed)
    images = ["boot.qcow2", "other.qcow2", "x"][: rng.randint(1, 3)]
    kinds = ["linux", "router", "switch"][: rng.randint(1, 3)]
    nodes, free = [], []
    port = 2000
    for i in range(rng.randint(1, 8)):
        name = rng.choice(["r", "h", "sw-", "1", "yes", "a.b"]) + str(i)
        management = None
        if rng.random() < 0.3:
            port += 1
            management = NatSpec(
                (PortForward(rng.choice(list(Proto)), port, 22),), rng.random() < 0.7
            )
        node = ResolvedNode(
            name=name,
            kind=rng.choice(kinds),
            image=rng.choice(images),
            cpus=rng.choice([1, 1, 2]),
            ram_mb=rng.choice([128, 256, 512]),
            disk_bus=rng.choice(list(DiskBus)),
            nics=rng.randint(0, 4),
            nic_model=rng.choice([NicModel.VIRTIO, NicModel.E1000]),
            disk_size_mb=rng.choice([None, None, 64]),
            serial=rng.random() < 0.8,
            vnc=rng.random() < 0.5,
            extra_args=rng.choice([(), ("-usb",), ("-k", "de")]),
            host=rng.choice([None, None, "h1"]),
            management=management,
            position=rng.choice([None, Position(rng.randint(0, 900), rng.random() * 100)]),
        )
        nodes.append(node)
        free += [Endpoint(name, nic) for nic in range(node.nics)]
    if rng.random() < 0.5:
        port += 1
        nat = NatSpec((PortForward(Proto.TCP, port, 22),), restrict=rng.random() < 0.5)
        nodes.append(ResolvedNode(f"nat{seed}", kind="nat", nat=nat, host=rng.choice([None, "h1"])))
        free.append(Endpoint(f"nat{seed}", 0))
    rng.shuffle(free)
    links = []
    while len(free) >= 2:
        a, b = free.pop(), free.pop()
        if a.node.startswith("nat") and b.node.startswith("nat"):
            continue
        plain = a.node.startswith("nat") or b.node.startswith("nat") or rng.random() < 0.4
        a_to_b = (
            Impairment() if plain else Impairment(delay_ms=rng.choice([0, 100, 0.5]), loss_pct=2.5)
        )
        b_to_a = a_to_b if rng.random() < 0.5 else Impairment(rate_kbps=rng.choice([0, 64]))
        b_to_a = Impairment() if plain else b_to_a
        state = rng.choice([LinkState.UP, LinkState.UP, LinkState.DOWN])
        links.append(ResolvedLink(a, b, state, a_to_b, b_to_a))
    return ResolvedLab(f"lab{seed}", tuple(nodes), tuple(links))


@pytest.mark.parametrize("name", ["full.yaml", "two-routers.yaml", "ring10.yaml", "chain3.yaml"])
def test_export_of_an_example_redeploys_to_the_same_lab(name: str):
    lab = load_lab(example(name))
    exported = export_yaml(lab)
    assert load_lab(exported) == lab
    assert export_yaml(load_lab(exported)) == exported  # a fixed point


@pytest.mark.parametrize("seed", range(40))
def test_export_round_trips_any_lab(seed: int):
    lab = _random_lab(seed)
    assert load_lab(export_yaml(lab)) == lab.canonical()
    assert load_lab(export_document(lab)) == lab.canonical()


def test_export_factors_shared_values_and_is_deterministic():
    ring = load_lab(example("ring10.yaml"))
    document = export_document(ring)
    assert document["topology"]["defaults"] == {
        "image": "boot.qcow2", "ram_mb": 128, "nics": 2, "vnc": False,
    }  # fmt: skip
    assert all(node == {} for node in document["topology"]["nodes"].values())
    assert list(document["topology"]["nodes"])[:3] == ["n1", "n2", "n3"]
    assert "n10: {}" in export_yaml(ring)

    chain = export_document(load_lab(example("chain3.yaml")))
    assert chain["topology"]["kinds"] == {"host": {}, "router": {"nics": 2}}
    assert chain["topology"]["defaults"] == {"image": "boot.qcow2", "ram_mb": 128}

    shuffled = ResolvedLab(ring.name, ring.nodes[::-1], ring.links[::-1])
    assert export_yaml(shuffled) == export_yaml(ring)


# --- JSON Schema -----------------------------------------------------------------------------


def test_committed_schema_is_up_to_date():
    assert SCHEMA_FILE.read_text() == render(), (
        "regenerate: python -m virtlab.topology.schema > "
        "src/virtlab/topology/virtlab-lab.schema.json"
    )
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema == json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] == "virtlab lab file"
    assert schema["additionalProperties"] is False and schema["required"] == ["name"]
    node = schema["$defs"]["NodeConfig"]["properties"]
    assert node["nics"]["anyOf"][0] == {"maximum": 32, "minimum": 0, "type": "integer"}
    assert "description" in node["management"]


def test_examples_and_exports_validate_against_the_schema():
    import jsonschema  # the test extra has it: the published schema must hold for real files
    import yaml

    jsonschema.Draft202012Validator.check_schema(json_schema())
    validator = jsonschema.Draft202012Validator(json_schema())
    for path in sorted(EXAMPLES.glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()))
    for seed in range(10):
        validator.validate(export_document(_random_lab(seed)))


# --- pictures --------------------------------------------------------------------------------


def test_dot_has_every_node_and_edge():
    lab = load_lab(example("full.yaml"))
    dot = to_dot(lab)
    assert dot.startswith('graph "full" {') and dot.rstrip().endswith("}")
    for node in lab.nodes:
        assert f'  "{node.name}" [label="{node.name}\\n' in dot
    assert '"r1" [label="r1\\nboot.qcow2"' in dot and "NAT (user networking)" in dot
    edges = [line for line in dot.splitlines() if " -- " in line]
    assert len(edges) == len(lab.links)
    assert '"r1" -- "r2" [taillabel="eth1", headlabel="eth1", label="→ 100 ms\\n← loss 5%"' in dot
    assert '"r1" -- "h1" [taillabel="eth2", headlabel="eth1", style=dashed' in dot
    assert to_dot(load_lab(example("ring10.yaml"))).count(" -- ") == 10


def test_dot_quotes_what_it_is_given():
    lab = ResolvedLab('la"b', (ResolvedNode("a", image='we"ird\\name'),))
    assert '"a" [label="a\\nwe\\"ird\\\\name"];' in to_dot(lab)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_svg_is_drawn_by_graphviz():
    lab = load_lab(example("full.yaml"))
    svg = to_svg(lab)
    root = ET.fromstring(svg.encode())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for node in lab.nodes:
        assert f">{node.name}<" in svg


def test_svg_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz") as info:
        to_svg(ResolvedLab("x"))
    assert isinstance(info.value, ToolFailure)
    with pytest.raises(GraphvizMissing, match="cannot run"):
        to_svg(ResolvedLab("x"), dot_binary=str(tmp_path / "dot"))


# --- the public surface ----------------------------------------------------------------------


def test_public_surface():
    assert topology.__all__ == sorted(topology.__all__, key=lambda n: (not n.isupper(), n))
    for name in topology.__all__:
        assert hasattr(topology, name), name
    assert topology.json_schema() == json_schema()
    assert topology.BUILTIN_KINDS["nat"].machine is False
