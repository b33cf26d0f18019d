"""The node boot script, executed: a throwaway root stands in for a fresh instance of the Deep Learning AMI.

    test (root) ── unshare --mount --net --pid ──> driver.sh, in new mount, network and PID namespaces
        lo up; 169.254.169.254 on lo: a stand-in IMDSv2 (imds.py); moto_server on 127.0.0.1 with two
        running workers tagged like the stack's group
        the root: host /usr, the shared venv and the base Python bind-mounted read-only; its own writable /etc
        (a copy), /opt, /var, /tmp, /home, /usr/local; no network beyond lo, so nothing can come from an index
        on PATH: a fake `aws` (ssm parameter -> s3:// URL, s3 cp of the real package zip, the ssh secret) and a
        stand-in `systemctl`; the "AMI's" PyTorch Python at /opt/conda/envs/pytorch (a venv that sees the
        shared venv's packages except ddlc), the "AMI's" CloudWatch agent control script
        chroot: the rendered user data (no FSx, Slurm on: a stand-in `apt-get`, Slurm and munge from the host's
        /usr) -> exit 0, "ok", the munge key, slurm.conf from moto's head and workers, slurmd enabled; then the
        hostfile writer the unit runs -> /etc/ddlc/hostfile + master.env from moto (and slurm.conf again);
        then the agent unit's ExecStart -> /metrics answers;
        then the user data with FSx configured -> exit 1, "failed: the FSx for Lustre client ..."

The package is the real one `cdk synth` ships (ddlc.infra.package_asset: wheel + pinned requirements).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ddlc.infra.package_asset import build_node_package
from ddlc.infra.monitoring_boot import render_head_monitoring
from ddlc.infra.user_data import NodeBootConfig, render_user_data

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip (mount and network namespaces)",
)

CLUSTER = "ddlc-boottest"
REGION = "us-east-1"
PARAMETER = "/ddlc/boottest/node-package"
PACKAGE_URL = "s3://cdk-hnb659fds-assets-123456789012-us-east-1/0123abcd.zip"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ddlc-boottest-ssh-AbCdEf"
SECRET = "Kq7" * 22
MUNGE_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ddlc-boottest-munge-GhIjKl"
MUNGE_KEY = "Mu9" * 40
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ddlc-boottest-AlertsTopic-1AB2"
SHARED_SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"

FAKE_AWS = r"""#!/bin/bash
# Stand-in for the AWS CLI: serves the stack's package and the ssh secret, refuses everything else.
echo "aws $*" >> /var/log/fake-aws.log
args=" $* "
case "$1 $2" in
  "ssm get-parameter")
    [[ "$args" == *" --name {parameter} "* && "$args" == *" --region {region} "* ]] || {{ echo "ParameterNotFound: $*" >&2; exit 254; }}
    echo "{url}" ;;
  "s3 cp")
    [[ "$args" == *" {url} "* ]] || {{ echo "NoSuchKey: $*" >&2; exit 1; }}
    cp /opt/fake-aws/package.zip "${{@: -1}}" ;;
  "secretsmanager get-secret-value")
    if [[ "$args" == *" --secret-id {secret_arn} "* ]]; then cat /opt/fake-aws/secret
    elif [[ "$args" == *" --secret-id {munge_arn} "* ]]; then cat /opt/fake-aws/munge
    else echo "ResourceNotFoundException" >&2; exit 254; fi ;;
  *) echo "fake aws: unexpected call: $*" >&2; exit 2 ;;
esac
"""

FAKE_SYSTEMCTL = """#!/bin/bash
# Stand-in init: records what the boot script asks for (the units themselves are checked by the test); no
# service runs here, so is-active says inactive.
echo "systemctl $*" >> /var/log/fake-systemctl.log
if [ "$1" = is-active ]; then exit 3; fi
"""

FAKE_APT = """#!/bin/bash
# Stand-in for apt-get (no archive here): records the call; Slurm and munge are the host's, under /usr.
echo "apt-get $*" >> /var/log/fake-apt.log
"""

CLOUDWATCH_CTL = """#!/bin/bash
# Stand-in for the AMI's CloudWatch agent: the config it is given must be valid JSON.
echo "amazon-cloudwatch-agent-ctl $*" >> /var/log/fake-cwagent.log
config="${@: -2:1}"; config="${config#file:}"
/opt/conda/envs/pytorch/bin/python -m json.tool "$config" > /dev/null
"""

IMDS = r"""
import http.server, sys
TOKEN = "imds-token-123"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._reply(200, TOKEN)
        else:
            self._reply(400, "bad token request")
    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._reply(401, "IMDSv2 token required")
        elif self.path == "/latest/meta-data/instance-id":
            self._reply(200, sys.argv[1])
        elif self.path == "/latest/meta-data/instance-type":
            self._reply(200, "p4d.24xlarge")
        else:
            self._reply(404, "not found")
    def _reply(self, code, body):
        self.send_response(code); self.end_headers(); self.wfile.write(body.encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer(("169.254.169.254", 80), Handler).serve_forever()
"""

SEED_EC2 = r"""
import json, pathlib, sys, time, urllib.request, boto3
url = "http://127.0.0.1:5000"
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/moto-api/", timeout=1); break
    except OSError:
        time.sleep(0.1)
ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing",
                   aws_secret_access_key="testing")
instances = []
for role, kind in (("head", "m6i.xlarge"), ("worker", "p4d.24xlarge"), ("worker", "p4d.24xlarge")):
    tags = [{"Key": "ddlc:cluster", "Value": sys.argv[1]}, {"Key": "role", "Value": role}]
    if role == "worker":
        tags.append({"Key": "aws:autoscaling:groupName", "Value": sys.argv[1] + "-workers"})
    instance = ec2.run_instances(ImageId="ami-12c6146b", InstanceType=kind, MinCount=1, MaxCount=1,
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]
    instances.append({key: instance[key] for key in ("InstanceId", "PrivateIpAddress", "PrivateDnsName")})
base = pathlib.Path(sys.argv[2])
(base / "instances.json").write_text(json.dumps(instances))
(base / "worker-ips.json").write_text(json.dumps([i["PrivateIpAddress"] for i in instances[1:]]))
(base / "instance-id").write_text(instances[2]["InstanceId"])  # the booting node: the second worker
"""


def boot_config(**changes) -> NodeBootConfig:
    values = dict(
        cluster_name=CLUSTER, environment="boottest", role="worker", region=REGION, bucket_name="ckpt-bucket",
        node_count=2, gpus_per_node=8, node_log_group="/ddlc/boottest/nodes",
        training_log_group="/ddlc/boottest/training", has_gpu=True, package_parameter=PARAMETER,
        ssh_secret_id=SECRET_ARN, cluster_cidr="10.42.0.0/16", worker_group_name=f"{CLUSTER}-workers",
    )
    values.update(changes)
    return NodeBootConfig(**values)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def make_root(base: Path) -> Path:
    """The throwaway root's own files (mount points, a copy of /etc, the AMI stand-ins, the fakes)."""
    root = base / "root"
    for name in ("usr", "proc", "dev", "tmp", "var/log", "var/lib", "opt", "home/ubuntu", "root", "run",
                 str(Path(sys.base_prefix)).lstrip("/"), str(Path(sys.prefix)).lstrip("/")):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for link in ("bin", "sbin", "lib", "lib64"):
        if Path("/" + link).is_symlink():
            (root / link).symlink_to(os.readlink("/" + link))
    shutil.copytree("/etc", root / "etc", symlinks=True, ignore_dangling_symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("ddlc", "mtab"))
    passwd = root / "etc/passwd"
    if "\nubuntu:" not in "\n" + passwd.read_text():
        passwd.write_text(passwd.read_text() + "ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\n")
        (root / "etc/group").write_text((root / "etc/group").read_text() + "ubuntu:x:1000:\n")
    os.chown(root / "home/ubuntu", 1000, 1000)

    # The AMI's PyTorch Python: a venv on the base interpreter that sees the shared venv's packages (torch,
    # boto3, pip, ... at exactly the pinned versions) but not its ddlc, so ddlc can only come from the wheel.
    python = root / "opt/conda/envs/pytorch"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(python)], check=True, timeout=120)
    view = root / "opt/ami-site-packages"
    view.mkdir()
    for entry in SHARED_SITE.iterdir():
        if not entry.name.lower().startswith(("ddlc", "__editable__", "_ddlc")) and entry.suffix != ".pth":
            (view / entry.name).symlink_to(entry)
    site = next((python / "lib").glob("python*/site-packages"))
    (site / "ami-packages.pth").write_text("/opt/ami-site-packages\n")

    fake_bin = root / "opt/fakebin"
    _write(fake_bin / "aws", FAKE_AWS.format(parameter=PARAMETER, region=REGION, url=PACKAGE_URL,
                                             secret_arn=SECRET_ARN, munge_arn=MUNGE_ARN), 0o755)
    _write(fake_bin / "systemctl", FAKE_SYSTEMCTL, 0o755)
    _write(fake_bin / "apt-get", FAKE_APT, 0o755)
    _write(root / "opt/fake-aws/munge", MUNGE_KEY + "\n", 0o600)
    _write(root / "opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl", CLOUDWATCH_CTL, 0o755)
    _write(root / "opt/fake-aws/secret", SECRET + "\n", 0o600)
    package = build_node_package()
    with zipfile.ZipFile(root / "opt/fake-aws/package.zip", "w") as archive:  # as CDK zips a directory asset
        for path in sorted(package.iterdir()):
            archive.write(path, path.name)
    return root


DRIVER = r"""
set -euo pipefail
R={root}
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
{moto} -H 127.0.0.1 -p 5000 > {base}/moto.log 2>&1 &
{python} {base}/seed_ec2.py {cluster} {base}
{python} {base}/imds.py $(cat {base}/instance-id) &
for i in $(seq 1 300); do  # the IMDS must answer before the boot asks it
  curl -fs -o /dev/null -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 1' http://169.254.169.254/latest/api/token && break
  sleep 0.1
done
ro_bind() {{ mount --bind "$1" "$R$1"; mount -o remount,bind,ro "$R$1"; }}
ro_bind /usr
mount -t tmpfs tmpfs $R/usr/local
mkdir -p $R/usr/local/bin $R/usr/local/sbin
ro_bind {base_prefix}
ro_bind {prefix}
mount --bind /dev $R/dev
mount -t proc proc $R/proc
in_root() {{ chroot $R /usr/bin/env -i HOME=/root PATH=/opt/fakebin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin \
    LANG=C.UTF-8 "$@"; }}
set +e
MOTO_ENV="AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
in_root /usr/bin/env $MOTO_ENV /bin/bash /boot/user-data.sh > {base}/boot1.out 2>&1; echo $? > {base}/boot1.rc
cp $R/var/lib/ddlc/boot-status {base}/boot1.status
in_root readlink /usr/local/bin/ddlc > {base}/ddlc-link  # /usr/local is this namespace's tmpfs
in_root /bin/bash -c 'test -x /usr/local/sbin/ddlc-slurm-health && cat /usr/local/sbin/ddlc-slurm-health' > {base}/health-check
in_root /usr/bin/env $MOTO_ENV \
    /bin/bash -c 'exec $(sed -n "s/^ExecStart=//p" /etc/systemd/system/ddlc-hostfile.service)' \
    > {base}/hostfile.out 2>&1; echo $? > {base}/hostfile.rc
in_root /bin/bash -c 'set -a; . /etc/ddlc/cluster.env; exec $(sed -n "s/^ExecStart=//p" /etc/systemd/system/ddlc-agent.service)' \
    > {base}/agent.out 2>&1 &
agent=$!
for i in $(seq 1 120); do
  if curl -fsS http://127.0.0.1:{agent_port}/metrics > {base}/metrics.txt 2>/dev/null; then break; fi
  sleep 0.5
done
kill $agent 2>/dev/null; wait $agent 2>/dev/null
# The head node's monitoring step, twice (a rerun of the boot), then its units' ExecStart for real.
for run in 1 2; do in_root /bin/bash /boot/monitoring.sh > {base}/mon$run.out 2>&1; echo $? > {base}/mon$run.rc; done
mkdir -p $R/var/lib/ddlc-prometheus $R/var/lib/ddlc-alertmanager  # systemd's StateDirectory=
monitoring=
for unit in alertmanager prometheus; do
  in_root /bin/bash -c "exec \$(sed -n 's/^ExecStart=//p' /etc/systemd/system/ddlc-$unit.service)" > {base}/$unit.out 2>&1 &
  monitoring="$monitoring $!"
done
for i in $(seq 1 120); do
  curl -fsS -o {base}/targets.json http://127.0.0.1:9090/api/v1/targets 2>/dev/null \
    && curl -fsS -o {base}/alertmanagers.json http://127.0.0.1:9090/api/v1/alertmanagers \
    && grep -q ':9500' {base}/targets.json && grep -q '127.0.0.1:9093' {base}/alertmanagers.json \
    && curl -fsS -o /dev/null http://127.0.0.1:9093/-/ready && break
  sleep 0.5
done
kill $monitoring 2>/dev/null; wait $monitoring 2>/dev/null
in_root /bin/bash /boot/user-data-fsx.sh > {base}/boot2.out 2>&1; echo $? > {base}/boot2.rc
cp $R/var/lib/ddlc/boot-status {base}/boot2.status
in_root /usr/bin/env $MOTO_ENV /bin/bash /boot/user-data-bad-munge.sh > {base}/boot3.out 2>&1; echo $? > {base}/boot3.rc
cp $R/var/lib/ddlc/boot-status {base}/boot3.status
kill %1 %2 2>/dev/null  # moto and the IMDS
exit 0
"""


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    base = tmp_path_factory.mktemp("boot")
    root = make_root(base)
    script = "#!/bin/bash\n" + "\n".join(render_user_data(boot_config(scheduler="slurm", munge_secret_id=MUNGE_ARN))) + "\n"
    fsx = render_user_data(boot_config(lustre_dns_name="fs-0123.fsx.us-east-1.amazonaws.com", lustre_mount_name="abcd"))
    _write(root / "boot/user-data.sh", script, 0o755)
    _write(root / "boot/user-data-fsx.sh", "#!/bin/bash\n" + "\n".join(fsx) + "\n", 0o755)
    monitoring = render_head_monitoring(TOPIC_ARN, REGION, 20, grafana=False)
    _write(root / "boot/monitoring.sh", "#!/bin/bash\nset -euo pipefail\n"
           "ddlc_fail() { echo \"ddlc: BOOT FAILED: $1\" >&2; exit 1; }\n" + "\n".join(monitoring) + "\n", 0o755)
    bad_munge = render_user_data(boot_config(scheduler="slurm", munge_secret_id=MUNGE_ARN + "-gone"))
    _write(root / "boot/user-data-bad-munge.sh", "#!/bin/bash\n" + "\n".join(bad_munge) + "\n", 0o755)
    (base / "imds.py").write_text(IMDS)
    (base / "seed_ec2.py").write_text(SEED_EC2)
    from ddlc.infra.user_data import AGENT_PORT

    driver = DRIVER.format(
        root=root, base=base, python=sys.executable, moto=Path(sys.executable).parent / "moto_server", cluster=CLUSTER, base_prefix=sys.base_prefix, prefix=sys.prefix,
        agent_port=AGENT_PORT,
    )
    (base / "driver.sh").write_text(driver)
    # A new PID namespace too: when the driver (its PID 1) ends, or is killed with the test, the kernel ends every
    # process it started (IMDS, moto, the agent), whatever state the script was in.
    result = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "bash",
                             str(base / "driver.sh")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def read(name: str) -> str:
        path = base / name
        return path.read_text() if path.exists() else ""

    return {"root": root, "base": base, "read": read}


def _explain(booted, name: str = "boot1.out") -> str:
    return booted["read"](name)[-4000:]


def test_boot_installs_ddlc_from_the_stack_package_and_finishes(booted):
    root, read = booted["root"], booted["read"]
    assert read("boot1.rc").strip() == "0", _explain(booted)
    assert read("boot1.status").startswith("ok ")
    assert "ddlc: node bootstrap finished" in read("boot1.out")
    # ddlc came from the wheel, by path, into the AMI's Python, with the extras' imports working.
    site = next((root / "opt/conda/envs/pytorch/lib").glob("python*/site-packages"))
    (dist,) = site.glob("ddlc-*.dist-info")
    direct = json.loads((dist / "direct_url.json").read_text())
    assert direct["url"].startswith("file:///opt/ddlc/package/ddlc-") and direct["url"].endswith(".whl")
    assert (site / "ddlc" / "infra" / "ssh_key.py").is_file()
    assert read("ddlc-link").strip() == "/opt/conda/envs/pytorch/bin/ddlc"
    calls = (root / "var/log/fake-aws.log").read_text()
    assert f"ssm get-parameter --region {REGION} --name {PARAMETER}" in calls
    assert f"s3 cp --region {REGION} --only-show-errors {PACKAGE_URL} /opt/ddlc/package.zip" in calls
    # The installed package's pins are what synth recorded.
    assert (root / "opt/ddlc/package/requirements.txt").read_text() == (build_node_package() / "requirements.txt").read_text()


def test_boot_writes_cluster_env_with_instance_identity_and_units(booted):
    root = booted["root"]
    env = dict(line.split("=", 1) for line in (root / "etc/ddlc/cluster.env").read_text().splitlines())
    assert env["DDLC_CLUSTER"] == CLUSTER and env["DDLC_INSTANCE_ID"] == booted["read"]("instance-id")
    assert env["DDLC_WORKER_GROUP"] == f"{CLUSTER}-workers"
    assert env["DDLC_INSTANCE_TYPE"] == "p4d.24xlarge"  # the worker's agent prices its idle hours with it
    systemctl = (root / "var/log/fake-systemctl.log").read_text()
    assert "systemctl enable --now ddlc-agent.service ddlc-hostfile.timer" in systemctl
    assert "ExecStart=/usr/local/bin/ddlc agent" in (root / "etc/systemd/system/ddlc-agent.service").read_text()
    agent_calls = (root / "var/log/fake-cwagent.log").read_text()
    assert "-a fetch-config -m ec2 -c file:/opt/aws/amazon-cloudwatch-agent/etc/ddlc.json -s" in agent_calls


def test_hostfile_and_master_env_from_discovery(booted):
    root, read = booted["root"], booted["read"]
    assert read("hostfile.rc").strip() == "0", read("hostfile.out")
    ips = sorted(json.loads(read("worker-ips.json")), key=lambda ip: tuple(map(int, ip.split("."))))
    assert (root / "etc/ddlc/hostfile").read_text() == "".join(f"{ip} slots=8\n" for ip in ips)
    assert (root / "etc/ddlc/master.env").read_text() == f"MASTER_ADDR={ips[0]}\n"


def test_agent_unit_command_serves_metrics(booted):
    metrics = booted["read"]("metrics.txt")
    assert "ddlc_agent_info{" in metrics, booted["read"]("agent.out")[-2000:]
    # started from cluster.env's DDLC_INSTANCE_TYPE: the node's price, for the idle-cost view
    assert re.search(r"^ddlc_node_price_usd_per_hour(\{[^}]*\})? 21\.96$", metrics, re.M), metrics[-2000:]


def test_cluster_ssh_keys_installed_for_the_user_with_cluster_only_trust(booted):
    root = booted["root"]
    key = root / "home/ubuntu/.ssh/ddlc_cluster_ed25519"
    assert key.stat().st_uid == 1000 and oct(key.stat().st_mode & 0o777) == "0o600"
    result = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.split()[1] in (root / "home/ubuntu/.ssh/authorized_keys").read_text()
    assert (root / "etc/ssh/ddlc_known_hosts").read_text().startswith("10.42.*,ip-10-42-* ssh-ed25519 ")
    assert "StrictHostKeyChecking yes" in (root / "etc/ssh/ssh_config.d/ddlc.conf").read_text()
    assert not list((root / "tmp").glob("tmp*")), "the secret's temporary copy was left behind"


def test_missing_fsx_client_fails_the_boot_loudly(booted):
    root, read = booted["root"], booted["read"]
    assert read("boot2.rc").strip() == "1", _explain(booted, "boot2.out")
    status = read("boot2.status")
    assert status.startswith("failed: the FSx for Lustre client could not be installed"), status
    assert "ddlc: BOOT FAILED: the FSx for Lustre client could not be installed" in read("boot2.out")
    assert "node bootstrap finished" not in read("boot2.out")
    # ddlc doctor on that node reports it.
    from ddlc.ops.boot_status import check_boot
    from ddlc.ops.doctor import Status

    result = check_boot(status)
    assert result.status is Status.FAIL and "FSx for Lustre" in result.detail


def test_slurm_installed_keyed_and_configured_from_discovery(booted):
    root, read = booted["root"], booted["read"]
    assert read("boot1.rc").strip() == "0", _explain(booted)
    apt = (root / "var/log/fake-apt.log").read_text()
    assert "install munge slurm-client slurmd" in apt and "slurmctld" not in apt
    # The munge key is the secret's value, byte for byte, readable by munge only; no temporary copy is left.
    key = root / "etc/munge/munge.key"
    assert key.read_text() == MUNGE_KEY
    munge_uid = int(next(line.split(":")[2] for line in (root / "etc/passwd").read_text().splitlines()
                         if line.startswith("munge:")))
    assert key.stat().st_uid == munge_uid and oct(key.stat().st_mode & 0o777) == "0o400"
    assert not list((root / "etc/munge").glob(".munge.key.*"))
    systemctl = (root / "var/log/fake-systemctl.log").read_text()
    assert "systemctl restart munge" in systemctl
    assert systemctl.index("systemctl restart munge") < systemctl.index("systemctl enable --now slurmd")
    # slurm.conf from moto's head and workers; this node registers as its own name.
    head, *workers = json.loads(read("instances.json"))
    conf = (root / "etc/slurm/slurm.conf").read_text()
    short = [i["PrivateDnsName"].split(".")[0] for i in (head, *workers)]
    assert f"SlurmctldHost={short[0]}({head['PrivateIpAddress']})" in conf
    assert all(f"NodeName={name} NodeAddr={w['PrivateIpAddress']} CPUs=96 " in conf
               for name, w in zip(short[1:], workers))
    assert (root / "etc/default/slurmd").read_text().endswith(f'SLURMD_OPTIONS="-N {short[2]}"\n')
    assert "File=/dev/nvidia[0-7]" in (root / "etc/slurm/gres.conf").read_text()
    for directory in ("var/spool/slurmd", "var/log/slurm", "run/slurm"):
        assert (root / directory).is_dir(), directory
    # slurmd's HealthCheckProgram, as installed (read from the namespace's /usr/local before it went).
    assert "HealthCheckProgram=/usr/local/sbin/ddlc-slurm-health" in conf
    assert read("health-check").startswith("#!/bin/bash\n")
    assert read("health-check").endswith("exec /usr/local/bin/ddlc health --slurm-drain\n")
    # The hostfile timer's run wrote the hostfile and then kept slurm.conf in step (unchanged: same nodes).
    assert read("hostfile.rc").strip() == "0", read("hostfile.out")
    assert "nothing changed" in read("hostfile.out")


def test_an_unreadable_munge_key_fails_the_boot_and_leaves_no_copy(booted):
    root, read = booted["root"], booted["read"]
    assert read("boot3.rc").strip() == "1", _explain(booted, "boot3.out")
    assert read("boot3.status") == "failed: reading the munge key from Secrets Manager failed\n"
    assert "slurm-conf" not in read("boot3.out") and "node bootstrap finished" not in read("boot3.out")
    assert not list((root / "etc/munge").glob(".munge.key.*")), "the key's temporary file was left behind"
    assert (root / "etc/munge/munge.key").read_text() == MUNGE_KEY  # the key in place is left alone


def test_head_monitoring_step_configures_and_its_units_run_prometheus_and_alertmanager(booted):
    """The head's monitoring step (run twice: a rerun of the boot is harmless), then the two units' ExecStart:
    Prometheus finds every worker's agent and ranks from the hostfile and its Alertmanager."""
    root, read = booted["root"], booted["read"]
    for run in ("1", "2"):
        assert read(f"mon{run}.rc").strip() == "0", read(f"mon{run}.out")[-3000:]
    apt = (root / "var/log/fake-apt.log").read_text()
    assert "--no-install-recommends install prometheus prometheus-alertmanager" in apt
    systemctl = (root / "var/log/fake-systemctl.log").read_text()
    assert "systemctl disable --now prometheus.service prometheus-alertmanager.service" in systemctl
    assert systemctl.count("systemctl restart ddlc-prometheus.service ddlc-alertmanager.service") == 2
    am = (root / "etc/ddlc/monitoring/alertmanager.yml").read_text()
    assert f"topic_arn: {TOPIC_ARN}" in am
    assert "--storage.tsdb.retention.size=20GB" in (root / "etc/systemd/system/ddlc-prometheus.service").read_text()
    targets = json.loads(read("targets.json") or "{}").get("data", {}).get("activeTargets", [])
    found = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets}
    ips = json.loads(read("worker-ips.json"))
    expected = {("ddlc-agent", "localhost:9400")} | {("ddlc-agent", f"{ip}:9400") for ip in ips} | {
        ("ddlc-train", f"{ip}:{9500 + rank}") for ip in ips for rank in range(8)}
    assert found == expected, read("prometheus.out")[-3000:]
    managers = json.loads(read("alertmanagers.json"))["data"]["activeAlertmanagers"]
    assert [m["url"] for m in managers] == ["http://127.0.0.1:9093/api/v2/alerts"], read("alertmanager.out")[-2000:]
