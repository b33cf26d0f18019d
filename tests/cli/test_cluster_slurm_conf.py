"""`ddlc cluster slurm-conf` as real processes against the session's moto server: the files a node keeps, written only when
they change, and Slurm told only then (systemctl and scontrol on PATH are recorders: no init system here;
tests/monitor/test_slurm.py runs a real slurmctld)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tests.cli.test_cluster import ddlc
from tests.infra.test_discovery import REGION
from tests.scheduler.test_cluster_spec import deploy, workers_of

RECORDER = """#!/bin/bash
# Stand-in for {name}: records the call; `is-active` answers from a file, anything else exits with {name}.rc.
echo "{name} $*" >> {state}/calls
if [ "$1" = is-active ]; then [ -e "{state}/active-${{@: -1}}" ]; exit $?; fi
exit $(cat {state}/{name}.rc 2>/dev/null || echo 0)
"""


@pytest.fixture(scope="module")
def moto_cluster(moto):
    """Cluster ddlc-slurm (a name only this module uses) on the session's moto server."""
    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": moto.url}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in fake.items():
            patch.setenv(key, value)
        yield {"env": fake, "cluster": deploy("ddlc-slurm", 2)}


@pytest.fixture
def node(tmp_path, moto_cluster):
    """A node's /etc/slurm, /etc/default/slurmd and the recorders, and a way to run the command there."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name in ("systemctl", "scontrol"):
        (bin_dir / name).write_text(RECORDER.format(name=name, state=state))
        (bin_dir / name).chmod(0o755)

    def run(role: str, *extra: str, instance_id: str | None = None):
        (state / "calls").unlink(missing_ok=True)
        args = ["slurm-conf", "--cluster", "ddlc-slurm", "--role", role, "--conf-dir", str(tmp_path / "etc"),
                "--slurmd-defaults", str(tmp_path / "default-slurmd"), *extra]
        if instance_id:
            args += ["--instance-id", instance_id]
        result = ddlc(*args, env=moto_cluster["env"], cwd=tmp_path, path_prefix=bin_dir)
        calls = (state / "calls").read_text().splitlines() if (state / "calls").exists() else []
        return result, calls

    return {"run": run, "state": state, "etc": tmp_path / "etc", "defaults": tmp_path / "default-slurmd"}


def _snapshot(directory: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_worker_writes_its_files_starts_slurmd_then_does_nothing_until_something_changes(node, moto_cluster):
    group = moto_cluster["cluster"]["group"]
    me, other = workers_of(group)
    result, calls = node["run"]("worker", instance_id=me["InstanceId"])
    assert result.returncode == 0, result.stderr
    assert calls == ["systemctl is-active --quiet slurmd", "systemctl enable --now slurmd"]
    conf = (node["etc"] / "slurm.conf").read_text()
    names = [i["PrivateDnsName"].split(".")[0] for i in (me, other)]
    assert all(f"NodeName={name} " in conf for name in names)
    assert "GresTypes=gpu" in conf and "File=/dev/nvidia[0-7]" in (node["etc"] / "gres.conf").read_text()
    assert (node["etc"] / "cgroup.conf").exists()
    assert node["defaults"].read_text().endswith(f'SLURMD_OPTIONS="-N {names[0]}"\n')
    assert not (node["etc"] / ".ddlc-slurm-pending").exists()

    (node["state"] / "active-slurmd").touch()
    before = _snapshot(node["etc"])
    result, calls = node["run"]("worker", instance_id=me["InstanceId"])
    assert result.returncode == 0, result.stderr
    assert calls == ["systemctl is-active --quiet slurmd"]  # no reconfigure, no restart
    assert _snapshot(node["etc"]) == before  # not even rewritten
    assert "nothing changed; no daemon action" in result.stdout

    # The group replaces the other worker: its name leaves, the replacement's joins, slurmd is told.
    boto3.client("ec2", region_name=REGION).terminate_instances(InstanceIds=[other["InstanceId"]])
    (new,) = [i for i in workers_of(group) if i["InstanceId"] != me["InstanceId"]]
    result, calls = node["run"]("worker", instance_id=me["InstanceId"])
    assert result.returncode == 0, result.stderr
    assert calls == ["systemctl is-active --quiet slurmd", "scontrol reconfigure"]
    conf = (node["etc"] / "slurm.conf").read_text()
    assert f"NodeName={new['PrivateDnsName'].split('.')[0]} " in conf and f"NodeName={names[1]} " not in conf
    assert "slurm.conf, gres.conf; scontrol reconfigure" in result.stdout


def test_head_restarts_slurmctld_when_the_node_list_changes(node, moto_cluster):
    result, calls = node["run"]("head")
    assert result.returncode == 0, result.stderr
    assert calls == ["systemctl is-active --quiet slurmctld", "systemctl enable --now slurmctld"]
    # This machine is not the head moto made up: said, since slurmctld would not start here.
    head_name = moto_cluster["cluster"]["head"]["PrivateDnsName"].split(".")[0]
    assert f"names the controller '{head_name}' (its EC2 hostname): slurmctld will refuse to start" in result.stderr
    assert not node["defaults"].exists()  # the head runs no slurmd
    (node["state"] / "active-slurmctld").touch()
    assert node["run"]("head")[1] == ["systemctl is-active --quiet slurmctld"]
    # A node list change needs slurmctld restarted (Slurm before 23.11); other edits only a reconfigure.
    conf = node["etc"] / "slurm.conf"
    conf.write_text(conf.read_text().replace("NodeName=", "NodeName=x", 1))
    result, calls = node["run"]("head")
    assert calls == ["systemctl is-active --quiet slurmctld", "systemctl restart slurmctld"], result.stderr
    conf.write_text(conf.read_text().replace("KillWait=", "KillWait=1"))
    assert node["run"]("head")[1] == ["systemctl is-active --quiet slurmctld", "scontrol reconfigure"]


def test_a_failed_reconfigure_is_retried_by_the_next_run(node, moto_cluster):
    me = workers_of(moto_cluster["cluster"]["group"])[0]
    node["run"]("worker", instance_id=me["InstanceId"])
    (node["state"] / "active-slurmd").touch()
    (node["etc"] / "gres.conf").write_text("stale\n")
    (node["state"] / "scontrol.rc").write_text("1")
    result, calls = node["run"]("worker", instance_id=me["InstanceId"])
    assert result.returncode == 2 and calls[-1] == "scontrol reconfigure"
    assert result.stderr.strip().splitlines() == [
        "error: `scontrol reconfigure` failed; the files are written and the next run retries it"]
    assert (node["etc"] / ".ddlc-slurm-pending").exists() and "stale" not in (node["etc"] / "gres.conf").read_text()
    (node["state"] / "scontrol.rc").write_text("0")
    result, calls = node["run"]("worker", instance_id=me["InstanceId"])
    assert result.returncode == 0 and calls[-1] == "scontrol reconfigure"  # nothing changed, still told
    assert not (node["etc"] / ".ddlc-slurm-pending").exists()
    assert node["run"]("worker", instance_id=me["InstanceId"])[1] == ["systemctl is-active --quiet slurmd"]


@pytest.mark.parametrize(("args", "message"), [
    (("--role", "login"), "--role: 'login' is not one of head, worker"),
    (("--role", "worker"), "--instance-id: required on a worker"),
    (("--role", "worker", "--instance-id", "i-0123456789abcdef0"),
     "--instance-id: i-0123456789abcdef0 is not a running worker of cluster 'ddlc-slurm'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(moto_cluster, tmp_path, args, message):
    result = ddlc("slurm-conf", "--cluster", "ddlc-slurm", "--conf-dir", str(tmp_path / "etc"), *args,
                  env=moto_cluster["env"], cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "etc").exists()
