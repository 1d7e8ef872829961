"""Whether pytest chose a rootdir outside the repository that holds the tests.

pytest picks the rootdir before it knows the plugin's options, so the value of a space-separated option
(``--llmperf-db PATH``) counts as a test path there: the rootdir becomes a common ancestor of the tests
and that value. The history then lands elsewhere (relative paths are taken from the rootdir) and the
run's git branch, which the history gate's baseline depends on, is lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class RootdirWarning(UserWarning):
    """The rootdir is not the repository of the tests: the history's place and the run's branch are wrong."""


def repository_of(path: Path) -> Path | None:
    """The git work tree holding ``path`` (a ``.git`` directory or file in it or above it)."""
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None


def misplaced_rootdir(rootdir: Path, test_paths: Iterable[Path]) -> str | None:
    """A warning's text when ``rootdir`` lies outside the repository of a test path, else None."""
    for test_path in test_paths:
        repository = repository_of(test_path.resolve())
        if repository is None:
            continue
        root = rootdir.resolve()
        if root != repository and repository not in root.parents:
            return (
                f"pytest chose the rootdir {root}, outside the repository of the tests ({repository}): the "
                "history's relative paths and the run's git branch come from the rootdir. A value given to an "
                "--llmperf option as a separate argument is taken for a test path when pytest picks the rootdir; "
                "write the option as --llmperf-NAME=VALUE (e.g. --llmperf-db=PATH), or pass --rootdir="
                f"{repository}"
            )
    return None
