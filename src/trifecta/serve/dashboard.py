"""The operator's dashboard at `/dashboard`: server-rendered HTML (Jinja2) refreshed panel by
panel with htmx, every asset shipped in the package (`assets/dashboard/`), no CDN.

It needs the admin key. A browser presents it through a login form (`/dashboard/login`) that
sets it in an HttpOnly, SameSite=Strict cookie scoped to `/dashboard`; the pages check it with
the one admin dependency of `core.auth` (`admin_only(..., cookie=True)`), which also accepts
`Authorization: Bearer`. The API routes never read the cookie, so a browser session cannot be
used against them.

The routes are HTML for a browser, not part of the API: they are left out of the OpenAPI spec
(`include_in_schema=False`); `tests/serve/test_dashboard.py` tries every one of them (found
from the app's routes) with no key, a capsule's key and the admin key.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Cookie, Depends, FastAPI, Form, Header, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from trifecta.core.auth import SESSION_COOKIE, Authenticator, Principal, admin_only
from trifecta.core.errors import Forbidden, TrifectaError, Unauthenticated
from trifecta.core.logging import recent_errors
from trifecta.fleet.assets import asset_path
from trifecta.fleet.plan_model import CapsuleAssignment, Plan
from trifecta.orchestrator.ledger import Rollup
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.stack import Stack
from trifecta.serve.dashboard_metrics import live_figures
from trifecta.serve.dashboard_views import (
    capsule_page,
    fleet_summary,
    plan_view,
    recent_requests,
    topology_rows,
)

PREFIX = "/dashboard"
ERRORS_SHOWN = 30
LEDGER_TTL_S = 30.0
SESSION_MAX_AGE_S = 8 * 3600
# Everything from this server only; htmx's own indicator styles are turned off in the page so
# no inline style is needed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _money(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"${value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(asset_path("dashboard/templates"))),
        autoescape=select_autoescape(["html"]),
    )
    env.filters.update(money=_money, pct=_pct, ms=_ms)
    return env


class Dashboard:
    """Renders the panels from the running stack and orchestrator."""

    def __init__(self, stack: Stack, orchestrator: Orchestrator):
        self.stack = stack
        self.orchestrator = orchestrator
        self.jinja = templates()
        self._assignments: tuple[int, dict[str, CapsuleAssignment]] = (0, {})
        self._spent: tuple[float, list[Rollup]] = (0.0, [])

    def assignments(self, plan: Plan) -> dict[str, CapsuleAssignment]:
        """The plan's assignments by capsule id, rebuilt only when the plan changes."""
        if self._assignments[0] != id(plan):
            self._assignments = (id(plan), {a.capsule_id: a for a in plan.assignments})
        return self._assignments[1]

    def spent_by_layer(self) -> list[Rollup]:
        """The ledger's totals by layer: a scan of every charge, so read at most every
        `LEDGER_TTL_S` seconds however many browsers poll."""
        at, rows = self._spent
        if time.monotonic() - at > LEDGER_TTL_S:
            rows = self.stack.parts.ledger.rollup("layer")
            self._spent = (time.monotonic(), rows)
        return rows

    def panel(self, name: str, *, page: int = 1, query: str = "") -> dict[str, Any]:
        stack = self.stack
        if name == "fleet":
            capsules = stack.capsules.all()
            return {
                "summary": fleet_summary(capsules),
                "capsules": capsule_page(
                    capsules,
                    self.assignments(stack.plan),
                    lambda ids: stack.parts.ledger.rollup("capsule_id", capsule_ids=ids),
                    lambda ids: recent_requests(stack.engine, ids),
                    page=page,
                    query=query,
                ),
            }
        if name == "topology":
            rows = topology_rows(
                stack.topology, stack.phase, stack.bridge, stack.meshes, stack.plan
            )
            return {"environments": rows, "federated": stack.federated}
        if name == "plan":
            return {"view": plan_view(stack.plan, self.spent_by_layer())}
        if name == "metrics":
            return {"figures": live_figures(self.orchestrator.metrics.registry)}
        return {"errors": recent_errors.latest(ERRORS_SHOWN), "total": recent_errors.total}

    def render(self, template: str, **context: Any) -> str:
        return self.jinja.get_template(template).render(prefix=PREFIX, **context)


def _html(body: str, status_code: int = 200, **headers: str) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers={**SECURITY_HEADERS, **headers})


PANELS = ("fleet", "topology", "plan", "metrics", "errors")


def dashboard_routes(dashboard: Dashboard, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    check_admin = admin_only(auth, cookie=True)
    admin = Depends(check_admin)

    def login_page(message: str | None, status_code: int) -> HTMLResponse:
        return _html(dashboard.render("login.html", message=message), status_code)

    @router.get("", response_class=HTMLResponse)
    def page(
        authorization: Annotated[str | None, Header()] = None,
        session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
    ) -> HTMLResponse:
        """The whole page, every panel rendered (htmx refreshes them); the login form
        with 401 (403 for a key that is not the admin's) otherwise."""
        try:
            check_admin(authorization=authorization, session=session)
        except Unauthenticated:
            return login_page(None if session is None else "that key is not valid", 401)
        except Forbidden:
            return login_page("the dashboard needs the admin key", 403)
        panels = {name: dashboard.panel(name) for name in PANELS}
        return _html(dashboard.render("page.html", panels=panels))

    @router.get("/panels/{name}", response_class=HTMLResponse)
    def panel(
        name: str,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        q: Annotated[str, Query(max_length=100)] = "",
        _: Principal = admin,
    ) -> HTMLResponse:
        if name not in PANELS:
            return _html("", status.HTTP_404_NOT_FOUND)
        context = dashboard.panel(name, page=page, query=q)
        return _html(dashboard.render(f"panel_{name}.html", **context))

    @router.get("/login", response_class=HTMLResponse)
    def login_form() -> HTMLResponse:
        return login_page(None, 200)

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, key: Annotated[str, Form(max_length=512)] = "") -> Response:
        """Check the key with the admin dependency; on success keep it in the session cookie."""
        try:
            check_admin(authorization=f"Bearer {key.strip()}", session=None)
        except Forbidden:
            return login_page("the dashboard needs the admin key", 403)
        except TrifectaError:
            return login_page("that key is not valid", 401)
        answer = RedirectResponse(PREFIX, status_code=status.HTTP_303_SEE_OTHER)
        answer.set_cookie(
            SESSION_COOKIE,
            key.strip(),
            max_age=SESSION_MAX_AGE_S,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @router.post("/logout")
    def logout() -> Response:
        answer = RedirectResponse(f"{PREFIX}/login", status_code=status.HTTP_303_SEE_OTHER)
        answer.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return answer

    return router


def mount_dashboard(
    app: FastAPI, stack: Stack, orchestrator: Orchestrator, auth: Authenticator
) -> None:
    """`/dashboard` and its static assets (htmx, the style sheet: no tenant's data)."""
    app.include_router(dashboard_routes(Dashboard(stack, orchestrator), auth))
    app.mount(
        f"{PREFIX}/static",
        StaticFiles(directory=str(asset_path("dashboard/static"))),
        name="dashboard-static",
    )
