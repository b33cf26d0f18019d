"""Horovod (gloo) through horovodrun and `ddlc launch --engine horovod`; runs when Horovod is built (make horovod)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.launch.helpers import assert_identical_ranks, assert_trained, job_args, launch_on
from tests.support import CONFIG, FAST, PYTHON, REPO, TRAIN_PY, assert_ok, run

pytest.importorskip("horovod.torch")

HOROVODRUN = Path(PYTHON).parent / "horovodrun"
ENV = {"PYTHONPATH": str(REPO / "src")}


@pytest.mark.slow
def test_horovodrun_train_py(tmp_path):
    """The runbook's command: `horovodrun -np 2 -H localhost:2 python train.py --config config.yaml`."""
    proc = run([str(HOROVODRUN), "-np", "2", "-H", "localhost:2", PYTHON, str(TRAIN_PY), "--config", str(CONFIG),
                *FAST, "training.max_steps=10", f"monitoring.run_dir={tmp_path}", "monitoring.run_name=hvd",
                "monitoring.progress=plain", "checkpoint.interval_steps=5"], cwd=REPO, timeout=240, **ENV)
    assert_ok(proc)
    summary = json.loads((tmp_path / "hvd" / "summary.json").read_text())
    assert summary["strategy"] == "horovod" and summary["world_size"] == 2
    assert summary["final_loss"] < summary["first_loss"]
    assert (tmp_path / "hvd" / "checkpoints" / "step-00000010" / "COMMIT").exists()


@pytest.mark.slow
def test_horovod_two_hosts(hosts, tmp_path):
    """`ddlc launch --engine horovod`: horovodrun on the first host starts a rank on each host over ssh."""
    out = tmp_path / "params"
    proc = launch_on(hosts, "horovod", job_args(out, tmp_path, "hvd-two-hosts", 6, "distributed.strategy=horovod",
                                                "checkpoint.enabled=false"))
    assert_ok(proc)
    assert_identical_ranks(out, 2)
    summary = json.loads((tmp_path / "hvd-two-hosts" / "summary.json").read_text())
    assert summary["strategy"] == "horovod"
    assert_trained(tmp_path / "hvd-two-hosts", out, 6, 2)


@pytest.mark.slow
def test_horovod_refuses_a_host_whose_name_resolves_to_loopback(hosts, tmp_path):
    """Horovod 0.28.1 would announce that loopback address to the other host; preflight names the host instead."""
    second = hosts.namespaces[1]
    hosts.resolve_hostname_to(second, "127.0.1.1")  # Debian/Ubuntu's default /etc/hosts entry for the hostname
    try:
        proc = launch_on(hosts, "horovod", job_args(tmp_path / "p", tmp_path, "hvd-loopback", 2,
                                                    "distributed.strategy=horovod"), timeout=60)
    finally:
        hosts.resolve_hostname_to(second, hosts.addresses[1])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"host {hosts.addresses[1]}: its hostname" in proc.stderr and "resolves to 127.0.1.1" in proc.stderr
    assert hosts.addresses[0] not in proc.stderr and "Traceback" not in proc.stderr


WORKER = REPO / "tests" / "runtime" / "dump_params_worker.py"


def _horovodrun_worker(tmp_path, out, name, *extra):
    return run([str(HOROVODRUN), "-np", "2", "-H", "localhost:2", PYTHON, str(WORKER), str(out), str(CONFIG), *FAST,
                "training.max_steps=20", f"monitoring.run_dir={tmp_path / 'runs'}", f"monitoring.run_name={name}",
                "monitoring.progress=plain", "checkpoint.interval_steps=5", "distributed.strategy=horovod", *extra],
               cwd=REPO, timeout=240, **ENV)


@pytest.mark.slow
def test_horovod_stop_and_resume_is_bit_exact(tmp_path):
    """Issue #13: a resumed Horovod run must restore the optimizer (it came back empty and every loss drifted)."""
    from ddlc.runtime.metrics import read_metrics

    assert_ok(_horovodrun_worker(tmp_path, tmp_path / "straight", "straight"))
    first = _horovodrun_worker(tmp_path, tmp_path / "first", "split", "training.stop_at_step=10")
    assert_ok(first)
    resumed = _horovodrun_worker(tmp_path, tmp_path / "resumed", "split")
    assert_ok(resumed)
    assert "at step 10" in resumed.stdout
    losses = {name: [r["loss"] for r in read_metrics(tmp_path / "runs" / name)] for name in ("straight", "split")}
    assert len(losses["straight"]) == 20 and losses["split"] == losses["straight"]  # exact float equality
    import torch

    for rank in (0, 1):
        expected = torch.load(tmp_path / "straight" / f"rank{rank}.pt", weights_only=True)
        got = torch.load(tmp_path / "resumed" / f"rank{rank}.pt", weights_only=True)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (rank, key)
