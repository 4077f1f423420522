"""The errors of libvirt hosts, in virtlab's one tree (:mod:`virtlab.errors`)::

    Conflict
     └── HostUnreachable        the host's daemon does not answer (or refused us)
    ToolFailure
     └── HostFailure            the host answered with an error: carries libvirt's code

Phase 2 moves these two into :mod:`virtlab.errors` (HostUnreachable maps to 503).
"""

from __future__ import annotations

from virtlab.errors import Conflict, ToolFailure

__all__ = ["HostFailure", "HostUnreachable"]


class HostUnreachable(Conflict):
    """A host's libvirt daemon cannot be reached now."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class HostFailure(ToolFailure):
    """A host's libvirt refused or failed a call; ``code`` is libvirt's error number."""

    def __init__(self, message: str, host: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.code = code
