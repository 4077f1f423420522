"""Serving the web UI's build: the index at /, hashed assets cached for good, and without a
build a page at / that says how to make one (the API runs either way)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from fastapi import FastAPI

from virtlab.api import web


def _get(dist: Path, *paths: str) -> list[httpx.Response]:
    """GET each path from an app with the UI of ``dist`` installed, in process."""
    app = FastAPI()

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok"}

    web.install(app, dist)

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(fetch())


def test_without_a_build_the_api_runs_and_slash_says_how_to_build(tmp_path: Path) -> None:
    page, asset, health = _get(tmp_path / "dist", "/", "/assets/index.js", "/api/health")
    assert page.status_code == 503
    assert "text/html" in page.headers["content-type"]
    assert "make setup" in page.text and 'href="/docs"' in page.text
    assert asset.status_code == 404
    assert health.json() == {"status": "ok"}


def test_a_build_is_served_with_its_headers(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<!doctype html><script src="/assets/index-abc.js"></script>')
    (dist / "assets" / "index-abc.js").write_text("console.log(1)")
    (dist / "favicon.svg").write_text("<svg/>")
    page, asset, missing, icon = _get(
        dist, "/", "/assets/index-abc.js", "/assets/nope.js", "/favicon.svg"
    )
    assert page.status_code == 200 and "index-abc.js" in page.text
    assert page.headers["cache-control"] == "no-cache"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    assert missing.status_code == 404
    assert icon.headers["content-type"].startswith("image/svg")


def test_the_real_build_refers_only_to_its_own_files() -> None:
    """The built index.html (``make setup``) loads only files of its own, from this server."""
    index = web.DIST / "index.html"
    assert index.is_file(), "the web UI is not built: run `make setup`"
    refs = re.findall(r'(?:src|href)="([^"#][^"]*)"', index.read_text())
    assert any(ref.endswith(".js") for ref in refs), refs
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        assert (web.DIST / ref.lstrip("/")).is_file(), f"{ref} is not in the build"
