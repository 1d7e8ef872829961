"""The dashboard at scale: a history of 10,000 runs with 50 series each (500,000 points).

Generates the history (bulk writes, a known step in some series), builds the site with
``llmperf dashboard``'s builder and prints the build time, then opens the overview in headless
Chromium and prints when it became interactive by the browser's own navigation timing.

    .venv/bin/python benchmarks/dashboard_scale.py [--runs 10000] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pytest_llmperf.dashboard.generate import GeneratedTest, generate_history
from pytest_llmperf.dashboard.site import build_dashboard

#: 5 tests of 2 batch sizes (9 series each) and one of 1 (5): 50 series
TESTS = [GeneratedTest(f"suites/test_bloom_study.py::test_load_then_generate[llama-1b-{b}]", b, (1, 8),
                       step=(7000, -0.12) if b == "ds-inference" else None)
         for b in ("hf", "accelerate", "ds-inference", "ds-zero", "hf-tp")]
TESTS.append(GeneratedTest("suites/test_bloom_study.py::test_variants[llama-1b-accelerate-disk-offload]",
                           "accelerate", (1,)))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def open_in_chromium(page_path: Path, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        timing = page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
            return {interactive_ms: n.domInteractive, content_loaded_ms: n.domContentLoadedEventEnd,
                    load_ms: n.loadEventEnd, rows: document.querySelectorAll('#overview tbody tr').length}; }""")
        page.locator("#overview tbody tr").first.locator("a").click()
        page.wait_for_function("window.LLMPerf && window.LLMPerf.charts.length > 0")
        timing["series_charts_ms"] = page.evaluate("() => performance.now()")
        timing["series_points"] = page.evaluate("() => window.LLMPerf.charts.reduce((n, c) => n + c.points, 0)")
        browser.close()
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db, out = Path(tmp) / "history.db", Path(tmp) / "site"
        started = time.perf_counter()
        generate_history(db, TESTS, runs=args.runs)
        generated_s = time.perf_counter() - started
        started = time.perf_counter()
        counts = build_dashboard(db, out)
        build_s = time.perf_counter() - started
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
        print(f"history: {args.runs} runs, {counts['series']} series, {counts['points']} points "
              f"(generated in {generated_s:.1f} s)")
        print(f"build: {build_s:.1f} s for {counts['pages']} pages, {size_mb:.0f} MB written")
        if Path(args.chromium).exists():
            timing = open_in_chromium(out / "index.html", args.chromium)
            print(f"overview in headless Chromium: interactive at {timing['interactive_ms']:.0f} ms, DOM content "
                  f"loaded at {timing['content_loaded_ms']:.0f} ms, load at {timing['load_ms']:.0f} ms "
                  f"({timing['rows']} rows)")
            print(f"a series page: {timing['series_points']} points charted {timing['series_charts_ms']:.0f} ms "
                  "after navigation")
        else:
            print(f"no Chromium at {args.chromium}: the page timing is not measured")


if __name__ == "__main__":
    main()
