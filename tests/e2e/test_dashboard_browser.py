"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright.

Screenshots go to ``LLMPERF_TEST_ARTIFACTS`` (default: ``.llmperf/test-artifacts`` under the project).
"""

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from pytest_llmperf.dashboard.generate import GeneratedTest, generate_history
from pytest_llmperf.dashboard.site import build_dashboard

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
HOSTILE = "suites/t.py::test_x[<script>alert(1)</script>]"
RUNS = 60

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium (Debian: apt install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dashboard")
    tests = [GeneratedTest("suites/t.py::test_x[llama-hf]", "hf", (1, 8), step=(30, -0.15), budget_fraction=0.8),
             GeneratedTest("suites/t.py::test_x[llama-accelerate]", "accelerate", (1, 8)),
             GeneratedTest(HOSTILE, "ds-zero", (1,))]
    generate_history(root / "history.db", tests, runs=RUNS, noise=0.02)
    build_dashboard(root / "history.db", root / "site")
    return root / "site"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page that collects console errors, uncaught exceptions and dialogs (an injected alert would be one)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield page
    page.close()


def artifact(name: str) -> Path:
    folder = Path(os.environ.get("LLMPERF_TEST_ARTIFACTS", Path(__file__).parents[2] / ".llmperf" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_the_overview_lists_every_series_filters_work_and_hostile_names_stay_text(site, page):
    page.goto((site / "index.html").as_uri())
    rows = page.locator("#overview tbody tr")
    assert rows.count() == 9 + 9 + 5
    assert page.text_content("#shown") == "23 of 23 series shown"
    page.select_option("select[data-filter=backend]", "hf")
    assert page.locator("#overview tbody tr:visible").count() == 9
    page.select_option("select[data-filter=metric]", "tokens_per_s")
    assert page.text_content("#shown") == "2 of 23 series shown"
    page.select_option("select[data-filter=backend]", "")
    page.select_option("select[data-filter=metric]", "")
    assert page.locator("#overview tbody tr:visible").count() == 23
    assert HOSTILE.rsplit("::", 1)[1] in page.text_content("#overview")  # shown as text, not run
    assert page.locator("#overview td.test a", has_text="alert(1)").first.get_attribute("title") == HOSTILE
    assert page.locator("#overview script").count() == 0
    first = page.locator("#overview tbody tr").first.text_content()
    assert "llama-hf" in first and "change point" in first  # what got worse is on top
    page.screenshot(path=str(artifact("dashboard-overview.png")), full_page=True)
    assert page.problems == []


def test_a_series_page_draws_every_metric_with_all_its_points_and_shows_a_run_on_hover(site, page):
    page.goto((site / "index.html").as_uri())
    page.locator("#overview tbody tr").first.locator("a").click()
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    charts = page.evaluate("() => window.LLMPerf.charts.map(c => [c.metric, c.points])")
    assert charts == [["tokens_per_s", RUNS], ["tpot_ms", RUNS], ["ttft_ms", RUNS], ["load_s", RUNS],
                      ["peak_mem_bytes", RUNS], ["siblings", RUNS]]
    assert page.locator("canvas").count() == 6
    assert "change point -1" in page.text_content("#charts")  # the step, with its size and commit range
    plot = page.locator("section.chart .u-over").first
    box = plot.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    assert "commit" in tip.text_content() and "reproduce: git checkout" in tip.text_content()
    page.screenshot(path=str(artifact("dashboard-series.png")), full_page=True)
    assert page.problems == []


def test_a_series_downloads_as_csv_and_json_with_every_run(site, page):
    page.goto((site / "index.html").as_uri())
    page.locator("#overview tbody tr").first.locator("a").click()
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    exports = {}
    for kind in ("csv", "json"):
        with page.expect_download() as download:
            page.locator(f"section.chart button.export[data-kind={kind}]").first.click()
        exports[kind] = Path(download.value.path()).read_text()
    data = json.loads(exports["json"])
    assert data["metric"] == "tokens_per_s" and data["branch"] == "main" and len(data["points"]) == RUNS
    rows = list(csv.DictReader(io.StringIO(exports["csv"])))
    assert [r["run_id"] for r in rows] == [p["run_id"] for p in data["points"]]
    assert float(rows[-1]["value"]) == data["points"][-1]["value"]
    assert page.problems == []


def test_the_hostile_series_page_renders_its_name_as_text(site, page):
    page.goto((site / "index.html").as_uri())
    page.locator("#overview tbody tr", has_text="alert(1)").first.locator("a").click()
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    assert HOSTILE in page.text_content("h1")
    assert page.problems == []


@pytest.fixture(scope="module")
def recent_site(tmp_path_factory) -> Path:
    """Throughput of one backend 20 % lower in the newest 5 runs."""
    root = tmp_path_factory.mktemp("recent")
    tests = [GeneratedTest("suites/t.py::test_x[llama-hf]", "hf", (1,), step=(RUNS - 5, -0.2)),
             GeneratedTest("suites/t.py::test_x[llama-accelerate]", "accelerate", (1,))]
    generate_history(root / "history.db", tests, runs=RUNS, noise=0.02, seed=3)
    build_dashboard(root / "history.db", root / "site")
    return root / "site"


def test_a_shift_in_the_newest_runs_is_flagged_on_top_and_beside_its_chart(recent_site, page):
    page.goto((recent_site / "index.html").as_uri())
    first = page.locator("#overview tbody tr").first
    assert "llama-hf" in first.text_content()
    flag = first.locator(".flag.recent.worse")
    assert flag.is_visible() and re.fullmatch(r"recent shift [+-]\d+\.\d% in the newest \d runs \w{12}\.\.\w{12}",
                                              flag.text_content())  # tpot_ms up or tokens_per_s down, the worse
    assert "against the 10 runs before" in flag.get_attribute("title")
    page.screenshot(path=str(artifact("dashboard-recent-shift.png")), full_page=True)
    first.locator("a").click()
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    assert page.locator("section.chart .links .recent.worse").first.text_content().startswith("recent shift -")
    assert page.problems == []


@pytest.fixture(scope="module")
def serving_site(tmp_path_factory) -> Path:
    """Two engines' serving load points on main, and vllm alone on a branch ``faster``."""
    from tests.unit.test_dashboard_serving import serving_history

    root = tmp_path_factory.mktemp("serving")
    build_dashboard(serving_history(root / "history.db"), root / "site")
    return root / "site"


def test_a_serving_load_point_shows_its_percentiles_and_the_engines_curves_for_the_chosen_branch(serving_site, page):
    page.goto((serving_site / "index.html").as_uri())
    page.locator("#overview tbody tr", has_text="request_rate=4 p32o32").filter(has_text="llama-cpp").first \
        .locator("a").click()
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    assert "llama-cpp auto · request_rate=4 p32o32" in page.text_content("h1")
    charts = page.evaluate("() => window.LLMPerf.charts.map(c => c.metric)")
    assert charts[:4] == ["median_ttft_ms", "median_tpot_ms", "p99_ttft_ms", "p99_tpot_ms"]
    assert charts[-2:] == ["load_s", "siblings"]  # the server's load after the load point's own metrics
    shown = page.locator("section.serving:visible")
    assert shown.count() == 3  # TTFT and TPOT percentiles, and the curves: all of main
    ttft = page.locator("section.serving.percentiles[data-latency=ttft]:visible")
    assert ttft.locator("g.line").evaluate_all("gs => gs.map(g => g.dataset.label)") == ["median", "p90", "p99"]
    assert "p99: change point +" in ttft.text_content()
    curve = page.locator("section.serving.curves:visible svg.chart").first
    assert curve.locator("g.line").count() == 6 and curve.locator("circle.current").count() == 2
    page.screenshot(path=str(artifact("dashboard-serving.png")), full_page=True)
    # the point may lie under another engine's: its link is followed as a click on it would be
    page.locator("section.serving.curves:visible g.line[data-label='llama-cpp auto median'] a").first \
        .dispatch_event("click")
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    assert "request_rate=1 p32o32" in page.text_content("h1")  # a point of the curve opens its load point's page
    assert page.problems == []


def test_a_serving_page_switches_its_svg_sections_with_the_branch(serving_site, page):
    page.goto((serving_site / "index.html").as_uri())
    page.select_option("select[data-filter=branch]", "faster")
    page.locator("#overview tbody tr:visible", has_text="request_rate=2 p32o32").first.locator("a").click()
    page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
    assert page.locator("section.serving:visible").evaluate_all("s => s.map(x => x.dataset.branch)") == \
        ["faster"] * 3
    assert page.locator("section.serving.curves:visible svg.chart").first.locator("g.line").count() == 2  # vllm
    page.select_option("#branch", "main")
    assert set(page.locator("section.serving:visible").evaluate_all("s => s.map(x => x.dataset.branch)")) == {"main"}
    assert page.problems == []
