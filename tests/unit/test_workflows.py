"""The GitHub Actions workflows keep their security properties.

Code from a pull request may only run with a read-only token, and on the GPU runner only after a
maintainer's label; the workflow that writes the pull-request comment never runs code from the pull
request; no `run:` script interpolates text an outsider controls.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the workflow files")

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
NAMES = ("ci.yml", "llmperf-pr.yml", "llmperf-pr-comment.yml", "llmperf-nightly.yml")
LABEL = "run-llmperf"
MARKER = "<!-- llmperf-gate -->"
GPU_RUNNER = ["self-hosted", "linux", "gpu"]
README_COMMANDS = (
    ".ci/install",
    ".venv/bin/pytest",
    ".venv/bin/pytest --llmperf suites/",
)

#: text an outsider controls (titles, bodies, branch names, commit messages, labels, artifacts' names)
UNTRUSTED = re.compile(
    r"github\.head_ref"
    r"|github\.event\.(pull_request|issue)\.(title|body)"
    r"|github\.event\.pull_request\.head\.(ref|label|repo)"
    r"|github\.event\.(comment|review|review_comment|discussion)\."
    r"|github\.event\.(head_commit|commits)"
    r"|github\.event\.workflow_run\.(head_branch|head_commit|display_title|pull_requests|head_repository)"
    r"|github\.event\.label\."
)
#: all that a `run:` script may interpolate with ${{ }}: identifiers GitHub itself makes
TRUSTED_IN_RUN = {
    "github.sha",
    "github.run_id",
    "github.run_attempt",
    "github.workspace",
    "github.event.pull_request.number",
    "github.event.pull_request.head.sha",
    "runner.temp",
}
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.DOTALL)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    """The `on:` mapping (YAML 1.1 reads the key `on` as the boolean True)."""
    on = workflow["on"] if "on" in workflow else workflow[True]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def uses(workflow: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(workflow) if s.get("uses", "").split("@")[0] == action]


def run_scripts(workflow: dict[str, Any]) -> list[str]:
    return [s["run"] for s in steps(workflow) if "run" in s]


def one_job(workflow: dict[str, Any]) -> dict[str, Any]:
    [job] = workflow["jobs"].values()
    return job


def permissions(workflow: dict[str, Any]) -> list[dict[str, str]]:
    """The workflow's permissions and every job's."""
    found = [workflow.get("permissions")] + [job.get("permissions") for job in workflow["jobs"].values()]
    return [p for p in found if p is not None]


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict[str, Any]]:
    """Every workflow of the repository (the properties below hold for any added later too)."""
    return {p.name: load(p.name) for p in sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])}


def test_the_workflows_exist_and_parse(workflows):
    assert set(NAMES) <= set(workflows)
    for name, workflow in workflows.items():
        assert workflow.get("name"), f"{name} has no name"
        assert triggers(workflow), f"{name} has no trigger"
        assert workflow["jobs"], f"{name} has no jobs"


def test_no_workflow_uses_pull_request_target(workflows):
    for name, workflow in workflows.items():
        assert "pull_request_target" not in triggers(workflow), name
        assert "pull_request_target" not in yaml.safe_dump(triggers(workflow)), name


def test_every_workflow_states_its_permissions(workflows):
    for name, workflow in workflows.items():
        assert "permissions" in workflow, f"{name} would get the repository's default token permissions"
        assert workflow["permissions"] not in ("write-all", "read-all"), name


def test_every_action_is_pinned_to_a_version(workflows):
    for name, workflow in workflows.items():
        for step in steps(workflow):
            if "uses" in step:
                action, _, version = step["uses"].partition("@")
                assert version, f"{name}: {action} has no version"


def test_no_run_script_interpolates_untrusted_text(workflows):
    for name, workflow in workflows.items():
        for script in run_scripts(workflow):
            assert "${{ github.event.pull_request.title" not in script, name
            assert "${{ github.event.pull_request.body" not in script, name
            assert "${{ github.head_ref" not in script, name
            for expression in EXPRESSION.findall(script):
                assert not UNTRUSTED.search(expression), f"{name}: ${{{{ {expression} }}}} in a run: script"
                assert expression in TRUSTED_IN_RUN, (
                    f"{name}: ${{{{ {expression} }}}} in a run: script; pass it through env: instead")


def test_no_script_of_github_script_interpolates_anything(workflows):
    for name, workflow in workflows.items():
        for step in uses(workflow, "actions/github-script"):
            script = step["with"]["script"]
            assert "${{" not in script, f"{name}: read values from context or process.env, not ${{{{ }}}}"
            assert not re.search(r"\beval\s*\(|\bnew\s+Function\b|child_process|\bexec(Sync)?\s*\(", script), name


def test_ci_runs_the_readme_commands(workflows):
    ci = workflows["ci.yml"]
    assert {"push", "pull_request"} <= set(triggers(ci))
    assert ci["permissions"] == {"contents": "read"}
    assert ci["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in ci["concurrency"]["group"]
    job = one_job(ci)
    assert job["runs-on"] == "ubuntu-latest"
    [python] = uses(ci, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.11"
    scripts = run_scripts(ci)
    if any(line.strip() == ".ci/run" for script in scripts for line in script.splitlines()):
        ran = (ROOT / ".ci" / "run").read_text().splitlines()
    else:
        ran = [line.strip() for script in scripts for line in script.splitlines()]
    assert [line for line in ran if line in README_COMMANDS] == list(README_COMMANDS)
    readme = (ROOT / "README.md").read_text()
    assert all(command in readme for command in README_COMMANDS)


def test_ci_scripts_are_executable_and_install_the_test_extra():
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111
    assert (ROOT / ".ci" / "install").stat().st_mode & 0o111
    assert "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[test]'" in (
        ROOT / ".ci" / "install").read_text().splitlines()


def test_pr_workflow_runs_read_only_on_the_gpu_runner(workflows):
    pr = workflows["llmperf-pr.yml"]
    on = triggers(pr)
    assert set(on) == {"pull_request"}
    assert set(on["pull_request"]["types"]) == {"opened", "synchronize", "reopened", "labeled"}
    for scope in permissions(pr):
        assert isinstance(scope, dict), scope
        assert all(level in ("read", "none") for level in scope.values()), scope
    job = one_job(pr)
    assert job["runs-on"] == GPU_RUNNER
    assert job["concurrency"]["group"] == "llmperf-pr-${{ github.event.pull_request.number }}"


def test_pr_workflow_needs_the_maintainers_label(workflows):
    condition = " ".join(one_job(workflows["llmperf-pr.yml"])["if"].split())
    assert f"contains(github.event.pull_request.labels.*.name, '{LABEL}')" in condition
    # a fork runs on the labeled event only: its new commits need the label applied again
    assert f"github.event.action == 'labeled' && github.event.label.name == '{LABEL}'" in condition
    assert "github.event.pull_request.head.repo.full_name == github.repository" in condition


def test_pr_workflow_measures_merge_base_against_head(workflows):
    pr = workflows["llmperf-pr.yml"]
    [checkout] = uses(pr, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.head.sha }}"
    assert checkout["with"]["persist-credentials"] is False
    scripts = run_scripts(pr)
    assert any("git merge-base" in s for s in scripts)
    assert README_COMMANDS[0] in scripts
    [ab] = [" ".join(s.split()) for s in scripts if "llmperf ab" in s]
    assert '--head="${{ github.event.pull_request.head.sha }}"' in ab
    assert '--base="$BASE_SHA"' in ab
    assert "--db=" in ab and "--report-dir=" in ab
    assert "--time-budget=180m" in ab  # the sequential rounds stop well inside the job's 240 minutes
    assert ab.endswith("-- suites/")
    assert "|| true" not in ab and "continue-on-error" not in str(steps(pr))


def test_pr_workflow_uploads_history_reports_and_number_always(workflows):
    pr = workflows["llmperf-pr.yml"]
    [upload] = uses(pr, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert upload["with"]["name"] == "llmperf-pr"
    assert upload["with"]["path"] == "${{ runner.temp }}/llmperf-pr"
    scripts = "\n".join(run_scripts(pr))
    assert 'out="$RUNNER_TEMP/llmperf-pr"' in scripts
    assert '> "$out/pr_number"' in scripts
    assert '"$LLMPERF_OUT/history.db"' in scripts and '"$LLMPERF_OUT/report"' in scripts


def test_comment_workflow_never_runs_pull_request_code(workflows):
    comment = workflows["llmperf-pr-comment.yml"]
    on = triggers(comment)
    assert set(on) == {"workflow_run"}
    assert on["workflow_run"]["workflows"] == [workflows["llmperf-pr.yml"]["name"]]
    assert on["workflow_run"]["types"] == ["completed"]
    assert comment["permissions"] == {"actions": "read", "pull-requests": "write"}
    assert all(p == comment["permissions"] for p in permissions(comment))
    assert not uses(comment, "actions/checkout")
    assert not run_scripts(comment)
    job = one_job(comment)
    assert job["runs-on"] == "ubuntu-latest"
    assert "github.event.workflow_run.event == 'pull_request'" in job["if"]


def test_comment_workflow_reads_the_artifact_as_untrusted_text(workflows):
    comment = workflows["llmperf-pr-comment.yml"]
    [download] = uses(comment, "actions/download-artifact")
    assert download["with"]["name"] == "llmperf-pr"
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    [script_step] = uses(comment, "actions/github-script")
    script = script_step["with"]["script"]
    assert f"const MARKER = '{MARKER}';" in script
    assert "/^[1-9][0-9]{0,9}$/.test(numberText)" in script
    assert "pr.head.sha === run.head_sha" in script
    assert "updateComment" in script and "createComment" in script
    assert "c.body.startsWith(MARKER)" in script


def test_nightly_runs_the_default_branch_and_keeps_the_history(workflows):
    nightly = workflows["llmperf-nightly.yml"]
    on = triggers(nightly)
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert on["schedule"][0]["cron"]
    assert all(level in ("read", "none") for scope in permissions(nightly) for level in scope.values())
    job = one_job(nightly)
    assert job["runs-on"] == GPU_RUNNER
    assert "github.event.repository.default_branch" in job["if"]

    [restore] = uses(nightly, "actions/cache/restore")
    [save] = uses(nightly, "actions/cache/save")
    assert restore["with"]["key"] == save["with"]["key"]
    assert "github.run_id" in save["with"]["key"]
    [prefix] = restore["with"]["restore-keys"].split()
    assert save["with"]["key"].startswith(prefix)
    assert restore["with"]["path"] == save["with"]["path"]

    scripts = [" ".join(s.split()) for s in run_scripts(nightly)]
    [suite] = [s for s in scripts if "pytest --llmperf suites/" in s]
    assert "--llmperf-compare" in suite
    assert '--llmperf-baseline-branch="$BASELINE_BRANCH"' in suite
    assert "--llmperf-report-dir=" in suite and "--llmperf-db=" in suite
    assert any("llmperf prune --db=.llmperf/history.db --keep-days=180" in s for s in scripts)
    assert any("llmperf export --db=.llmperf/history.db --format=json --out=" in s for s in scripts)
    assert any("llmperf dashboard --db=.llmperf/history.db --out=.llmperf/report/dashboard" in s for s in scripts)
    [upload] = uses(nightly, "actions/upload-artifact")
    assert upload["if"] == "always()"


def test_docs_describe_the_workflows():
    text = (ROOT / "docs" / "ci.md").read_text()
    for name in NAMES:
        assert name in text
    for needed in (LABEL, MARKER, "fetch-depth: 0", "llmperf ab", "self-hosted"):
        assert needed in text
    assert "TODO" not in text
