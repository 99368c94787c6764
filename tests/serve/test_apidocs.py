"""`/docs` and `/redoc` work offline: their pages load only the server's own assets, which
ship in the package (no CDN: a blank page without a network before), for the main server and
for an app mounted in it (the context service at `/context`); and an environment server's
spec lists the statuses its routes answer, like the front door's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from trifecta.core import db
from trifecta.core.apidocs import ASSETS_PATH, assets_dir, install_api_docs
from trifecta.core.settings import Settings
from trifecta.fleet.topology import load_topology
from trifecta.serve.environment import EnvironmentSite, create_environment_app

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


def test_an_environment_server_documents_every_status_and_serves_local_docs(
    tmp_path: Path,
) -> None:
    """`trifecta env serve` (the federation hops): the same error statuses in its spec."""
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'control.db'}")
    site = EnvironmentSite(load_topology(), "edge-eu", settings)
    try:
        app = create_environment_app(site, base_url="http://placeholder", credential="c" * 32)
        operations = [
            (method, path, op)
            for path, ops in app.openapi()["paths"].items()
            for method, op in ops.items()
        ]
        assert len([o for o in operations if o[1].startswith("/federation/v1/")]) >= 5
        for method, path, op in operations:
            statuses = set(op["responses"])
            assert {"500", "503"} <= statuses, (method, path)
            if any(p["name"] == "authorization" for p in op.get("parameters", [])):
                assert {"401", "403"} <= statuses, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= statuses, (method, path)
                schema = op["responses"]["422"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}
        docs = TestClient(app).get("/docs")
        assert docs.status_code == 200 and "cdn." not in docs.text
    finally:
        site.close()
        db.dispose_engines()


def test_a_layer_standing_alone_serves_local_docs_and_request_ids() -> None:
    """A layer's own server (`trifecta context serve`, `cognitive serve`) gets the same local
    docs and request ids the front door gives the apps mounted in it."""
    from trifecta.core.http import stand_alone

    client = TestClient(stand_alone(FastAPI(title="layer"), service="layer"))
    html = client.get("/docs")
    assert html.status_code == 200
    urls = _urls(html.text)
    assert urls and not [u for u in urls if "//" in u], urls
    assert all(client.get(u).status_code == 200 for u in urls)
    offered = "req-standalone-0001"
    answer = client.get("/openapi.json", headers={"X-Request-Id": offered})
    assert answer.headers["X-Request-Id"] == offered
