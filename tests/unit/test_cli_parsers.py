"""The llmperf command's parsers: every verb keeps its options, and options several verbs share behave alike."""

import pytest

from pytest_llmperf.cli import main

VERB_OPTIONS = {
    "history": ("--db PATH", "--test", "--model", "--backend", "--metric", "--last N"),
    "plan": ("model", "--dtype", "--batch-sizes LIST", "--world-sizes LIST", "--prompt-tokens N", "--new-tokens N"),
    "ab": ("--base REV", "--head REV", "--max-rounds N", "--time-budget TIME", "--db PATH", "--repo", "--rounds N",
           "--base-python PATH", "--head-python PATH", "--pythonpath DIRS", "--cpus LIST", "--keep-worktrees",
           "--report-dir DIR", "--detect CHANGE", "pytest_args"),
    "calibrate": ("--rev REV", "--db PATH", "--repo", "--rounds N", "--base-python PATH", "--head-python PATH",
                  "--pythonpath DIRS", "--cpus LIST", "--keep-worktrees", "--report-dir DIR", "--detect CHANGE",
                  "pytest_args"),
    "accept": ("--db PATH", "--run ID", "--test PATTERN", "--metric", "--reason"),
    "merge": ("--db PATH", "SOURCE"),
    "export": ("--db PATH", "--run ID", "--format", "--out FILE"),
    "prune": ("--db PATH", "--keep-days N"),
    "dashboard": ("--db PATH", "--out DIR", "--branch NAME"),
}


def _help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_lists_every_verb_in_order(capsys):
    out = _help([], capsys)
    listed = [line.split()[0] for line in out.split("  COMMAND\n", 1)[1].splitlines() if line.startswith("    ")
              and not line.startswith("     ")]
    assert listed == list(VERB_OPTIONS)


@pytest.mark.parametrize("verb", VERB_OPTIONS)
def test_each_verb_lists_its_options(verb, capsys):
    out = _help([verb], capsys)
    assert f"usage: llmperf {verb}" in out
    for option in VERB_OPTIONS[verb]:
        assert option in out, f"llmperf {verb} --help lacks {option}"
    if "--db PATH" in VERB_OPTIONS[verb]:
        assert "(default: .llmperf/history.db, as pytest --llmperf writes it)" in " ".join(out.split())


@pytest.mark.parametrize("verb", ["history", "accept"])
def test_an_unknown_metric_is_a_usage_error_naming_it_and_the_known_ones(verb, tmp_path, capsys):
    argv = [verb, "--db", str(tmp_path / "none.db"), "--metric", "tokens_per_sec"]
    if verb == "accept":
        argv += ["--test", "t.py::*", "--reason", "intended"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: llmperf {verb}" in err
    assert "argument --metric: unknown metric 'tokens_per_sec'; known metrics: load_s," in err
    assert "tokens_per_s," in err


@pytest.mark.parametrize("argv", [
    ["history"], ["export"], ["prune", "--keep-days", "1"], ["dashboard", "--out", "site"],
    ["accept", "--test", "t.py::*", "--reason", "intended"],
], ids=lambda argv: argv[0])
def test_a_missing_history_says_how_to_make_one_or_to_pass_db(argv, tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main([*argv, "--db", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"llmperf {argv[0]}: no history database at {missing}; run `pytest --llmperf` first, or pass --db PATH" \
        in err
    assert not missing.exists()
