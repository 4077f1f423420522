"""The errors of libvirt hosts, which live in virtlab's one tree (:mod:`virtlab.errors`)::

    Conflict
     └── HostUnreachable        the host's daemon does not answer (or refused us)
    ToolFailure
     └── HostFailure            the host answered with an error: carries libvirt's code

Re-exported here for the modules of this package.
"""

from __future__ import annotations

from virtlab.errors import HostFailure, HostUnreachable

__all__ = ["HostFailure", "HostUnreachable"]
