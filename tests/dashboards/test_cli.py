"""`ddlc dashboard` as a user starts it: listens on 127.0.0.1, serves the page, stops on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

from typer.testing import CliRunner

from ddlc.cli.main import app
from ddlc.errors import UserError
from tests.dashboards.conftest import RUN_NAME
from tests.support import PYTHON, REPO, child_env, run


def test_ddlc_dashboard_serves_until_interrupted(runs_dir, run_dir):
    process = subprocess.Popen(
        [PYTHON, "-m", "ddlc", "dashboard", "--run", str(run_dir), "--runs-dir", str(runs_dir), "--port", "0"],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("ddlc dashboard serving http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url + "api/definition", timeout=10) as response:
            definition = json.load(response)
        assert definition["default_run"] == RUN_NAME and len(definition["dashboards"]) == 4
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_bad_options_are_clear_errors(tmp_path):
    result = run([PYTHON, "-m", "ddlc", "dashboard", "--run", str(tmp_path / "missing")], cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--run: {tmp_path / 'missing'} is not a directory" in result.stderr
    for args, message in ((["--instance-type", "x9.mega"], "no price"),
                          (["--prometheus", "prom:9090"], "not an http(s) URL"),
                          (["--port", "70000"], "--port 70000")):
        outcome = CliRunner().invoke(app, ["dashboard", "--runs-dir", str(tmp_path), *args])
        assert isinstance(outcome.exception, UserError) and message in str(outcome.exception), outcome.output
