"""The API documents itself at /docs, with no asset fetched from outside this server."""

from __future__ import annotations

import re

from support.server import Server


def test_docs_page_and_its_assets_come_from_this_server(server: Server) -> None:
    with server.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
        assert assets, page.text
        for asset in assets:
            assert asset.startswith("/"), f"{asset} is fetched from outside the server"
            assert client.get(asset).status_code == 200, asset
        redoc = client.get("/redoc")
        assert redoc.status_code == 200 and "http" not in "".join(
            re.findall(r"""src=['"]([^'"]+)['"]""", redoc.text)
        )


def test_the_openapi_documents_both_upload_forms(server: Server) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    custom = spec["paths"]["/api/images/custom"]["post"]
    form = custom["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert {"201", "413", "415", "422", "507"} <= set(custom["responses"])
    raw = spec["paths"]["/api/images/{name}"]["put"]
    assert "application/octet-stream" in raw["requestBody"]["content"]
    for path in ("/api/images", "/api/images/verify", "/api/imports/{import_id}", "/api/health"):
        assert path in spec["paths"]


def test_every_route_with_a_node_ref_declares_the_ambiguous_name_refusal(server: Server) -> None:
    """A node name that nodes of several labs have is refused with 400 (say LAB:NAME) by the
    ownership guard before any route runs: each route with a ``{ref}`` declares it."""
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    refs = [(path, method, op) for path, ops in spec["paths"].items() if "{ref}" in path
            for method, op in ops.items()]  # fmt: skip
    assert len(refs) > 10
    for path, method, op in refs:
        assert "400" in op["responses"], f"{method} {path}"
        assert "LAB:NAME" in op["responses"]["400"]["description"], f"{method} {path}"
