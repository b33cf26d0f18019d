"""`ddlc cluster down`: the deleted/retained lists come from the synthesized stack; confirmation and dry run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.fixture(scope="module")
def plans():
    from ddlc.ops.teardown import plan_teardown

    return {"prod": plan_teardown("prod", REPO / "cdk.json")}


def test_prod_retains_the_checkpoint_bucket_and_deletes_the_nodes(plans):
    prod = plans["prod"]
    retained = {(r.type, r.path) for r in prod.retained}
    assert ("AWS::S3::Bucket", "Checkpoints/Bucket") in retained
    assert ("AWS::FSx::FileSystem", "Lustre/FileSystem") in retained
    deleted = {(r.type, r.path) for r in prod.deleted}
    assert ("AWS::EC2::Instance", "Nodes/Head") in deleted and ("AWS::EC2::VPC", "Network/Vpc") in deleted
    assert not retained & deleted
    text = prod.describe()
    assert "+ S3 bucket Checkpoints/Bucket" in text and "- Auto Scaling group (GPU workers) Nodes/Workers" in text
    assert prod.shell_command == "npx cdk destroy --context environment=prod --force"


def test_plan_lists_the_four_dashboards_cdk_destroy_deletes(plans):
    from ddlc.dashboards.definition import DASHBOARDS

    dashboards = [r for r in plans["prod"].deleted if r.type == "AWS::CloudWatch::Dashboard"]
    assert len(dashboards) == len(DASHBOARDS) == 4
    text = plans["prod"].describe()
    for board in DASHBOARDS:
        assert f"- CloudWatch dashboard Dashboards/Dashboard-{board.slug}" in text


def test_retained_list_follows_the_setting_not_the_environment_name(plans, tmp_path):
    """Flip retain_data for prod in a copy of cdk.json: the bucket moves from retained to deleted."""
    import json

    from ddlc.ops.teardown import plan_teardown

    cdk = json.loads((REPO / "cdk.json").read_text())
    cdk["context"]["environments"]["prod"]["retain_data"] = False
    copy = tmp_path / "cdk.json"
    copy.write_text(json.dumps(cdk))
    flipped = plan_teardown("prod", copy)
    assert flipped.retained == []
    bucket = next(r for r in flipped.deleted if r.path == "Checkpoints/Bucket")
    assert bucket.emptied_first  # auto-delete-objects empties it first, as in dev
    assert "- S3 bucket Checkpoints/Bucket (and every object in it)" in flipped.describe()
    assert "Nothing is retained" in flipped.describe()


def _ddlc(*args, cwd=REPO, path_prefix=None, stdin=subprocess.DEVNULL, timeout=180):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "20"
    if path_prefix:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "ddlc", "cluster", "down", *args], cwd=cwd, env=env,
                          stdin=stdin, capture_output=True, text=True, timeout=timeout)


def test_unknown_environment_is_exit_2():
    result = _ddlc("--env", "qa")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --env: unknown environment 'qa'; valid choices: dev, prod"


def test_refuses_without_yes_when_stdin_is_not_a_terminal():
    result = _ddlc("--env", "prod")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: refusing to destroy ddlc-prod without confirmation")
    assert result.stdout == ""  # refused before anything was synthesized or run


def test_outside_the_repository_is_a_one_line_error(tmp_path):
    result = _ddlc("--env", "prod", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "cdk.json: not found" in result.stderr


def test_dry_run_prints_the_plan_and_the_command(plans, monkeypatch):
    """In this process (the synth kernel is warm from the fixture); the subprocess test below covers --yes."""
    from typer.testing import CliRunner

    from ddlc.cli.main import app

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["cluster", "down", "--env", "prod", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "npx cdk destroy --context environment=prod --force"
    assert "+ S3 bucket Checkpoints/Bucket" in result.output and "- EC2 instance Nodes/Head" in result.output


def test_yes_runs_cdk_destroy_and_passes_its_exit_code(plans, tmp_path, monkeypatch):
    """--yes runs the real `npx` found on PATH (here a recorder script) with the exact destroy command."""
    from typer.testing import CliRunner

    from ddlc.cli.main import app

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "npx"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'npx-args'}\nexit 3\n")
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["cluster", "down", "--env", "prod", "--yes"])
    assert (tmp_path / "npx-args").read_text().strip() == "cdk destroy --context environment=prod --force"
    assert result.exit_code == 3  # cdk's exit code is passed through
    assert "- EC2 instance Nodes/Head" in result.output  # the plan is shown even when not asked to confirm


def test_at_a_terminal_anything_but_the_stack_name_aborts(plans, tmp_path, monkeypatch, capsys):
    """A real terminal (pty) on stdin: the prompt asks for the stack name; a typo deletes nothing."""
    import pty

    from ddlc.cli.main import app

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "npx"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'npx-args'}\n")
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"ddlc-prd\n")
        with os.fdopen(os.dup(terminal), "r") as tty_in:
            monkeypatch.setattr(sys, "stdin", tty_in)
            assert sys.stdin.isatty()
            with pytest.raises(SystemExit) as stopped:
                app(["cluster", "down", "--env", "prod"])
    finally:
        os.close(terminal)
        os.close(controller)
    captured = capsys.readouterr()
    assert stopped.value.code == 1
    assert "Type ddlc-prod to delete it" in captured.out and "aborted: nothing deleted" in captured.err
    assert not (tmp_path / "npx-args").exists()
