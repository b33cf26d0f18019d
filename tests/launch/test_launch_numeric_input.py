"""Numeric launch options outside their domain: exit 2 with one line naming the option, before anything starts
(a port over 65535 used to reach torch's TCPStore and fail with a pybind 'Invoked with' dump; a nan
--rejoin-interval was accepted and lost hosts were then never probed)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("option,value", [
    ("--master-port", "99999"), ("--master-port", "-1"), ("--ssh-port", "0"), ("--ssh-port", "70000"),
    ("--rejoin-interval", "nan"), ("--rejoin-interval", "inf"), ("--rejoin-interval", "0"),
])
def test_out_of_domain_numbers_exit_2_in_one_line(tmp_path, option, value):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n")
    done = subprocess.run([sys.executable, "-m", "ddlc.cli.main", "launch", "--hostfile", str(hostfile), option, value,
                           "--dry-run", "train.py"], capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, out
    assert len(out.splitlines()) == 1 and option in out and "Traceback" not in out, out
