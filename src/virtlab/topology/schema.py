"""The JSON Schema of lab files, for editors and for anyone writing a file by hand.

Generated from the pydantic models (the models stay the source of truth: validation is theirs)
and committed next to this module as ``virtlab-lab.schema.json``; regenerate it with::

    python -m virtlab.topology.schema > src/virtlab/topology/virtlab-lab.schema.json

An editor with the YAML language server picks it up from a first line such as
``# yaml-language-server: $schema=/path/to/virtlab-lab.schema.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from virtlab.topology.model import LabFile

__all__ = ["SCHEMA_DIALECT", "SCHEMA_FILE", "SCHEMA_ID", "json_schema", "render"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:virtlab:schema:lab-file:1"
SCHEMA_FILE = Path(__file__).with_name("virtlab-lab.schema.json")
_DESCRIPTION = (
    "A virtlab lab file: nodes (QEMU machines on catalog images, or nat nodes), the links "
    "between their NICs, and settings shared through topology.defaults and topology.kinds "
    "(a node's own value wins over its kind's, which wins over the defaults)."
)


def json_schema() -> dict[str, Any]:
    """The schema of a lab file, with its dialect, id and title."""
    generated = LabFile.model_json_schema()
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "virtlab lab file",
        "description": _DESCRIPTION,
        **generated,
    }


def render() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # pragma: no cover - exercised through the committed file's test
    print(render(), end="")
