"""Lab use cases: create, list, deploy from a topology file (all or nothing), start, stop,
destroy, export back to YAML, graph.

| module | owns |
| --- | --- |
| ``reading`` | labs by name, summaries, the catalog's lab resolved, exported and drawn |
| ``running`` | start (a few at a time, RAM promised first), stop, destroy |
| ``deploy`` | a file made into nodes and links, all or nothing; limits up front; intents |

:class:`LabService` is the three, one on top of the other.
"""

from __future__ import annotations

from virtlab.services.labs.deploy import LabDeploy
from virtlab.services.labs.reading import LabSummary

__all__ = ["LabService", "LabSummary"]


class LabService(LabDeploy):
    """Labs: read (``reading.py``), run (``running.py``) and deployed (``deploy.py``)."""
