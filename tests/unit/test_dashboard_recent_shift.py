"""The overview's recent-shift flag: the gate's test of the newest runs, all series of a build judged together.

Rates are measured on generated series (a level with Gaussian noise, one value per run) over fixed seeds, and
asserted with a margin below what was measured.
"""

import json

import numpy as np
import pytest

from pytest_llmperf.dashboard.changepoints import detect_change_points
from pytest_llmperf.dashboard.generate import GeneratedTest, generate_history, generated_commit
from pytest_llmperf.dashboard.history import Series, load_history
from pytest_llmperf.dashboard.recent import recent_comparisons, recent_shifts
from pytest_llmperf.dashboard.site import Row, build_dashboard, worst_first
from pytest_llmperf.gate.verdict import Outcome
from tests.factories import series_key

RUNS = 40
SEEDS = 200


def series(values, name: str = "s0", metric: str = "tokens_per_s", branch: str = "main") -> Series:
    s = Series(series_key(metric, f"suites/t.py::test_{name}", batch_size=8, dtype="bfloat16"),
               f"page-{name}", "tok/s", "env", "cpu x1", branch)
    s.run_ids = [f"{name}-run{i}" for i in range(len(values))]
    s.values = [float(v) for v in values]
    return s


def noisy(rng, noise: float, runs: int = RUNS, *, step: float = 0.0, age: int = 0, level: float = 900.0):
    """``runs`` values around ``level`` with multiplicative (log-normal) noise, as timings have; the newest
    ``age`` runs moved by ``step``."""
    values = level * np.exp(rng.normal(0, noise, runs))
    if age:
        values[runs - age:] *= 1 + step
    return values


def detection_rates(noise: float, ages: tuple[int, ...], *, others: int = 0) -> dict[int, tuple[float, float]]:
    """step age -> (share of builds whose stepped series gets the recent-shift flag, share whose latest change
    point is within 2 runs of the step): a 10 % throughput drop, with ``others`` series of noise alone in the
    same build."""
    rates = {}
    for age in ages:
        flagged = placed = 0
        for seed in range(SEEDS):
            rng = np.random.default_rng(seed)
            stepped = series(noisy(rng, noise, step=-0.10, age=age))
            build = [stepped, *(series(noisy(rng, noise), f"n{i}") for i in range(others))]
            shift = recent_shifts(build).get((stepped.subject.digest(), "main"))
            flagged += shift is not None and shift.outcome is Outcome.REGRESSED
            points = detect_change_points(stepped.values)
            placed += bool(points) and abs(points[-1].index - (RUNS - age)) <= 2 and points[-1].relative_change < 0
        rates[age] = (flagged / SEEDS, placed / SEEDS)
    return rates


def test_a_10_percent_step_under_3_percent_noise_is_flagged_within_a_few_runs_in_a_build_of_20_series():
    rates = detection_rates(0.03, (3, 5), others=19)
    # measured (flag, change point): age 3 (70.5 %, 28 %), age 5 (92.5 %, 82 %)
    assert rates[3][0] >= 0.60 and rates[5][0] >= 0.85
    assert rates[3][0] > rates[3][1] + 0.3  # a change point needs more runs after the step


def test_a_10_percent_step_under_10_percent_noise_is_found_as_often_as_5_runs_allow_and_more_than_by_change_points():
    """The mean of 5 runs against 10 is 1.7 standard errors from the old level: no test at a 1 % false-flag
    rate finds that in most builds (one one-sided test with the noise known and an endless baseline: 42 %)."""
    rates = detection_rates(0.10, (5,))
    # measured: flag 7.5 %, change point 3 %
    assert rates[5][0] >= 0.04
    assert rates[5][0] > rates[5][1]


def test_series_of_noise_alone_flag_at_most_about_1_percent_of_builds():
    builds, flagged = 500, 0
    for seed in range(builds):
        rng = np.random.default_rng(10_000 + seed)
        build = [series(noisy(rng, 0.10, runs=4 + (i * 7) % 37), f"n{i}", "tokens_per_s" if i % 2 else "ttft_ms")
                 for i in range(20)]  # 4 to 40 runs: baselines of 3 runs and up
        flagged += bool(recent_shifts(build))
    assert flagged <= builds * 0.01  # measured: 0.55 % of 2,000 builds


@pytest.mark.parametrize(("metric", "step", "outcome"), [("tokens_per_s", -0.2, Outcome.REGRESSED),
                                                         ("tokens_per_s", 0.2, Outcome.IMPROVED),
                                                         ("ttft_ms", 0.2, Outcome.REGRESSED),
                                                         ("ttft_ms", -0.2, Outcome.IMPROVED)])
def test_a_shift_has_its_direction_size_window_and_runs(metric, step, outcome):
    s = series(noisy(np.random.default_rng(1), 0.02, step=step, age=5), metric=metric)
    [shift] = recent_shifts([s, series(noisy(np.random.default_rng(2), 0.02), "other")]).values()
    assert shift.outcome is outcome
    assert shift.change == pytest.approx(step, abs=0.03)
    assert shift.window in (3, 5) and shift.run_ids == tuple(s.run_ids[-shift.window:])
    assert 0 <= shift.p_value < 0.01


def test_a_shift_older_than_the_windows_is_left_to_the_change_points():
    s = series(noisy(np.random.default_rng(3), 0.02, step=-0.2, age=20))
    assert recent_shifts([s]) == {}
    assert [round(p.relative_change, 1) for p in detect_change_points(s.values)] == [-0.2]


def test_too_short_or_non_positive_series_are_not_judged_and_do_not_share_the_level():
    assert recent_comparisons(series([900.0, 880.0, 910.0])) is None  # 2 runs before the newest
    assert recent_comparisons(series([900.0, 880.0, 910.0, 905.0])) is not None
    assert recent_comparisons(series([900.0, 0.0, 910.0, 905.0, 899.0])) is None  # a log needs a positive value
    assert recent_comparisons(series([0.0, *[900.0 + i for i in range(40)]])) is not None  # beyond what is read
    stepped = series(noisy(np.random.default_rng(4), 0.03, step=-0.10, age=5))
    short = [series([900.0, 880.0], f"short{i}") for i in range(1000)]
    assert recent_shifts([stepped, *short]) == recent_shifts([stepped])


def test_flat_values_move_only_beyond_the_minimum_effect():
    """A metric that does not vary (memory counters): any change is real, but one under 5 % is not flagged."""
    assert recent_shifts([series([2.0e9] * 20, metric="peak_mem_bytes")]) == {}
    assert recent_shifts([series([2.0e9] * 20 + [2.02e9], metric="peak_mem_bytes")]) == {}
    [shift] = recent_shifts([series([2.0e9] * 20 + [2.2e9], metric="peak_mem_bytes")]).values()
    assert shift.outcome is Outcome.REGRESSED and shift.change == pytest.approx(0.1)


def test_the_overview_puts_a_recent_shift_above_a_smaller_change_point_and_a_smaller_latest_change():
    rng = np.random.default_rng(5)
    recent = series(noisy(rng, 0.005, step=-0.10, age=5), "recent")
    [shift] = recent_shifts([recent]).values()
    old = series(noisy(rng, 0.005, step=-0.07, age=20), "old")
    [point] = detect_change_points(old.values)
    rows = [Row(old, old.values[-1], 0.0, (point,), False),  # a -7 % step, 20 runs ago
            Row(recent, recent.values[-1], 0.03, (), False, shift),  # -10 % in the newest runs, -3 % the latest
            Row(series([900.0] * 10, "flat"), 900.0, 0.05, (), False)]  # the latest run 5 % worse
    assert [r.series.subject.test_id.rsplit("_", 1)[1] for r in worst_first(rows)] == ["recent", "old", "flat"]
    rows[1] = Row(recent, recent.values[-1], 0.03, (), False)  # without the flag, the -3 % says little
    assert [r.series.subject.test_id.rsplit("_", 1)[1] for r in worst_first(rows)] == ["old", "flat", "recent"]


def test_the_overview_flags_the_shift_with_its_size_window_and_commit_range(tmp_path):
    tests = [GeneratedTest("suites/t.py::test_x[llama-hf]", "hf", (1,), step=(RUNS - 5, -0.2)),
             GeneratedTest("suites/t.py::test_x[llama-accelerate]", "accelerate", (1,))]
    generate_history(tmp_path / "history.db", tests, runs=RUNS, noise=0.02, seed=3)
    build_dashboard(tmp_path / "history.db", tmp_path / "site")
    rows = (tmp_path / "site" / "index.html").read_text().split("<tbody>")[1].split("</tr>")[:-1]
    flagged = [r for r in rows if "recent shift" in r]
    assert rows[:len(flagged)] == flagged  # on top: tokens_per_s of llama-hf, and tpot_ms where it is shown
    assert any('data-metric="tokens_per_s"' in r for r in flagged)
    for row in flagged:
        assert "llama-hf" in row and 'class="flag recent worse"' in row
        text = row.split("recent shift ")[1]
        change, window = float(text.split("%")[0]), 1 if "in the newest run <code>" in row else int(text.split()[4])
        expected = -20 if 'data-metric="tokens_per_s"' in row else 25  # tpot_ms: 1 / 0.8
        assert abs(change - expected) <= 4
        first, last = (generated_commit(i)[:12] for i in (RUNS - window, RUNS - 1))
        assert f"<code>{first}..{last}</code>" in row
    history = load_history(tmp_path / "history.db")
    hf = next(s for s in history.series.values() if s.subject.backend == "hf" and s.subject.metric == "tokens_per_s")
    data = json.loads((tmp_path / "site" / "data" / f"{hf.page}.js").read_text().split("=", 1)[1].rstrip(";\n"))
    recent = {s["metric"]: s["recent"] for s in data["series"]}
    assert recent["tokens_per_s"]["outcome"] == "regressed" and abs(recent["tokens_per_s"]["change"] + 0.2) <= 0.04
    assert recent["ttft_ms"] is None and recent["load_s"] is None  # the step is in throughput only
