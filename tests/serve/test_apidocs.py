"""`/docs` and `/redoc` work offline: their pages load only the server's own assets, which
ship in the package (no CDN: a blank page without a network before), for the main server and
for an app mounted in it (the context service at `/context`)."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from trifecta.core.apidocs import ASSETS_PATH, assets_dir, install_api_docs

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


def _app() -> FastAPI:
    app = FastAPI(title="probe")

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    install_api_docs(app)
    return app


def _urls(html: str) -> list[str]:
    return [a or b for a, b in URL.findall(html)]


@pytest.mark.parametrize("prefix", ["", "/context"])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets(prefix: str, page: str) -> None:
    inner = _app()
    app = inner if not prefix else FastAPI()
    if prefix:
        app.mount(prefix, inner)
    client = TestClient(app)
    html = client.get(prefix + page)
    assert html.status_code == 200
    urls = _urls(html.text) + re.findall(r'spec-url="([^"]+)"', html.text)
    assert urls, html.text
    assert not [u for u in urls if "//" in u], urls  # no absolute URL, no CDN
    for url in urls:
        assert url.startswith(prefix + "/"), url
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert len(answer.content) > 0
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(ASSETS_PATH in u for u in scripts)


def test_the_assets_ship_with_their_licences() -> None:
    root = assets_dir()
    for name in (
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
        "swagger-ui/LICENSE",
        "swagger-ui/NOTICE",
        "redoc/redoc.standalone.js",
        "redoc/LICENSE",
        "VERSIONS.md",
    ):
        assert (root / name).stat().st_size > 0, name
