"""cdk.json runs the CDK app with the Python that has ddlc, not a hard-coded .venv/bin/python (#13 item 8)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.infra.conftest import REPO_ROOT


def _app_command() -> list[str]:
    return json.loads((REPO_ROOT / "cdk.json").read_text())["app"].split()


def test_cdk_json_does_not_name_a_virtualenv():
    command = _app_command()
    assert ".venv" not in " ".join(command) and command[0] == "python3"


def _bare_python(tmp_path: Path) -> str:
    """A python3 that cannot import ddlc: an isolated interpreter (-I ignores PYTHONPATH and site-packages)."""
    wrapper = tmp_path / "bin" / "python3"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexec {sys.base_prefix}/bin/python3 -I -S \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper.parent)


def test_without_ddlc_anywhere_one_line_says_what_to_do(tmp_path):
    checkout = tmp_path / "checkout"  # a copy without .venv, like an AMI where ddlc sits in a conda env
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "cdk_app.py", checkout / "scripts")
    env = {**os.environ, "PATH": _bare_python(tmp_path) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(_app_command(), cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: the CDK app needs ddlc") and "make venv" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_python_with_ddlc_runs_the_app_from_anywhere(tmp_path):
    """The active environment's python3 (here: this venv's, first on PATH) synthesizes, no .venv needed."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "cdk_app.py", checkout / "scripts")
    shutil.copy(REPO_ROOT / "cdk.json", checkout / "cdk.json")
    bin_dir = tmp_path / "env-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # like an activated env
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CDK_OUTDIR": str(tmp_path / "out"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "CDK_CONTEXT_JSON": json.dumps({**json.loads((REPO_ROOT / "cdk.json").read_text())["context"],
                                           "environment": "dev"})}
    proc = subprocess.run(_app_command(), cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "ddlc-dev.template.json").exists()
