"""The operator's dashboard: its figures read from the server's own metrics, bounded pages for
any fleet size, the admin key (bearer or the login cookie) on every dashboard route, and, end
to end in headless Chromium (Debian's package, driven by Playwright) against a live
`trifecta serve` app: the page loads with the admin key, refuses without it, shows the fleet,
and updates after a task is served through the task route."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.routing import APIRoute

from tests.support import live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.cognitive.serving.tenants import TenantDirectory
from trifecta.core import db
from trifecta.core.auth import SESSION_COOKIE
from trifecta.core.logging import REQUEST_ID_HEADER
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.orchestrator.ledger import CostLedger
from trifecta.orchestrator.metrics import LATENCY_BUCKETS, LoopMetrics
from trifecta.orchestrator.records import RequestLog
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app
from trifecta.serve.dashboard import PREFIX, templates
from trifecta.serve.dashboard_metrics import histogram_quantile, live_figures
from trifecta.serve.dashboard_views import PER_PAGE, capsule_page, fleet_summary

TWIN = Capsule(id="dash-twin", name="Turbine twin", kind="digital_twin", domain="dash-grid")
GOV = Capsule(
    id="dash-gov", name="Ministry", kind="sovereign", domain="dash-gov", jurisdiction="eu"
)
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, small


# -- figures from the registry ---------------------------------------------------------------
def test_quantiles_from_buckets_match_the_samples_they_came_from() -> None:
    rng = np.random.default_rng(7)
    seconds = rng.lognormal(mean=np.log(0.05), sigma=0.8, size=5000)
    metrics = LoopMetrics()
    for value in seconds:
        metrics.latency.labels("cognitive").observe(float(value))
        metrics.requests.labels("cognitive", "digital_twin").inc()
    figures = live_figures(metrics.registry)
    (route,) = figures.routes
    assert route.requests == 5000
    buckets = [(b, float((seconds <= b).sum())) for b in (*LATENCY_BUCKETS, float("inf"))]
    p50 = histogram_quantile(0.5, buckets)
    assert p50 is not None and route.p50_ms == pytest.approx(p50 * 1000, abs=0.01)
    # within the bucket that holds it: linear interpolation, as Prometheus computes it
    true_p50 = float(np.quantile(seconds, 0.5))
    low = max(b for b in (0.0, *LATENCY_BUCKETS) if b <= true_p50)
    high = min(b for b in LATENCY_BUCKETS if b >= true_p50)
    assert low <= p50 <= high
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 3.0)]) == 0.1


def test_live_figures_per_route_escalation_edge_share_accuracy() -> None:
    metrics = LoopMetrics()
    for route, kind, verdict, n in [
        ("edge", "digital_twin", "correct", 3),
        ("cognitive", "digital_twin", "correct", 4),
        ("cognitive", "sovereign", "wrong", 1),
    ]:
        for _ in range(n):
            metrics.requests.labels(route, kind).inc()
            metrics.outcomes.labels(route, verdict).inc()
            metrics.latency.labels(route).observe(0.02)
    metrics.escalations.labels("digital_twin").inc(2)
    metrics.fallbacks.labels("edge", "edge-eu").inc()
    metrics.layer_latency.labels("context").observe(0.003)
    figures = live_figures(metrics.registry)
    assert figures.requests == 8 and figures.edge_share == pytest.approx(3 / 8)
    assert figures.escalation_rate == pytest.approx(2 / 8)
    assert figures.accuracy == pytest.approx(7 / 8)
    by_route = {r.route: r for r in figures.routes}
    assert by_route["cognitive"].accuracy == pytest.approx(4 / 5)
    assert {x.layer: (x.hops, x.fallbacks) for x in figures.layers} == {
        "context": (1, 0),
        "edge": (0, 1),
    }


# -- bounded for any fleet ---------------------------------------------------------------------
def test_ten_thousand_capsules_make_a_small_page(tmp_path: Path) -> None:
    fleet = [
        Capsule(id=f"cap-{i:05d}", name=f"Twin {i}", kind="digital_twin", domain=f"d{i % 97}")
        for i in range(10_000)
    ]
    engine = db.get_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = CostLedger(engine)
    RequestLog(engine, ledger)  # creates the ledger's tables
    asked: list[list[str]] = []

    def spend(ids: list[str]):  # type: ignore[no-untyped-def]
        asked.append(ids)
        return ledger.rollup("capsule_id", capsule_ids=ids)

    page = capsule_page(fleet, {}, spend, page=3)
    assert [r.id for r in page.rows] == [f"cap-{i:05d}" for i in range(50, 75)]
    assert page.pages == 400 and page.matching == 10_000 and asked == [[r.id for r in page.rows]]
    last = capsule_page(fleet, {}, spend, page=10**6, query="TWIN 99")
    assert last.page == last.pages and all("99" in r.name for r in last.rows)
    html = (
        templates()
        .get_template("panel_fleet.html")
        .render(prefix=PREFIX, summary=fleet_summary(fleet), capsules=page)
    )
    assert len(html.encode()) < 40_000, len(html)  # not 10,000 rows: 25 and a summary
    assert html.count("data-capsule=") == PER_PAGE and ">10000<" in html


# -- the live server ---------------------------------------------------------------------------
@dataclass
class Served:
    app: FastAPI
    url: str
    client: httpx.Client
    keys: dict[str, str]  # who -> token


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = Path(tmp_path_factory.mktemp("dashboard"))
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    stack = Stack(settings=settings, capsules=[TWIN, GOV])
    store = KeyStore(stack.engine, hasher=CHEAP)
    tenants = TenantDirectory(stack.capsules.registry.get)
    cognitive = build_service(tiers=["small"], phase=stack.phase, tenants=tenants)
    app = create_app(stack, cognitive=cognitive, auth=store)
    keys = {
        "admin": store.create(admin=True).token,
        "twin": store.create(capsule_id=TWIN.id).token,
    }
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield Served(app, url, client, keys)
    finally:
        cognitive.close()
        stack.close()
        db.dispose_engines()


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's routes, those of included routers too (FastAPI keeps them inside)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _routes(route.original_router.routes)


def _dashboard_gets(app: FastAPI) -> list[str]:
    """Every GET route under /dashboard that needs the key (all but the login form)."""
    paths = [
        r.path.replace("{name}", "fleet")
        for r in _routes(app.routes)
        if r.path.startswith(PREFIX) and "GET" in (r.methods or ())
    ]
    return [p for p in paths if p != f"{PREFIX}/login"]


def test_every_dashboard_route_needs_the_admin_key(served: Served) -> None:
    paths = _dashboard_gets(served.app)
    assert set(paths) == {PREFIX, f"{PREFIX}/panels/fleet"}
    for path in paths:
        assert served.client.get(path).status_code == 401
        twin = {"Authorization": f"Bearer {served.keys['twin']}"}
        refused = served.client.get(path, headers=twin)
        assert refused.status_code == 403 and TWIN.domain not in refused.text
        admin = {"Authorization": f"Bearer {served.keys['admin']}"}
        assert served.client.get(path, headers=admin).status_code == 200
        cookie = {"Cookie": f"{SESSION_COOKIE}={served.keys['admin']}"}
        assert served.client.get(path, headers=cookie).status_code == 200
    # the session cookie opens the dashboard only, never the API
    cookie = {"Cookie": f"{SESSION_COOKIE}={served.keys['admin']}"}
    assert served.client.get("/v1/capsules", headers=cookie).status_code == 401
    assert not any(p.startswith(PREFIX) for p in served.app.openapi()["paths"])


def test_login_sets_a_strict_http_only_cookie(served: Served) -> None:
    wrong = served.client.post(f"{PREFIX}/login", data={"key": "trf_nope_nope"})
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    capsule = served.client.post(f"{PREFIX}/login", data={"key": served.keys["twin"]})
    assert capsule.status_code == 403 and "set-cookie" not in capsule.headers
    ok = served.client.post(f"{PREFIX}/login", data={"key": served.keys["admin"]})
    assert ok.status_code == 303 and ok.headers["location"] == PREFIX
    cookie = ok.headers["set-cookie"]
    for part in ("HttpOnly", "SameSite=strict", f"Path={PREFIX}"):
        assert part.lower() in cookie.lower(), cookie
    page = served.client.get(PREFIX, headers={"Cookie": f"{SESSION_COOKIE}={served.keys['admin']}"})
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert re.search(r"<script src=\"/dashboard/static/htmx\.min\.js\">", page.text)
    assert served.client.get(f"{PREFIX}/static/htmx.min.js").status_code == 200
    assert "Zero-Clause BSD" in served.client.get(f"{PREFIX}/static/htmx.LICENSE").text


def test_request_ids_are_accepted_or_assigned(served: Served) -> None:
    mine = served.client.get("/healthz", headers={REQUEST_ID_HEADER: "ops-check-0001"})
    assert mine.headers[REQUEST_ID_HEADER] == "ops-check-0001"
    for bad in ("short", "has space in it", "x" * 200, "bad\u00e9id12"):
        # sent as bytes: a header that is not ASCII reaches the server as its raw bytes
        answer = served.client.get("/healthz", headers=[(REQUEST_ID_HEADER.encode(), bad.encode())])
        assert answer.headers[REQUEST_ID_HEADER].startswith("req-")
    # a refused request is in the errors panel with its id and the error's message
    refused = served.client.get(
        f"/v1/capsules/{TWIN.id}/tasks/nope",
        headers={
            "Authorization": f"Bearer {served.keys['twin']}",
            REQUEST_ID_HEADER: "ops-404-0001",
        },
    )
    assert refused.status_code == 404
    admin = {"Authorization": f"Bearer {served.keys['admin']}"}
    errors = served.client.get(f"{PREFIX}/panels/errors", headers=admin).text
    row = next(r for r in errors.split("<tr") if "ops-404-0001" in r)
    assert "request refused" in row and "has no task" in row


def _chromium() -> str:
    found = os.environ.get("TRIFECTA_TEST_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: CI must run the suite through `make test`")
    pytest.skip("chromium not installed (scripts/browser.sh install)")


@pytest.mark.slow
@pytest.mark.integration
def test_in_chromium_the_page_refuses_loads_shows_the_fleet_and_updates(served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            refused = page.goto(f"{served.url}{PREFIX}")
            assert refused is not None and refused.status == 401
            expect(page.get_by_label("Admin key")).to_be_visible()
            page.get_by_label("Admin key").fill(served.keys["twin"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("alert")).to_contain_text("needs the admin key")

            page.get_by_label("Admin key").fill(served.keys["admin"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#fleet-count")).to_have_text("2")
            expect(page.locator(f'tr[data-capsule="{TWIN.id}"]')).to_contain_text(TWIN.domain)
            expect(page.locator(f'tr[data-capsule="{GOV.id}"]')).to_contain_text("eu")
            expect(page.locator('tr[data-env="local"] .status')).to_have_text("up")
            expect(page.locator("#plan-cost")).to_contain_text("$")
            before = int(page.locator("#requests-total").inner_text())
            page.evaluate("window.notReloaded = true")
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies[SESSION_COOKIE]["httpOnly"]
            assert cookies[SESSION_COOKIE]["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

            served_task = served.client.post(
                f"/v1/capsules/{TWIN.id}/tasks",
                json={"prompt": "t=41,p=17;t+p?"},
                headers={"Authorization": f"Bearer {served.keys['twin']}"},
            )
            assert served_task.status_code == 201, served_task.text
            expect(page.locator("#requests-total")).to_have_text(str(before + 1), timeout=15_000)
            expect(page.locator(f'tr[data-capsule="{TWIN.id}"] .requests')).to_have_text(
                "1", timeout=15_000
            )
            # one request in the last minute, beside its quota (none)
            expect(page.locator(f'tr[data-capsule="{TWIN.id}"] .rate')).to_have_text("0.02 / none")
            assert page.evaluate("window.notReloaded === true")  # htmx swapped, no reload

            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_label("Admin key")).to_be_visible()
            assert page.goto(f"{served.url}{PREFIX}").status == 401  # type: ignore[union-attr]
        finally:
            browser.close()
