"""The dashboard in a real browser (Debian's chromium, headless, driven by playwright) against a
real gateway process that served a known mix: every figure on the page equals the usage API's,
a request opens to its full record, and the screenshots in docs/img/ come from this run
(written there with ``SLM_GATEWAY_UPDATE_SCREENSHOTS=1``; otherwise into a temporary directory,
so a test run never changes the checkout).

Set-up: ``apt-get install -y chromium`` (``.ci/run`` does it when missing) and the ``test`` extra
(playwright). Playwright's own browser download is never used: it drives /usr/bin/chromium.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.fake_upstream import FakeConfig, serve_in_thread
from tests.gateway_process import REPO, GatewayProcess
from tests.observability_support import ADMIN_KEY, MIX, ServedMix, mix_policy, serve_mix

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = (REPO / "docs" / "img" if os.environ.get("SLM_GATEWAY_UPDATE_SCREENSHOTS") == "1"
               else Path(tempfile.gettempdir()) / "slm-gateway-screenshots")
TOTAL = len(MIX) + 1  # the mix, and the budgeted key's request

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="no chromium: apt-get install -y chromium (.ci/run installs it)")


def usd(value: float | None) -> str:  # the page's formats (dashboard.js)
    if value is None:
        return "—"
    return ("−$" if value < 0 else "$") + f"{abs(value):.6f}"


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


@pytest.fixture(scope="module")
def served() -> Iterator[ServedMix]:
    with serve_in_thread(FakeConfig(completion_tokens=8, ttft_ms=20)) as (url, _app):
        gateway = GatewayProcess(mix_policy(url), name="dashboard", env={
            "SLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "SLM_GATEWAY_THREADS": "1", "OMP_NUM_THREADS": "1"}).start()
        try:
            yield serve_mix(gateway)
        finally:
            gateway.stop()


@pytest.fixture(scope="module")
def page(served: ServedMix) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        yield tab
        context.close()
        browser.close()


def value_of(page: Any, selector: str) -> float:
    return float(page.locator(selector).get_attribute("data-value"))


def test_the_page_needs_the_admin_key(served: ServedMix) -> None:
    url = served.gateway.url
    assert httpx.get(f"{url}/dashboard").status_code == 401  # the login form, not the page
    assert httpx.get(f"{url}/v1/gateway/dashboard/overview").status_code == 401
    assert httpx.post(f"{url}/dashboard/login", json={"key": "sk-wrong"}).status_code == 401
    page = httpx.get(f"{url}/dashboard", headers=served.headers)
    assert page.status_code == 200 and "dashboard.js" in page.text
    asset = httpx.get(f"{url}/dashboard/static/charts.js")
    assert asset.status_code == 200 and "createElementNS" in asset.text  # shipped in the package, no CDN
    assert "http" not in page.text.replace("http://www.w3.org", "")


def test_figures_equal_the_usage_api(served: ServedMix, page: Any) -> None:
    assert served.statuses["broken"] >= 500 and all(
        status == 200 for model, status in served.statuses.items() if model != "broken")
    page.goto(f"{served.gateway.url}/dashboard?window=15m")
    page.fill("#key", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=kpi-requests]")
    page.wait_for_function(f"document.querySelectorAll('#requests-table tbody tr[data-request-id]').length >= {TOTAL}")

    by_route = {g["key"]: g for g in served.get("/v1/gateway/usage", since="15m", group_by="route")["groups"]}
    by_model = {g["key"]: g for g in served.get("/v1/gateway/usage", since="15m", group_by="model")["groups"]}
    by_status = {g["key"]: g for g in served.get("/v1/gateway/usage", since="15m", group_by="status")["groups"]}
    by_key = {g["key"]: g for g in served.get("/v1/gateway/usage", since="15m", group_by="key")["groups"]}
    assert {"slm", "llm", "slm>llm"} <= set(by_route)

    requests = sum(g["requests"] for g in by_route.values())
    cost = sum(g["cost_usd"] for g in by_route.values())
    savings = sum(g["savings_usd"] for g in by_route.values())
    assert requests == TOTAL
    assert value_of(page, "[data-testid=kpi-requests]") == requests
    assert value_of(page, "[data-testid=kpi-cost]") == pytest.approx(cost, abs=1e-12)
    assert value_of(page, "[data-testid=kpi-savings]") == pytest.approx(savings, abs=1e-12)
    assert value_of(page, "[data-testid=kpi-reference]") == pytest.approx(cost + savings, abs=1e-12)
    assert page.locator("[data-testid=kpi-cost]").inner_text() == usd(cost)
    assert value_of(page, "[data-testid=kpi-errors]") == sum(g["requests"] for k, g in by_status.items() if k != "ok")
    assert value_of(page, "[data-testid=kpi-escalated]") == 1

    for route, group in by_route.items():
        row = page.locator(f"#routes-table tr[data-route='{route}']")
        assert row.locator("[data-testid=requests]").inner_text() == str(group["requests"])
        assert row.locator("[data-testid=cost]").inner_text() == usd(group["cost_usd"])
        assert row.locator("[data-testid=savings]").inner_text() == usd(group["savings_usd"])
        assert row.locator("[data-testid=escalation]").inner_text() == pct(group["escalation_rate"])
        for q in ("p50", "p95", "p99"):
            assert row.locator(f"[data-testid=latency-{q}]").inner_text() == ms(group["latency_ms"][q])
        for q in ("p50", "p95"):
            assert row.locator(f"[data-testid=ttft-{q}]").inner_text() == ms(group["ttft_ms"][q])

    for cascade, expected in (("kept", 0.0), ("escalated", 1.0)):
        bar = page.locator(f"#cascades .bar-row[data-key='{cascade}'] [data-testid=escalation-rate]")
        assert float(bar.get_attribute("data-value")) == by_model[cascade]["escalation_rate"] == expected
    errors = page.locator("#errors .bar-row")
    assert errors.count() == len(by_status) - 1 >= 1
    for kind, group in by_status.items():
        if kind != "ok":
            assert value_of(page, f"#errors .bar-row[data-key='{kind}'] [data-testid=error-count]") == group["requests"]
    team = page.locator("#keys .bar-row").filter(has_text="team-a")
    assert float(team.locator("[data-testid=key-cost]").get_attribute("data-value")) == pytest.approx(
        by_key[served.key_id]["cost_usd"], abs=1e-12)
    assert "of $0.001000" in team.inner_text()  # the budget bar
    spec = by_model["speculative"]
    assert spec["draft_tokens"] > 0 and spec["target_passes"] > 0
    acceptance = page.locator("#speculative .bar-row[data-key='speculative'] [data-testid=acceptance-rate]")
    accepted = spec["accepted_tokens"] / spec["draft_tokens"]
    tokens_per_pass = spec["speculative_tokens"] / spec["target_passes"]
    assert float(acceptance.get_attribute("data-value")) == pytest.approx(accepted)
    assert acceptance.inner_text() == f"{pct(accepted)} · {tokens_per_pass:.2f} tok/pass"
    page.wait_for_timeout(300)  # let the SVG settle before the picture
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)


def test_a_request_opens_to_its_full_record(served: ServedMix, page: Any) -> None:
    request_id = served.request_ids["escalated"][0]
    record = served.get(f"/v1/gateway/requests/{request_id}")
    page.click(f"#requests-table tr[data-request-id='{request_id}']")
    page.wait_for_selector("#detail:not([hidden]) #calls-table")
    assert page.locator("#detail-title").inner_text() == request_id
    calls = page.locator("#calls-table tbody tr")
    assert calls.count() == len(record["calls"]) == 2
    backends = [calls.nth(i).locator("[data-testid=backend]").inner_text() for i in range(2)]
    used = [calls.nth(i).locator("[data-testid=used]").inner_text() for i in range(2)]
    assert backends == ["slm", "llm"] and used == ["discarded", "yes"]
    for i, call in enumerate(record["calls"]):
        assert calls.nth(i).locator("[data-testid=cost]").inner_text() == usd(call["cost_usd"])
    assert page.locator("dd[data-field='escalated']").inner_text() == "true"
    assert page.locator("dd[data-field='cascade confidence']").inner_text() == str(record["confidence"]).replace(
        "e-0", "e-")
    assert page.locator("dd[data-field='cost']").inner_text() == usd(record["cost_usd"])
    page.screenshot(path=str(SCREENSHOTS / "dashboard-request.png"), full_page=False)


def test_the_window_can_change_and_the_page_refreshes(served: ServedMix, page: Any) -> None:
    page.locator("#detail-close").click()
    before = page.locator("#status").get_attribute("data-generated-at")
    page.click("#windows button[data-window='7d']")
    page.wait_for_function(f"document.getElementById('status').dataset.generatedAt !== '{before}'")
    assert "window=7d" in page.url
    assert value_of(page, "[data-testid=kpi-requests]") == TOTAL  # the same records, a wider window
