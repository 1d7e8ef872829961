"""The rank command table: commands by name, one registration each, and modules that add their own."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from pytest_llmperf.launch import commands
from pytest_llmperf.launch.commands import (
    COMMAND_MODULES_ENV,
    COMMANDS,
    Rank,
    import_command_modules,
    rank_command,
    run_command,
)
from pytest_llmperf.launch.inline import InlineLauncher


@pytest.fixture
def table(monkeypatch):
    """The command table, restored after the test."""
    monkeypatch.setattr(commands, "COMMANDS", dict(COMMANDS))
    return commands.COMMANDS


def test_every_command_of_the_launchers_is_in_the_table():
    assert {"load", "first_generate", "generate", "tokens", "limit_memory", "close"} <= set(COMMANDS)


def test_a_command_is_run_by_name_with_its_arguments(table):
    @rank_command("echo")
    def echo(rank: Rank, text: str) -> str:
        return f"{rank.backend_id}@{rank.device}: {text}"

    assert run_command(Rank("hf", "cpu"), "echo", {"text": "hi"}) == "hf@cpu: hi"


def test_an_unknown_command_names_the_known_ones_and_how_to_add_one(table):
    with pytest.raises(ValueError, match=rf"unknown rank command 'nosuch'; known: .*load.*{COMMAND_MODULES_ENV}"):
        run_command(Rank("hf", "cpu"), "nosuch", {})


def test_a_command_before_load_says_so():
    with pytest.raises(RuntimeError, match="a command of backend hf came before 'load'"):
        run_command(Rank("hf", "cpu"), "tokens", {"input_ids": None, "new_tokens": 1})


def test_a_name_is_registered_once(table):
    with pytest.raises(ValueError, match=r"rank command 'load' is already registered by "
                                         r"pytest_llmperf\.launch\.commands\.load; give .* another name"):
        @rank_command("load")
        def load(rank: Rank) -> None:
            pass


def test_modules_named_in_the_environment_add_their_commands(table, tmp_path, monkeypatch):
    (tmp_path / "my_commands.py").write_text(
        "from pytest_llmperf.launch.commands import rank_command\n\n"
        "@rank_command('shout')\n"
        "def shout(rank, text):\n"
        "    return text.upper()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(COMMAND_MODULES_ENV, "my_commands")
    monkeypatch.delitem(sys.modules, "my_commands", raising=False)
    launcher = InlineLauncher("hf", "cpu")  # imports them, as every rank process does
    assert launcher.run("shout", {"text": "hi"}) == ["HI"]
    # the same file imported again under another name (a tests folder that is also a package) registers nothing new
    spec = importlib.util.spec_from_file_location("tests_my_commands", tmp_path / "my_commands.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert launcher.run("shout", {"text": "again"}) == ["AGAIN"]
    with pytest.raises(ValueError, match="one rank, rank 0"):
        launcher.run("shout", {"text": "hi"}, ranks=[1])


def test_a_module_that_cannot_be_imported_is_named_with_the_fix(table, monkeypatch):
    monkeypatch.setenv(COMMAND_MODULES_ENV, "no_such_module_here")
    with pytest.raises(ImportError, match=f"{COMMAND_MODULES_ENV} names module 'no_such_module_here', which cannot be "
                                          "imported here .*PYTHONPATH"):
        import_command_modules()
