"""Hand-edited or damaged `ddlc health --readings` files: exit 2 with one line naming the field, never a
traceback, and never a check that passes on a value it cannot judge (an infinite clock)."""

import json
import subprocess
import sys

import pytest

HOSTILE = [
    ([], "the file"),
    ({"gpus": "x"}, "gpus"),
    ({"gpus": [{}]}, "gpus.0.index"),
    ({"disk_free_bytes": "lots"}, "disk_free_bytes"),
    ({"now": "x"}, "now"),
    ({"efa_devices": 5}, "efa_devices"),
    ({"xids": "abc"}, "xids"),
    ({"unknown_field": 1}, "unknown_field"),
]


@pytest.mark.parametrize("content,field", HOSTILE, ids=[f for _, f in HOSTILE])
def test_malformed_readings_exit_2_naming_the_field(tmp_path, content, field):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(content))
    done = subprocess.run([sys.executable, "-m", "ddlc.cli.main", "health", "--readings", str(path)],
                          capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert field in out, out


@pytest.mark.parametrize("literal", ["1e400", "NaN", "Infinity"])
def test_non_finite_clock_is_refused_not_healthy(tmp_path, literal):
    path = tmp_path / "r.json"
    path.write_text('{"gpus": [], "xids": [], "disk_free_bytes": 100000000000, "now": %s}' % literal)
    done = subprocess.run([sys.executable, "-m", "ddlc.cli.main", "health", "--readings", str(path),
                           "--expect-gpus", "0", "--expect-efa", "0"], capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, out
    assert "now" in out and "Traceback" not in out, out


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_reference_time_is_refused(value):
    """nan made the skew comparison false, so a node with any clock passed the launcher's skew check."""
    done = subprocess.run([sys.executable, "-m", "ddlc.cli.main", "health", "--reference-time", value,
                           "--expect-gpus", "0", "--expect-efa", "0", "--min-free-gb", "0"],
                          capture_output=True, text=True, timeout=120)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, out
    assert "--reference-time" in out and len(out.splitlines()) == 1, out
