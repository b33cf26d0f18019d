"""The Slurm part of the node boot script (scheduler=slurm): packages, munge key, health check, slurm.conf.

    user_data.render_user_data ──(scheduler == "slurm")──> these lines, after ddlc and the ssh keys:
      apt-get install munge slurm-client + slurmctld (head) | slurmd (workers)   from the AMI's Ubuntu archive
      munge key      Secrets Manager (ddlc.infra.munge_secret) -> /etc/munge/munge.key (munge:munge, 0400)
      directories    state/spool/log/run directories slurm.conf names, owned by slurm (/run/slurm via tmpfiles.d)
      health check   HEALTH_CHECK_PROGRAM: `ddlc health --slurm-drain` (slurmd runs it; drains with the reason)
      slurm.conf     SLURM_CONF_SCRIPT = `ddlc cluster slurm-conf` (ddlc.scheduler.cluster_spec): writes the files
                     from discovery and starts slurmctld|slurmd; retried for up to 10 minutes (the head waits
                     for its first worker to be running), then the boot fails loudly
    the hostfile timer runs SLURM_CONF_SCRIPT every 5 minutes after the hostfile: a replaced worker is added,
    the one it replaced dropped, and Slurm told (restart or reconfigure) only when a file changed.

Versions: the Deep Learning AMI the stack uses is Ubuntu 22.04 (jammy), whose archive has slurm-wlm 21.08.5
(slurmctld, slurmd, slurm-client) and munge 0.5.14; Ubuntu 24.04 (noble) has 23.11.4 and 0.5.15. Every node
installs from the same archive, so controller and daemons are always the same version.
"""

from __future__ import annotations

import shlex
from dataclasses import fields

from ddlc.scheduler.slurm_conf import HEALTH_CHECK_PROGRAM, ClusterSpec

SLURM_CONF_SCRIPT = "/usr/local/sbin/ddlc-slurm-conf"
MUNGE_KEY = "/etc/munge/munge.key"
SLURM_PACKAGES = {"head": ("munge", "slurm-client", "slurmctld"), "worker": ("munge", "slurm-client", "slurmd")}
# How long the boot waits for slurm.conf (the head: for a running worker) before it fails.
SLURM_CONF_ATTEMPTS = 60
SLURM_CONF_RETRY_S = 10


def _slurm_dirs() -> tuple[str, ...]:
    defaults = {field.name: field.default for field in fields(ClusterSpec)}  # what the nodes' slurm.conf names
    return tuple(defaults[name] for name in ("state_dir", "spool_dir", "log_dir", "run_dir"))


def render_slurm_boot(role: str, region: str, munge_secret_id: str, cluster_env: str) -> list[str]:
    packages = " ".join(SLURM_PACKAGES["head" if role == "head" else "worker"])
    state_dir, spool_dir, log_dir, run_dir = _slurm_dirs()
    own_dir = state_dir if role == "head" else spool_dir  # slurmctld's state, or slurmd's spool
    return [
        # Slurm from the OS archive; the lock timeout waits out the AMI's unattended-upgrades at first boot.
        "export DEBIAN_FRONTEND=noninteractive",
        "APT=(apt-get -q -y -o DPkg::Lock::Timeout=600)",
        "\"${APT[@]}\" update || ddlc_fail 'apt-get update failed: Slurm cannot be installed'",
        f"\"${{APT[@]}}\" install {packages} || ddlc_fail 'installing Slurm ({packages}) from the OS archive failed'",
        # The cluster's munge key: the same on every node, or slurmctld and slurmd reject each other.
        f"MUNGE_KEY_TMP=$(mktemp $(dirname {MUNGE_KEY})/.munge.key.XXXXXX)",
        f"aws secretsmanager get-secret-value --region {shlex.quote(region)} "
        f"--secret-id {shlex.quote(munge_secret_id)} --query SecretString --output text | tr -d '\\n' "
        "> \"$MUNGE_KEY_TMP\" || ddlc_fail 'reading the munge key from Secrets Manager failed'",
        "if [ \"$(stat -c %s \"$MUNGE_KEY_TMP\")\" -lt 32 ]; then ddlc_fail 'the munge key is shorter than 32 bytes'; fi",
        "chown munge:munge \"$MUNGE_KEY_TMP\"",
        "chmod 0400 \"$MUNGE_KEY_TMP\"",
        f"mv -f \"$MUNGE_KEY_TMP\" {MUNGE_KEY}",
        "systemctl enable munge && systemctl restart munge || ddlc_fail 'munge did not start with the cluster key'",
        # The directories slurm.conf names; /run is empty after a reboot, so tmpfiles.d recreates /run/slurm.
        f"install -d -o slurm -g slurm -m 0755 {own_dir} {log_dir} {run_dir}",
        f"mkdir -p /etc/tmpfiles.d && echo 'd {run_dir} 0755 slurm slurm -' > /etc/tmpfiles.d/ddlc-slurm.conf",
        # slurmd's HealthCheckProgram: a failing `ddlc health` drains the node with its reason.
        f"cat > {HEALTH_CHECK_PROGRAM} <<'SCRIPT'",
        "#!/bin/bash",
        f"set -a; . {cluster_env}; set +a",
        "exec /usr/local/bin/ddlc health --slurm-drain",
        "SCRIPT",
        f"chmod 755 {HEALTH_CHECK_PROGRAM}",
        f"cat > {SLURM_CONF_SCRIPT} <<'SCRIPT'",
        "#!/bin/bash",
        f"set -a; . {cluster_env}; set +a",
        'exec /usr/local/bin/ddlc cluster slurm-conf --cluster "$DDLC_CLUSTER" --region "$AWS_DEFAULT_REGION" '
        '--role "$DDLC_ROLE" --instance-id "$DDLC_INSTANCE_ID"',
        "SCRIPT",
        f"chmod 755 {SLURM_CONF_SCRIPT}",
        "SLURM_READY=",
        f"for attempt in $(seq 1 {SLURM_CONF_ATTEMPTS}); do",
        f"  if {SLURM_CONF_SCRIPT}; then SLURM_READY=1; break; fi",
        f"  sleep {SLURM_CONF_RETRY_S}",
        "done",
        "if [ -z \"$SLURM_READY\" ]; then ddlc_fail 'Slurm: slurm.conf was not written or "
        f"{'slurmctld' if role == 'head' else 'slurmd'} did not start (ddlc cluster slurm-conf, above)'; fi",
    ]


def hostfile_hook() -> list[str]:
    """Lines of the hostfile script, after the hostfile is written: keep Slurm's node list in step."""
    return [f"    {SLURM_CONF_SCRIPT} || exit 1"]
