"""The one error tree of virtlab.

Every error a person may see derives from :class:`VirtlabError`. Its message says what happened,
to what, and what to do next. The API maps each class to an HTTP status through
``virtlab.api.errors``; the CLI prints the message as it is.

::

    VirtlabError
     ├── Unauthorized              no valid session or token                 (401)
     ├── Forbidden                 known, but not allowed to do this         (403)
     ├── TooManyAttempts           failed logins: wait before the next try   (429)
     ├── TooManyImports            the imports in flight are at their limit  (429)
     ├── NotFound                  a named thing does not exist              (404)
     ├── Conflict                  the request clashes with current state    (409)
     │    ├── ImageInUse           an image is needed by something else      (409)
     │    ├── LimitReached         nodes per user, or RAM promised to nodes  (409)
     │    └── HostUnreachable      a host's libvirt daemon does not answer   (409)
     ├── InvalidRequest            a request is malformed (bad name, field)  (400/422)
     ├── ImageRejected             an uploaded image is refused              (422)
     │    ├── UnsupportedImage     no format virtlab accepts                 (415)
     │    ├── UnsafeImage          it would make qemu read other files, or
     │    │                        features we cannot trust                  (422)
     │    ├── CorruptImage         damaged: truncated, bad tables            (422)
     │    └── TooLarge             past a size cap (upload, expanded, virtual)(413)
     ├── InsufficientStorage       the data directory's disk is full         (507)
     ├── CatalogBusy               the catalog database stayed locked        (503)
     └── ToolFailure               an external tool failed unexpectedly      (500)
          └── HostFailure          a host's libvirt answered with an error   (500)

Failures carry their evidence as attributes (the tool's argv, exit code, stderr tail) so that
logs can show it while the message stays short.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CatalogBusy",
    "Conflict",
    "CorruptImage",
    "Forbidden",
    "HostFailure",
    "HostUnreachable",
    "ImageInUse",
    "ImageRejected",
    "InsufficientStorage",
    "InvalidRequest",
    "LimitReached",
    "NotFound",
    "TooLarge",
    "TooManyAttempts",
    "TooManyImports",
    "ToolFailure",
    "Unauthorized",
    "UnsafeImage",
    "UnsupportedImage",
    "VirtlabError",
]


class VirtlabError(Exception):
    """Root of every error virtlab raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Unauthorized(VirtlabError):
    """A request came with no credentials, or with a token that is unknown, expired or revoked."""


class Forbidden(VirtlabError):
    """The requester is known but may not do this (their role, or a request from another site)."""


class TooManyAttempts(VirtlabError):
    """Too many failed logins for one user from one address: wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyImports(VirtlabError):
    """As many imports as allowed are in flight (for the server, or for this user): try again
    after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(VirtlabError):
    """A named thing does not exist."""


class Conflict(VirtlabError):
    """The request clashes with the current state of something."""


class ImageInUse(Conflict):
    """An image cannot be removed or changed because something depends on it."""

    def __init__(self, message: str, users: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.users = tuple(users)


class LimitReached(Conflict):
    """A limit of the server would be passed: nodes per user, or the RAM promised to running
    nodes against the host's memory. Nothing was made or started."""


class HostUnreachable(Conflict):
    """A host's libvirt daemon cannot be reached now (``host``: its name)."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class InvalidRequest(VirtlabError):
    """A request is malformed: a bad name, a missing field, an unknown option."""


class ImageRejected(VirtlabError):
    """An uploaded or found image is refused; nothing of it is kept."""


class UnsupportedImage(ImageRejected):
    """The content is not a format virtlab accepts."""


class UnsafeImage(ImageRejected):
    """The image would make qemu read other files, or has features that cannot be trusted."""


class CorruptImage(ImageRejected):
    """The image is damaged: truncated, inconsistent tables, failed checks."""


class TooLarge(ImageRejected):
    """A size cap was passed: upload size, expanded size of an archive, or virtual size."""


class InsufficientStorage(VirtlabError):
    """The data directory's file system ran out of space."""


class CatalogBusy(VirtlabError):
    """The catalog database stayed locked by another writer past the busy timeout; nothing was
    changed. Try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ToolFailure(VirtlabError):
    """An external tool (qemu-img, qemu) failed in a way that is not the input's fault."""

    def __init__(
        self,
        message: str,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


class HostFailure(ToolFailure):
    """A host's libvirt refused or failed a call; ``code`` is libvirt's error number."""

    def __init__(self, message: str, host: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.code = code
