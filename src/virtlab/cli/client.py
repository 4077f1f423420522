"""The CLI's HTTP client: the server's URL, its token, and errors turned into one readable line.

The token is ``VIRTLAB_TOKEN``, else the one ``virtlab login`` kept for that server's URL in
``$XDG_CONFIG_HOME/virtlab/credentials.json`` (``~/.config/…``; mode 0600, only its owner may
read it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "Client",
    "credentials_path",
    "forget_token",
    "server_url",
    "store_token",
    "stored_token",
]

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """The server refused a request, or could not be reached; the message says which."""


def server_url(url: str | None = None) -> str:
    return (url or os.environ.get("VIRTLAB_URL") or DEFAULT_URL).rstrip("/")


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "virtlab" / "credentials.json"


def _read_credentials() -> dict[str, Any]:
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_credentials(data: dict[str, Any]) -> None:
    """Atomically, readable by its owner only (the file and its directory)."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stored_token(url: str) -> str | None:
    entry = _read_credentials().get(url)
    return entry.get("token") if isinstance(entry, dict) else None


def store_token(url: str, token: str, user: str) -> Path:
    data = _read_credentials()
    data[url] = {"token": token, "user": user}
    _write_credentials(data)
    return credentials_path()


def forget_token(url: str) -> bool:
    data = _read_credentials()
    if data.pop(url, None) is None:
        return False
    _write_credentials(data)
    return True


class Client:
    def __init__(
        self, url: str | None = None, timeout: float = 30.0, token: str | None = None
    ) -> None:
        self.url = server_url(url)
        if token is None:
            token = os.environ.get("VIRTLAB_TOKEN") or stored_token(self.url)
        self.token = token or None
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization`` for the token, if any: for requests and WebSockets alike."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ApiError(
                f"cannot reach the virtlab server at {self.url} ({exc}); start it with "
                "`virtlab serve` (or `make serve`), or point --url / VIRTLAB_URL at it"
            ) from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"talking to {self.url} failed: {exc}") from exc
        return raise_for(response)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def close(self) -> None:
        self.http.close()


def raise_for(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail
        )
    raise ApiError(
        f"{detail or response.text or response.reason_phrase} (HTTP {response.status_code})"
    )
