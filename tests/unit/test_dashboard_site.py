"""The dashboard's builder without a browser: what it writes, what it escapes, what it puts first."""

import json
import re

import pytest

from pytest_llmperf.cli import main
from pytest_llmperf.dashboard.generate import GeneratedTest, generate_history
from pytest_llmperf.dashboard.history import load_history, pages
from pytest_llmperf.dashboard.site import build_dashboard, script_json

HOSTILE = "suites/t.py::test_x[<script>alert(1)</script>]"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    tests = [GeneratedTest("suites/t.py::test_x[llama-hf]", "hf", (1, 8), step=(40, -0.15), budget_fraction=0.8),
             GeneratedTest("suites/t.py::test_x[llama-accelerate]", "accelerate", (1, 8)),
             GeneratedTest(HOSTILE, "ds-zero", (1,))]
    generate_history(root / "history.db", tests, runs=80, noise=0.02)
    counts = build_dashboard(root / "history.db", root / "site")
    return root, counts


def test_every_series_has_a_row_and_every_configuration_a_page_with_its_data_and_exports(site):
    root, counts = site
    assert counts == {"runs": 80, "series": 9 + 9 + 5, "pages": 5, "points": 80 * 23}
    index = (root / "site" / "index.html").read_text()
    assert index.count("<tr data-model=") == 23
    assert len(list((root / "site" / "series").glob("*.html"))) == 5
    assert len(list((root / "site" / "data").glob("*.js"))) == 5
    assert {p.name for p in (root / "site" / "assets").iterdir()} >= {"uPlot.iife.min.js", "dashboard.js"}
    for page in (root / "site" / "series").glob("*.html"):  # offline: nothing from another host
        assert "http://" not in page.read_text() and "https://" not in page.read_text()


def test_what_got_worse_is_on_top_with_its_change_point_and_size(site):
    root, _ = site
    index = (root / "site" / "index.html").read_text()
    first_rows = index.split("<tbody>")[1].split("</tr>")[:4]
    assert all("llama-hf" in row for row in first_rows), first_rows  # the 15 % step: tokens_per_s and tpot_ms, b1 b8
    assert all("change point" in row for row in first_rows)
    assert "change point -15" in index or "change point -14" in index or "change point -16" in index
    assert "recent shift" not in index  # the step is 40 runs old, the rest noise: the newest runs did not move


def test_strings_from_the_history_are_escaped_in_html_and_in_script_data(site):
    root, _ = site
    index = (root / "site" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in index
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    for path in (root / "site" / "data").glob("*.js"):
        text = path.read_text()
        assert "</script" not in text and "<script" not in text
    assert script_json({"a": "</script><!--"}) == '{"a":"\\u003c/script\\u003e\\u003c!--"}'
    assert json.loads(script_json({"a": "</script>&"})) == {"a": "</script>&"}


def test_a_page_holds_one_configuration_and_the_load_metrics_of_its_test(site):
    root, _ = site
    history = load_history(root / "history.db")
    by_page = pages(history)
    hf_b8 = [members for members in by_page.values()
             if any(s.subject.test_id.endswith("[llama-hf]") and s.subject.point.batch_size == 8 for s in members)]
    [members] = hf_b8
    assert sorted(s.subject.metric for s in members) == ["load_s", "peak_mem_bytes", "tokens_per_s", "tpot_ms",
                                                          "ttft_ms"]
    data = (root / "site" / "data" / f"{members[0].page}.js").read_text()
    page = json.loads(data.split("=", 1)[1].rstrip(";\n"))
    tokens = next(s for s in page["series"] if s["metric"] == "tokens_per_s")
    assert tokens["budget"] == pytest.approx(900 * 8 * 0.8)
    assert len(tokens["x"]) == 80 and tokens["changepoints"][0]["index"] in range(38, 43)
    assert len(page["runs"]) == 80 and len(page["envs"]) == 1  # each run once, shared by the page's charts
    assert page["runs"][tokens["run"][-1]][4].startswith("git checkout ")  # the command to reproduce it
    assert {s["label"] for s in page["siblings"]} == {"hf", "accelerate"}  # the same model's backends side by side


def test_the_command_builds_the_site_and_names_a_missing_history(site, tmp_path, capsys):
    root, _ = site
    assert main(["dashboard", "--db", str(root / "history.db"), "--out", str(tmp_path / "out")]) == 0
    assert "23 series (1840 points, 80 runs) on 5 pages" in capsys.readouterr().out
    assert main(["dashboard", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "x")]) == 2
    assert "no history database at" in capsys.readouterr().err


def test_every_row_links_to_a_page_that_was_written_and_a_load_metric_to_its_smallest_batch(site):
    root, _ = site
    index = (root / "site" / "index.html").read_text()
    links = re.findall(r'<tr [^>]*data-metric="([a-z_]+)"><td class="test"><a href="series/(\w+)\.html#main"', index)
    assert len(links) == 23 and all((root / "site" / "series" / f"{page}.html").exists() for _, page in links)
    history = load_history(root / "history.db")
    smallest = {s.subject.test_id: s.page for s in history.series.values() if s.subject.point.batch_size == 1}
    loads = [page for name, page in links if name == "load_s"]
    assert sorted(loads) == sorted(smallest.values())  # each test's load_s row opens its batch-1 page
