"""`ddlc doctor` as a process: JSON on this CPU machine, exit code 1 on FAIL, links that resolve."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.ops.test_docs import TROUBLESHOOTING, anchors
from tests.support import REPO, free_port


def ddlc_doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NCCL_", "FI_", "DDLC_"))}
    full.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"})
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "ddlc", "doctor", *args], env=full, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_json_on_this_machine_with_s3_and_a_localhost_hostfile(moto, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    result = ddlc_doctor("--json", "--min-free-gb", "0", "--master-port", str(free_port()),
                         "--checkpoint-uri", "s3://ddlc-doctor/checkpoints/run1", "--hostfile", str(hostfile),
                         AWS_ENDPOINT_URL=moto.url)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    checks = {c["name"]: c for c in document["checks"]}
    assert document["ok"] is True and document["counts"]["FAIL"] == 0
    assert checks["checkpoint-write"]["status"] == "PASS", checks["checkpoint-write"]
    assert checks["clock-skew"]["status"] == "PASS" and checks["versions"]["status"] == "PASS"
    assert set(checks) >= {"gpus", "driver-cuda", "nccl", "efa", "nccl-env", "memlock", "hugepages", "disk",
                           "master-port"}
    if not os.path.exists("/proc/driver/nvidia/version"):  # this CPU machine: absence is said, not failed
        assert checks["gpus"]["status"] == "WARN" and "no NVIDIA GPU" in checks["gpus"]["detail"]
        assert checks["gpus"]["doc"] == "docs/troubleshooting.md#gpus-missing-or-not-visible-to-pytorch"
    else:  # a GPU host: the GPUs the driver registered are counted
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
        assert checks["gpus"]["detail"].startswith(f"{count} x "), checks["gpus"]


def test_failures_exit_1_with_fix_lines_whose_links_resolve():
    nobody = f"http://127.0.0.1:{free_port()}"
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ddlc_doctor("--min-free-gb", "0", "--master-port", str(port), "--checkpoint-uri",
                             "s3://ddlc-doctor/checkpoints", "--endpoint-url", nobody, "--timeout", "10")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(re.match(rf"FAIL master-port\s+port {port} is in use", line) for line in lines), result.stdout
    assert any(line.startswith("FAIL checkpoint-write") and nobody in line for line in lines), result.stdout
    links = re.findall(r"\((docs/troubleshooting\.md)#([a-z0-9-]+)\)", result.stdout)
    assert len(links) >= 2
    headings = anchors(TROUBLESHOOTING)
    for path, anchor in links:
        assert (REPO / path).is_file() and anchor in headings, anchor
    assert re.search(r"^doctor: \d+ PASS, \d+ WARN, [1-9]\d* FAIL, \d+ SKIP$", result.stdout, re.MULTILINE)
