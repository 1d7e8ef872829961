"""The Datasette dashboard (dashboards/metadata.yml) against a real history: every canned query runs
through Datasette and returns the rows it promises."""

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest

SKIP = "the dashboard needs datasette: pip install 'datasette==0.65.5'"
datasette_app = pytest.importorskip("datasette.app", reason=SKIP)
datasette_utils = pytest.importorskip("datasette.utils", reason=SKIP)

from pytest_llmperf.environment import GitState, RunContext  # noqa: E402
from pytest_llmperf.gate.history import HistoryBaseline, history_comparisons  # noqa: E402
from pytest_llmperf.gate.verdict import judge  # noqa: E402
from pytest_llmperf.history.store import HistoryStore  # noqa: E402
from pytest_llmperf.measure.metrics import TRIAL_METRICS  # noqa: E402
from pytest_llmperf.results import (  # noqa: E402
    BenchRecord,
    BudgetCheck,
    GenerateConfig,
    GenerateResult,
    LoadResult,
    MemoryPeak,
    PageCache,
    Trial,
)
from tests.factories import LLAMA_TINY as MODEL  # noqa: E402
from tests.factories import NIGHTLY_H100 as H100  # noqa: E402

METADATA_PATH = Path(__file__).resolve().parents[2] / "dashboards" / "metadata.yml"
METADATA = datasette_utils.parse_metadata(METADATA_PATH.read_text())
QUERIES = METADATA["databases"]["history"]["queries"]

HF = "suites/test_generate.py::test_generate[llama-tiny-hf]"
DS = "suites/test_generate.py::test_generate[llama-tiny-deepspeed-kernel-inject]"
ACCEPTED = "new attention kernel: slower by design"
NOW = datetime.now(UTC)


def ago(*, days: float = 0, minutes: float = 0) -> str:
    return (NOW - timedelta(days=days, minutes=minutes)).isoformat(timespec="seconds")


def generate(rng, batch: int, e2e_s: float, *, oom: bool = False) -> GenerateResult:
    config = GenerateConfig(batch_size=batch, prompt_tokens=32, new_tokens=100, trials=5, warmups=1)
    if oom:
        return GenerateResult(config=config, outcome="oom",
                              error="CUDA out of memory. Tried to allocate 2.00 GiB")
    # a batch of 8 takes twice as long as one sequence: 4x the throughput
    e2e = e2e_s * (2.0 if batch >= 8 else 1.0)
    trials = []
    for _ in range(5):
        trial_e2e = e2e * (1 + rng.normal(0, 0.01))
        gap = trial_e2e / 100  # the decode steps' median gap
        trials.append(Trial(ttft_s=0.02 * (1 + rng.normal(0, 0.01)), e2e_s=trial_e2e, batch_size=batch,
                            new_tokens=100, itl_p50_s=gap, itl_p90_s=gap * 1.1, itl_p99_s=gap * 1.5))
    return GenerateResult(config=config, outcome="ok", trials=tuple(trials),
                          memory=MemoryPeak(peak_bytes=2**30 * batch, reserved_bytes=None, method="cuda"))


def record(rng, test_id: str, backend: str, variant: str, world_size: int, e2e_s: float, *,
           oom: tuple[int, ...] = (), budget: float | None = None, max_batch: int | None = None) -> BenchRecord:
    generates = tuple(generate(rng, b, e2e_s, oom=b in oom) for b in (1, 8, 16))
    checks: tuple[BudgetCheck, ...] = ()
    if budget is not None:  # tokens/s of a batch of 8 must stay above the budget
        measured = next(g for g in generates if g.batch_size == 8).median("tokens_per_s")
        checks = (BudgetCheck(metric="tokens_per_s", bound="min", limit=budget, batch_size=8, measured=measured,
                              outcome="pass" if measured >= budget else "miss"),)
    load = LoadResult(load_s=2.0 * (1 + rng.normal(0, 0.01)), phases=(("read", 1.5), ("place", 0.5)),
                      weights_bytes=10**8, memory=MemoryPeak(peak_bytes=2 * 10**8, reserved_bytes=None, method="cuda"),
                      page_cache=PageCache(1.0), devices=tuple(f"cuda:{i}" for i in range(world_size)))
    return BenchRecord(test_id=test_id, model=MODEL, backend=backend, variant=variant, world_size=world_size,
                       seed=0, load=load, generates=generates, budget_checks=checks, max_batch=max_batch)


def ctx(commit: str) -> RunContext:
    return RunContext(host="runner", cpu_model="x", cpu_count=16, platform="linux", git=GitState(commit, "main", False),
                      project_root="/p", argv=("-m", "llmperf"), plugin_version="0.1.0", pytest_version="9.0")


class Built:
    """Where the history is, and its runs' start times and commits, for the expectations."""

    latest = "run08"

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[str, dict[str, str]] = {}


#: (days ago, hf's e2e at batch 1, deepspeed's batch 16 out of memory): hf takes 25 % longer from run04 on (a
#: regression accepted as intended), and 28 % longer again in run08; run09 is an A/B run (outside the history)
TIMELINE = [(12, 1.0, True), (11, 1.0, True), (10, 1.0, False), (9, 1.25, False), (3, 1.25, False),
            (2, 1.25, False), (1, 1.25, False), (1 / 24, 1.6, False)]


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Built:
    built = Built(tmp_path_factory.mktemp("dash") / "history.db")
    rng = np.random.default_rng(7)
    store = HistoryStore.open(built.path)
    try:
        for n, (days, hf_e2e, ds_oom) in enumerate(TIMELINE, start=1):
            run_id, commit, started_at = f"run{n:02}", f"{n:07x}c0ffee", ago(days=days)
            built.runs[run_id] = {"started_at": started_at, "commit": commit}
            store.start_run(run_id, H100, ctx(commit), started_at=started_at)
            store.record_test(run_id, record(rng, HF, "hf", "default", 1, hf_e2e, oom=(16,), budget=300.0,
                                             max_batch=12), test_outcome="passed")
            store.record_test(run_id, record(rng, DS, "deepspeed", "kernel-inject", 2, 0.5,
                                             oom=(16,) if ds_oom else ()), test_outcome="passed")
            store.finish_run(run_id, "complete")
            verdicts = judge(history_comparisons(store, run_id, HistoryBaseline(branch="main")))
            store.record_verdicts(run_id, verdicts, baseline_kind="history")
            if run_id != built.latest:  # stored when the run ended; the latest run's verdicts are from now
                with store.transaction() as db:
                    db.execute("UPDATE verdicts SET created_at = ? WHERE run_id = ?", [started_at, run_id])
            if run_id == "run04":
                store.accept(run_id, HF, ACCEPTED)
        # an A/B run after them all: other revisions, never the latest value of a series
        built.runs["run09"] = {"started_at": ago(minutes=10), "commit": "abababa"}
        store.start_run("run09", H100, ctx("abababa"), started_at=built.runs["run09"]["started_at"], ab_group="g1",
                        ab_side="head")
        store.record_test("run09", record(rng, HF, "hf", "default", 1, 5.0), test_outcome="passed")
        store.finish_run("run09", "complete")
    finally:
        store.close()
    return built


def query(path: Path, name: str, **params) -> list[dict]:
    """Run a canned query the way the dashboard does: through Datasette, with the metadata file."""
    status, rows = get(path, f"/history/{name}.json?" + urlencode({"_shape": "array", **params}))
    assert status == 200, (name, params, rows)
    return rows


def get(path: Path, url: str):
    async def fetch():
        ds = datasette_app.Datasette([str(path)], metadata=METADATA)
        response = await ds.client.get(url)
        return response.status_code, response.json() if url.split("?")[0].endswith(".json") else response.text

    return asyncio.run(fetch())


def sql(path: Path, text: str, params=()) -> list[tuple]:
    with HistoryStore.open(path) as store:
        return [tuple(r) for r in store.db.execute(text, params).fetchall()]


def series_key(path: Path, test_id: str, metric: str, batch_size: int | None) -> str:
    return sql(path, "SELECT DISTINCT series_key FROM results WHERE test_id = ? AND metric = ? AND batch_size IS ?",
               [test_id, metric, batch_size])[0][0]


# --------------------------------------------------------------------------------------------------
# the metadata file


def named_params(text: str) -> set[str]:
    without_strings = re.sub(r"'[^']*'", "''", text)
    return set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", without_strings))


def test_the_metadata_describes_every_table_and_column_it_names(tmp_path):
    with HistoryStore.open(tmp_path / "history.db") as store:
        schema = {t.name: set(t.columns_dict) for t in store.db.tables}
    tables = METADATA["databases"]["history"]["tables"]
    assert set(tables) == set(schema), "describe every table of the history (and only those)"
    for name, meta in tables.items():
        assert meta.get("description"), name
        named = [*meta.get("facets", []), *meta.get("units", {}), *meta.get("columns", {})]
        named += [meta[k] for k in ("sort", "sort_desc", "label_column") if k in meta]
        assert set(named) <= schema[name], (name, set(named) - schema[name])


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_canned_query_has_a_title_a_description_and_declares_its_parameters(name):
    q = QUERIES[name]
    assert q.get("title") and q.get("description") and q.get("sql")
    assert set(q.get("params", [])) == named_params(q["sql"]), "list every :parameter in params, in form order"
    assert not q.get("write")


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_canned_query_runs_on_an_empty_history(tmp_path, name):
    path = tmp_path / "history.db"
    HistoryStore.open(path).close()  # the schema, no rows
    assert query(path, name) == []
    if QUERIES[name].get("params"):
        assert query(path, name, **{p: "1" for p in QUERIES[name]["params"]}) == []


def test_the_pages_render(history):
    """Index, database, every table (facets, units, labels) and every query page render as HTML."""
    pages = ["/", "/history", *(f"/history/{t}" for t in METADATA["databases"]["history"]["tables"]),
             *(f"/history/{q}" for q in QUERIES)]
    for page in pages:
        status, html = get(history.path, page)
        assert status == 200, (page, html[:2000])
    status, html = get(history.path, "/history/latest_per_series")
    assert "Latest value of every series" in html and "NVIDIA H100 80GB HBM3" in html


# --------------------------------------------------------------------------------------------------
# every canned query against a real history


def check_latest_per_series(h: Built, rows: list[dict]) -> None:
    newest: dict[str, tuple] = {}
    for key, run_id, value in sql(h.path, """
            SELECT res.series_key, res.run_id, res.value FROM results res JOIN runs r ON r.id = res.run_id
            WHERE r.ab_group IS NULL ORDER BY r.started_at, res.id"""):
        newest[key] = (run_id, value)  # later rows win
    keys = [r["series_key"] for r in rows]
    assert len(keys) == len(set(keys)) == len(newest), "exactly one row per series"
    assert {r["series_key"]: (r["run_id"], r["value"]) for r in rows} == newest
    by = {(r["test_id"], r["metric"], r["batch_size"]): r for r in rows}
    hf8 = by[(HF, "tokens_per_s", 8)]
    assert hf8["run_id"] == h.latest and hf8["started_at"] == h.runs[h.latest]["started_at"]
    assert hf8["value"] == pytest.approx(800 / 3.2, rel=0.03) and hf8["unit"] == "tokens/s"
    assert (hf8["git_commit"], hf8["git_branch"]) == (h.runs[h.latest]["commit"], "main")
    assert (hf8["model_id"], hf8["backend"], hf8["variant"], hf8["world_size"]) == (MODEL.model_id, "hf", "default", 1)
    assert hf8["device_model"] == H100.device_model and hf8["budget_outcome"] == "miss"
    assert by[(DS, "tokens_per_s", 16)]["run_id"] == h.latest  # fitted from run03 on
    assert (HF, "tokens_per_s", 16) not in by  # out of memory in every run but the A/B one
    assert by[(HF, "load_s", None)]["unit"] == "s" and by[(HF, "max_batch", None)]["value"] == 12


def check_latest_per_series_filters(h: Built) -> None:
    assert len(query(h.path, "latest_per_series", branch="main")) == len(query(h.path, "latest_per_series"))
    assert query(h.path, "latest_per_series", branch="feature") == []
    loads = query(h.path, "latest_per_series", metric="load_s")
    assert [(r["test_id"], r["batch_size"]) for r in loads] == [(DS, None), (HF, None)]
    assert query(h.path, "latest_per_series", model="LLAMA-TINY")
    assert query(h.path, "latest_per_series", model="bloom") == []


def check_slowest_backends_per_model(h: Built, rows: list[dict]) -> None:
    assert [(r["batch_size"], r["slowest_rank"], r["backend"]) for r in rows] == [
        (1, 1, "hf"), (1, 2, "deepspeed"), (8, 1, "hf"), (8, 2, "deepspeed"), (16, 1, "deepspeed")]
    hf8, ds8 = rows[2], rows[3]
    assert hf8["tokens_per_s"] == pytest.approx(800 / 3.2, rel=0.03) and hf8["run_id"] == h.latest
    assert ds8["tokens_per_s"] == pytest.approx(800 / 1.0, rel=0.03) and ds8["of_fastest"] == 1.0
    assert hf8["of_fastest"] == pytest.approx(hf8["tokens_per_s"] / ds8["tokens_per_s"])
    assert (ds8["variant"], ds8["world_size"], ds8["device_model"]) == ("kernel-inject", 2, H100.device_model)
    assert all(r["model_id"] == MODEL.model_id and r["dtype"] == "bfloat16" for r in rows)


def check_slowest_backends_filters(h: Built) -> None:
    assert [r["backend"] for r in query(h.path, "slowest_backends_per_model", batch_size="8")] == ["hf", "deepspeed"]
    assert len(query(h.path, "slowest_backends_per_model", days="1")) == 5  # the latest run: an hour ago
    assert query(h.path, "slowest_backends_per_model", days="0.01") == []  # nothing in the last 15 minutes
    assert query(h.path, "slowest_backends_per_model", model="bloom") == []


def check_regressions_this_week(h: Built, rows: list[dict]) -> None:
    assert rows and {r["run_id"] for r in rows} == {h.latest}  # run04's regression is 9 days old
    assert all(r["backend"] == "hf" and r["test_id"] == HF for r in rows)
    tps = {r["batch_size"]: r for r in rows if r["metric"] == "tokens_per_s"}
    assert set(tps) == {1, 8}
    v = tps[8]
    assert v["ratio"] == pytest.approx(1.25 / 1.6, rel=0.05)
    assert v["ci_low"] < v["ratio"] < v["ci_high"] < 1  # the interval of the change excludes no change
    assert v["p_value"] < 0.05 and v["accepted"] is None and v["baseline_kind"] == "history"
    assert v["baseline"] == f"main: 4 runs since the change accepted at {h.runs['run04']['started_at']}"
    assert v["git_commit"] == h.runs[h.latest]["commit"]
    created = [r["created_at"] for r in rows]
    assert created == sorted(created, reverse=True)


def check_regressions_window(h: Built) -> None:
    month = query(h.path, "regressions_this_week", days="30")
    assert {r["run_id"] for r in month} == {h.latest, "run04"}
    assert [r["run_id"] for r in month][-1] == "run04"  # newest first
    assert {r["accepted"] for r in month if r["run_id"] == "run04"} == {ACCEPTED}


def check_series_history(h: Built, rows: list[dict]) -> None:
    assert [r["run_id"] for r in rows] == [f"run{n:02}" for n in range(1, 9)]  # oldest first, no A/B run
    values = [r["value"] for r in rows]
    assert values[:3] == pytest.approx([400.0] * 3, rel=0.03) and values[-1] == pytest.approx(250.0, rel=0.03)
    verdicts = {r["run_id"]: r for r in rows}
    assert verdicts["run04"]["verdict"] == "regressed" and verdicts["run04"]["accepted"] == ACCEPTED
    assert verdicts["run08"]["verdict"] == "regressed" and verdicts["run07"]["verdict"] == "unchanged"
    assert [r["budget_outcome"] for r in rows] == ["pass"] * 7 + ["miss"]


def check_oom_batches(h: Built, rows: list[dict]) -> None:
    # deepspeed's batch of 16 ran out of memory in run01 and run02 only: it fits now
    assert len(rows) == 1
    (row,) = rows
    assert (row["test_id"], row["backend"], row["batch_size"], row["run_id"]) == (HF, "hf", 16, h.latest)
    assert row["largest_ok_batch"] == 8 and row["max_batch_searched"] == 12
    assert "out of memory" in row["error"] and row["device_model"] == H100.device_model


def check_budget_misses(h: Built, rows: list[dict]) -> None:
    assert len(rows) == 1
    (row,) = rows
    assert (row["test_id"], row["run_id"], row["metric"], row["batch_size"]) == (HF, h.latest, "tokens_per_s", 8)
    assert (row["bound"], row["limit"], row["unit"], row["outcome"]) == ("min", 300.0, "tokens/s", "miss")
    assert row["measured"] == pytest.approx(250, rel=0.03)
    assert row["measured_over_limit"] == pytest.approx(row["measured"] / 300.0)
    passes = query(h.path, "budget_misses", outcome="pass")
    assert [r["run_id"] for r in passes] == [f"run{n:02}" for n in range(7, 0, -1)]  # newest first
    recent = query(h.path, "budget_misses", days="5", outcome="pass")
    assert [r["run_id"] for r in recent] == ["run07", "run06", "run05"]


def check_noise(h: Built, rows: list[dict]) -> None:
    expected = sql(h.path, "SELECT count(*) FROM results WHERE run_id = ? AND cv IS NOT NULL", [h.latest])[0][0]
    assert len(rows) == expected == 5 * len(TRIAL_METRICS)  # hf: batches 1 and 8; deepspeed: 1, 8 and 16
    assert {r["run_id"] for r in rows} == {h.latest}  # the latest run outside A/B groups
    assert {r["metric"] for r in rows} == set(TRIAL_METRICS)
    cvs = [r["cv"] for r in rows]
    assert cvs == sorted(cvs, reverse=True) and all(r["n"] == 5 for r in rows)
    assert {r["run_id"] for r in query(h.path, "noise", run_id="run09")} == {"run09"}
    assert {r["metric"] for r in query(h.path, "noise", metric="ttft_ms")} == {"ttft_ms"}


CHECKS = {
    "latest_per_series": (check_latest_per_series, check_latest_per_series_filters),
    "slowest_backends_per_model": (check_slowest_backends_per_model, check_slowest_backends_filters),
    "regressions_this_week": (check_regressions_this_week, check_regressions_window),
    "series_history": (check_series_history, None),
    "oom_batches": (check_oom_batches, None),
    "budget_misses": (check_budget_misses, None),
    "noise": (check_noise, None),
}


def default_params(h: Built, name: str) -> dict[str, str]:
    """The parameters a query needs to show anything: none, but a series for series_history."""
    if name == "series_history":
        return {"series_key": series_key(h.path, HF, "tokens_per_s", 8)}
    return {}


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_canned_query_returns_what_it_promises(history, name):
    rows = query(history.path, name, **default_params(history, name))
    assert isinstance(rows, list)
    check, more = CHECKS.get(name, (None, None))
    if check is None:  # a new query: it runs; give it expectations in CHECKS
        return
    check(history, rows)
    if more is not None:
        more(history)


def test_the_readme_lists_every_canned_query():
    readme = (METADATA_PATH.parent / "README.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", readme, re.MULTILINE))
    assert listed == set(QUERIES)
    assert {"latest_per_series", "slowest_backends_per_model", "regressions_this_week"} <= listed
