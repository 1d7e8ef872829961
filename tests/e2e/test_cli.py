"""The llmperf command."""

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmperf.cli import main
from pytest_llmperf.environment import collect_environment, collect_run_context
from pytest_llmperf.history.store import HistoryStore
from tests.factories import make_generate, make_record


@pytest.fixture
def history(tmp_path):
    path = tmp_path / "history.db"
    with HistoryStore.open(path) as store:
        store.start_run("run1", collect_environment("cpu"), collect_run_context(tmp_path, ("pytest",)))
        store.record_test("run1", make_record(make_generate(1, 1.0), make_generate(8, 2.0)), test_outcome="passed")
        store.finish_run("run1", "complete")
    return path


def test_history_shows_recent_results_as_a_table(history, capsys):
    assert main(["history", "--db", str(history), "--metric", "tokens_per_s"]) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "median" in out and "CV" in out
    lines = [line for line in out.splitlines() if "tokens_per_s" in line]
    assert len(lines) == 2
    assert any("400 tokens/s" in line and " 8 " in line for line in lines)  # batch 8: 8 * 100 tokens / 2.0 s
    assert any("100 tokens/s" in line and " 1 " in line for line in lines)
    assert "t.py::test_x" in out


def test_history_filters_and_limits(history, capsys, tmp_path):
    with HistoryStore.open(history) as store:
        store.start_run("run2", collect_environment("cpu"), collect_run_context(tmp_path, ("pytest",)))
        store.record_test("run2", make_record(make_generate(1, 1.0)), test_outcome="passed")
        store.finish_run("run2", "complete")

    def shown(*args: str) -> list[str]:
        assert main(["history", "--db", str(history), "--backend", "hf", *args]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if "synthetic:llama-tiny" in line]

    # --last N: every result of the newest N runs (run2 measured batch 1 only; run1 batches 1 and 8)
    newest = shown("--last", "1")
    both = shown("--last", "2")
    assert newest and all(" 8 " not in row for row in newest)
    assert len(both) > len(newest) and any(" 8 " in row for row in both)
    assert main(["history", "--db", str(history), "--backend", "vllm"]) == 1
    assert "no results match" in capsys.readouterr().err


def test_history_without_a_database_says_how_to_make_one(tmp_path, capsys):
    assert main(["history", "--db", str(tmp_path / "none.db")]) == 2
    assert "run `pytest --llmperf` first" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_history_of_a_corrupt_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    assert main(["history", "--db", str(bad)]) == 2
    assert "not a readable SQLite database" in capsys.readouterr().err


def test_plan_of_bloom_176b_from_the_config_alone(capsys):
    assert main(["plan", "synthetic:bloom-176b", "--batch-sizes", "1,32", "--world-sizes", "1,8"]) == 0
    out = capsys.readouterr().out
    assert "176.25 B parameters" in out
    assert "352.49" in out  # all weights on one rank
    assert "44.06" in out  # weights per rank at 8 ranks
    rows = [line for line in out.splitlines() if line.strip().startswith(("│", "┃")) and "GB" not in line]
    assert len([r for r in rows if any(c.isdigit() for c in r)]) == 4


def test_plan_of_an_unknown_model_is_a_clear_error(capsys):
    assert main(["plan", "synthetic:bloom-9000"]) == 2
    err = capsys.readouterr().err
    assert "bloom-9000" in err and "bloom-176b" in err


def test_the_console_script_is_installed():
    exe = Path(sys.executable).parent / "llmperf"  # installed beside the interpreter running the tests
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "history" in out and "plan" in out


def test_plan_from_a_config_json(tmp_path, capsys):
    from pytest_llmperf.models.shapes import shape_config

    shape_config("gpt2-tiny").save_pretrained(tmp_path)
    assert main(["plan", f"synthetic:{tmp_path / 'config.json'}", "--dtype", "float32", "--batch-sizes", "4",
                 "--world-sizes", "1", "--prompt-tokens", "10", "--new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    # gpt2-tiny: 2 layers, 4 heads of 16, float32: 2 * 2 * 4 * 16 * (10 + 6) * 4 sequences * 4 bytes
    assert f"{2 * 2 * 4 * 16 * 16 * 4 * 4 / 1e9:.3g}" in out


def test_history_of_an_unknown_metric_names_it_and_the_known_ones(history, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["history", "--db", str(history), "--metric", "nosuch"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: llmperf history" in err
    assert "argument --metric: unknown metric 'nosuch'; known metrics: load_s," in err and "tokens_per_s" in err
    assert "no results match" not in err


def test_accept_marks_the_newest_run_or_the_named_one(history, capsys):
    assert main(["accept", "--db", str(history), "--test", "t.py::*", "--reason", "new sampler"]) == 0
    assert "accepted in run run1: t.py::*: new sampler" in capsys.readouterr().out
    assert main(["accept", "--db", str(history), "--run", "run1", "--test", "t.py::*", "--metric", "tokens_per_s",
                 "--reason", "new sampler"]) == 0
    assert "accepted in run run1: t.py::* tokens_per_s: new sampler" in capsys.readouterr().out
    with HistoryStore.open(history) as store:
        assert [r["metric"] for r in store.db["acceptances"].rows] == [None, "tokens_per_s"]


def test_accept_in_a_history_without_runs_says_so(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    HistoryStore.open(empty).close()
    assert main(["accept", "--db", str(empty), "--test", "t.py::*", "--reason", "intended"]) == 2
    assert "holds no runs; run `pytest --llmperf` first" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [["history"], ["accept", "--test=x", "--reason=y"], ["export"],
                                  ["prune", "--keep-days=1"], ["dashboard", "--out=site"]])
def test_a_history_error_names_the_cli_flag_not_pytests(verb, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    assert main([*verb, f"--db={bad}"]) == 2
    err = capsys.readouterr().err
    assert "not a readable SQLite database" in err and "--db PATH" in err, err
    assert "--llmperf-db" not in err, err
