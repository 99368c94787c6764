"""`/docs` (Swagger UI) and `/redoc` served from the package, not from a CDN.

FastAPI's own pages load their scripts from jsDelivr and show a blank page offline. The
assets ship in `trifecta/assets/apidocs/` (swagger-ui-dist and redoc from npm, with their
licences; `VERSIONS.md` there says which); `install_api_docs(app)` replaces the app's two
pages with FastAPI's same HTML generators pointed at them, under the app's `root_path` so a
mounted app's pages work too.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/apidocs-assets"


def assets_dir() -> Path:
    return Path(str(files("trifecta") / "assets" / "apidocs"))


def install_api_docs(app: FastAPI) -> None:
    """Serve the app's `/docs` and `/redoc` with the packaged assets (idempotent)."""
    docs_paths = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if getattr(route, "path", None) not in docs_paths | {ASSETS_PATH}
    ]
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="apidocs-assets")
    title = app.title

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = base(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=None,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = base(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
