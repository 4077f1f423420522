"""The web UI: the single-page app built from ``frontend/`` into ``virtlab/web/dist``.

``/`` serves its ``index.html`` and ``/assets`` its bundles (hashed names, cached for good).
Node.js is needed only to build it (``make setup``); when the build is missing the server still
runs, API only, and ``/`` says how to build the UI. The page talks to the public REST API and
WebSockets only, and its Content-Security-Policy lets it load nothing from anywhere else.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["DIST", "install"]

DIST = Path(__file__).resolve().parent.parent / "web" / "dist"

# The page loads scripts, styles and fonts from this server only; images may be screenshots
# (blob:, data:). xterm.js writes its own <style> element, hence 'unsafe-inline' for styles.
CSP = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:", "connect-src 'self'", "font-src 'self'", "object-src 'none'",
    "base-uri 'none'", "frame-ancestors 'self'", "form-action 'self'",
])  # fmt: skip

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>virtlab: web UI not built</title>
<style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;line-height:1.5}
code{background:#eef1f5;padding:0.1rem 0.3rem}</style></head>
<body><h1>The web UI is not built</h1>
<p>This virtlab server runs, but its web UI has not been built. In the project's directory, run
<code>make setup</code> (it runs <code>npm ci</code> and <code>npm run build</code> in
<code>frontend/</code>), then reload this page.</p>
<p>The REST API works meanwhile: its documentation is at <a href="/docs">/docs</a>.</p>
</body></html>
"""


class _Assets(StaticFiles):
    """Hashed bundles: their name changes with their content, so they are cached for good."""

    async def check_config(self) -> None:
        if Path(str(self.directory)).is_dir():  # a missing build is checked at each request
            await super().check_config()

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not Path(str(self.directory)).is_dir():  # not built (yet): no assets, not an error
            return Response(status_code=404)
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


def install(app: FastAPI, dist: Path = DIST) -> None:
    """Serve the UI of ``dist`` at ``/``; looked for at each request, so a build made while the
    server runs is served without a restart."""
    app.mount("/assets", _Assets(directory=dist / "assets", check_dir=False), name="web-assets")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False, response_model=None)
    def index() -> Response:
        page = dist / "index.html"
        if not page.is_file():
            return HTMLResponse(_MISSING, status_code=503, headers={"cache-control": "no-cache"})
        return FileResponse(
            page, media_type="text/html",
            headers={"cache-control": "no-cache", "content-security-policy": CSP,
                     "x-content-type-options": "nosniff", "referrer-policy": "same-origin"},
        )  # fmt: skip

    @app.get("/favicon.svg", include_in_schema=False, response_model=None)
    def favicon() -> Response:
        icon = dist / "favicon.svg"
        if not icon.is_file():
            return Response(status_code=404)
        return FileResponse(icon, media_type="image/svg+xml")
