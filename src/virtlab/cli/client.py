"""The CLI's HTTP client: the server's URL, and errors turned into one readable line."""

from __future__ import annotations

import os
from typing import Any

import httpx

__all__ = ["DEFAULT_URL", "ApiError", "Client"]

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """The server refused a request, or could not be reached; the message says which."""


class Client:
    def __init__(self, url: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("VIRTLAB_URL") or DEFAULT_URL).rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

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
