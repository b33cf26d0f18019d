"""`ddlc launch`: one command on the head node starts a training job on every node.

    hosts (hostfile | `ddlc cluster hosts` output | Slurm variables)
      -> plan: the exact per-node command for the engine; torchrun is elastic (c10d rendezvous on a store this
         machine hosts, --nnodes=MIN:MAX, --max-restarts), DeepSpeed / Horovod are fixed-size
      -> preflight: every host answers over ssh and has the engine installed (else exit 2 naming the host), and
         passes `ddlc health` (else it is left out, with the reason)
      -> run (ddlc.launch.supervise): one ssh session per node (ddlc.launch.node_session), output prefixed with
         the host; elastic jobs carry on while at least MIN nodes remain, fixed-size jobs stop at the first failure

Each node's command runs under a small shell wrapper that kills every process of that node when the ssh
connection's stdin closes, so a launcher that dies (Ctrl-C, kill) stops every node too: no orphaned workers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ddlc.errors import UserError
# Hosts (hostfile / Slurm parsing) live in ddlc.launch.hostfile; re-exported for this module's callers.
from ddlc.launch.hostfile import (LOCAL_NAMES, MAX_HOSTFILE_BYTES, Host, hostfile_text, parse_hostfile,  # noqa: F401
                                  parse_hostfile_text, resolve_hosts, slurm_hosts)
from ddlc.launch.slurm import expand_nodelist  # noqa: F401

ENGINES = ("torchrun", "deepspeed", "horovod")
# What preflight imports on each node to prove the engine is installed there.
ENGINE_MODULES = {"torchrun": "torch.distributed.run, ddlc.launch.torchrun_agent", "deepspeed": "deepspeed", "horovod": "horovod.torch"}


# -- ssh --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SSH:
    port: Optional[int] = None
    identity: Optional[str] = None
    user: Optional[str] = None
    options: tuple[str, ...] = ()
    connect_timeout_s: int = 10
    # A host that answers no keep-alive for this long counts as lost (3 probes, one every third of it).
    alive_timeout_s: int = 45

    def argv(self, host: str) -> list[str]:
        # ssh keeps the FIRST value it is given for each option, so the user's `-o` options come before ddlc's
        # defaults: `--ssh-option ConnectTimeout=3` must win over ConnectTimeout=10.
        argv = ["ssh"]
        for option in self.options:
            argv += ["-o", option]
        interval = max(self.alive_timeout_s // 3, 1)
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                 "-o", f"ServerAliveInterval={interval}", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.identity:
            argv += ["-i", self.identity]
        if self.user:
            argv += ["-l", self.user]
        return argv + [host, "--"]


_SSH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*=[^\x00-\x1f\x7f]+")


def checked_ssh_options(options: Sequence[str]) -> tuple[str, ...]:
    """`--ssh-option KEY=VALUE` values, checked here rather than failing on every host later: one `KEY=VALUE` per
    option (no newline smuggling a second config line in, no empty or `-o...` value), and, where this machine has
    ssh, a keyword and value that `ssh -G` (parses, never connects; no config file) accepts."""
    import shutil

    for option in options:
        if not _SSH_OPTION.fullmatch(option):
            raise UserError(f"--ssh-option {option!r}: expected KEY=VALUE (an ssh_config keyword, a non-empty value, "
                            "no control characters)")
    ssh = shutil.which("ssh")
    if ssh and options:
        argv = [ssh, "-F", "/dev/null", "-G"]
        for option in options:
            argv += ["-o", option]
        try:
            done = subprocess.run(argv + ["ddlc-option-check"], capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return tuple(options)  # cannot ask ssh: the nodes' ssh will say
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"ssh -G exit {done.returncode}"])[-1]
            raise UserError(f"--ssh-option {' '.join(options)}: ssh rejects it: {why}")
    return tuple(options)


# -- plan -------------------------------------------------------------------------------------------------------
@dataclass
class NodeCommand:
    host: Host
    node_rank: int
    argv: list[str]  # the engine launcher's command line on that node
    local: bool = False  # run on this machine instead of over ssh (horovodrun, localhost)

    def shell(self, workdir: str, env: Mapping[str, str]) -> str:
        from ddlc.launch.env import shell_assignment

        assignments = " ".join(shell_assignment(k, v) for k, v in env.items())
        launcher = " ".join(shlex.quote(a) for a in self.argv)
        return f"cd {shlex.quote(workdir)} && env {assignments} {launcher}".replace("env  ", "env ")


@dataclass(frozen=True)
class Elastic:
    """torchrun's elastic settings. The rendezvous timeouts trade recovery time against spurious restarts:
    - a dead node stays a participant of the current round until it missed `keep_alive_attempts` heartbeats
      `keep_alive_s` apart (torch's default: 3 x 5 s); the survivors cannot start the next round before. Shorter
      means faster recovery, but more heartbeat writes to the store and a node that stalls that long (swapping,
      a loaded head node) is dropped;
    - `last_call_s`: how long a round waits for more nodes once MIN have joined. Every recovery pays it; too short
      and a slow node misses the round and causes one more restart when it joins;
    - `join_timeout_s`: how long a node waits for MIN nodes at all."""

    min_nodes: int
    max_nodes: int
    max_restarts: int = 3
    job_id: str = ""
    last_call_s: int = 3
    keep_alive_s: int = 2
    keep_alive_attempts: int = 3
    join_timeout_s: int = 600
    read_timeout_s: int = 60
    monitor_interval_s: float = 0.5


@dataclass
class LaunchPlan:
    engine: str
    hosts: list[Host]
    master_addr: str  # torchrun: the rendezvous store on this machine
    master_port: int
    workdir: str
    env: dict[str, str]
    nodes: list[NodeCommand] = field(default_factory=list)
    elastic: Optional[Elastic] = None
    python: str = sys.executable
    user_argv: list[str] = field(default_factory=list)

    def torchrun_node(self, host: Host, rank: int) -> NodeCommand:
        """The elastic torchrun agent for `host` (any host: the rendezvous, not the rank, places it)."""
        assert self.elastic is not None
        e = self.elastic
        local = host.is_local and len(self.hosts) == 1
        conf = (f"is_host=false,join_timeout={e.join_timeout_s},last_call_timeout={e.last_call_s},"
                f"close_timeout=10,read_timeout={e.read_timeout_s},keep_alive_interval={e.keep_alive_s},"
                f"keep_alive_max_attempt={e.keep_alive_attempts}")
        argv = [self.python, "-m", "ddlc.launch.torchrun_agent", f"--nnodes={e.min_nodes}:{e.max_nodes}",
                f"--nproc_per_node={host.slots}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={self.master_addr}:{self.master_port}", f"--rdzv-id={e.job_id}",
                f"--rdzv-conf={conf}", f"--max-restarts={e.max_restarts}", f"--monitor-interval={e.monitor_interval_s}"]
        if not local:
            argv.append(f"--local-addr={host.name}")  # workers' MASTER_ADDR when this node is rank 0
        return NodeCommand(host, rank, argv + self.user_argv, local=local)

    @property
    def world_size(self) -> int:
        return sum(h.slots for h in self.hosts)

    def describe(self, ssh: SSH) -> str:
        """What `--dry-run` prints: one line per node, exactly what will run."""
        if self.elastic is not None:
            e = self.elastic
            lines = [f"# engine={self.engine} nodes={len(self.hosts)} (min {e.min_nodes}, max {e.max_nodes}) "
                     f"rendezvous={self.master_addr}:{self.master_port} (this machine) job={e.job_id} "
                     f"max_restarts={e.max_restarts}"]
        else:
            lines = [f"# engine={self.engine} nodes={len(self.hosts)} world_size={self.world_size} "
                     f"master={self.master_addr}:{self.master_port}"]
        for node in self.nodes:
            inner = node.shell(self.workdir, self.env)
            if node.local:
                lines.append(f"[{node.host.name}] (local) bash -c {shlex.quote(inner)}")
            else:
                lines.append(f"[{node.host.name}] " + " ".join(shlex.quote(a) for a in ssh.argv(node.host.name))
                             + " " + shlex.quote(inner))
        return "\n".join(lines)


def pick_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def address_towards(hosts: Sequence[Host]) -> str:
    """This machine's address as the hosts reach it (the rendezvous store's address): the source address the
    kernel picks towards the first remote host; 127.0.0.1 when every host is this machine."""
    remote = [h for h in hosts if not h.is_local]
    if not remote:
        return "127.0.0.1"
    try:
        target = socket.getaddrinfo(remote[0].name, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(target[0], socket.SOCK_DGRAM) as probe:
            probe.connect(target[4])  # no packet is sent: this only asks the kernel for the outgoing address
            return probe.getsockname()[0]
    except OSError:  # a host name that does not resolve here (a dry run elsewhere): name this machine
        return socket.gethostname()


def plan_launch(
    engine: str,
    hosts: Sequence[Host],
    script: str,
    script_args: Sequence[str],
    nproc_per_node: Optional[int] = None,
    master_addr: Optional[str] = None,
    master_port: Optional[int] = None,
    python: str = sys.executable,
    workdir: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    ssh: SSH = SSH(),
    elastic: Optional[Elastic] = None,
) -> LaunchPlan:
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    hosts = [Host(h.name, nproc_per_node or h.slots, h.origin) for h in hosts]
    nnodes = len(hosts)
    user = [script, *script_args]
    if engine == "torchrun":
        # The rendezvous store lives here, on the launching host, not on a training node that can die.
        elastic = elastic or Elastic(nnodes, nnodes)
        if not elastic.job_id:
            elastic = Elastic(**{**elastic.__dict__, "job_id": uuid.uuid4().hex[:12]})
        plan = LaunchPlan(engine, hosts, master_addr or address_towards(hosts), master_port or pick_port(),
                          workdir or os.getcwd(), dict(env or {}), elastic=elastic, python=python, user_argv=user)
        # Restarted workers must not reuse the agent's store (pytorch/pytorch#135712).
        plan.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        if elastic.min_nodes < elastic.max_nodes:  # nodes may join mid-job (ddlc.runtime.preemption.let_the_agent_notice)
            plan.env["DDLC_ELASTIC_NODES"] = f"{elastic.min_nodes}:{elastic.max_nodes}"
        plan.nodes = [plan.torchrun_node(host, rank) for rank, host in enumerate(hosts)]
        return plan
    addr = master_addr or ("127.0.0.1" if hosts[0].is_local else hosts[0].name)
    port = master_port or pick_port()
    plan = LaunchPlan(engine, hosts, addr, port, workdir or os.getcwd(), dict(env or {}), python=python,
                      user_argv=user)
    if engine == "deepspeed":
        # What DeepSpeed's own pdsh runner starts on each node: its per-node launcher with the whole world encoded.
        world = {h.name: list(range(h.slots)) for h in hosts}
        world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
        for rank, host in enumerate(hosts):
            argv = [python, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
                    f"--node_rank={rank}", f"--master_addr={addr}", f"--master_port={port}", *user]
            plan.nodes.append(NodeCommand(host, rank, argv, local=host.is_local and nnodes == 1))
    else:
        # horovodrun is itself multi-node: it runs here, reaches every host over ssh and hosts gloo's rendezvous.
        spec = ",".join(f"{h.name}:{h.slots}" for h in hosts)
        argv = [python, "-m", "horovod.runner.launch", "--gloo", "-np", str(plan.world_size), "-H", spec]
        if ssh.port is not None:
            argv += ["-p", str(ssh.port)]
        if ssh.identity:
            argv += ["-i", ssh.identity]
        nic = (env or {}).get("GLOO_SOCKET_IFNAME")
        if nic:
            argv += ["--network-interfaces", nic]
        argv += [python, *user]
        if ssh.options or ssh.user:
            # horovodrun has no flag for other ssh options: an `ssh` earlier on its PATH adds them.
            plan.env["PATH"] = f"{ssh_shim(ssh)}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        plan.nodes.append(NodeCommand(Host("horovodrun", plan.world_size, "local"), 0, argv, local=True))
    return plan


def ssh_shim(ssh: SSH) -> str:
    """A directory holding an `ssh` that runs the real one with our options (content-addressed, reused)."""
    import hashlib
    import shutil
    import tempfile

    real = shutil.which("ssh") or "/usr/bin/ssh"
    extra = [*(a for o in ssh.options for a in ("-o", o)), *(["-l", ssh.user] if ssh.user else [])]
    script = "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in [real, *extra]) + ' "$@"\n'
    directory = Path(tempfile.gettempdir()) / f"ddlc-ssh-{hashlib.sha256(script.encode()).hexdigest()[:12]}"
    directory.mkdir(exist_ok=True)
    shim = directory / "ssh"
    if not shim.exists() or shim.read_text() != script:
        shim.write_text(script)
        shim.chmod(0o755)
    return str(directory)


# -- preflight --------------------------------------------------------------------------------------------------
# Under Horovod 0.28.1 each rank's gloo device for the global process set is made without HOROVOD_GLOO_IFACE (the
# interface is copied only into the first contexts), so gloo falls back to resolving the hostname and announces
# that address to the other hosts. A hostname that resolves to loopback therefore breaks every multi-host job.
_HOSTNAME_PROBE = """
import socket
name = socket.gethostname()
try:
    address = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
except OSError:
    address = "nothing"
print(name, address)"""


@dataclass(frozen=True)
class HealthGate:
    """`ddlc health` on every host before it starts (and before a lost node rejoins); a failing host is left out."""

    enabled: bool = True
    args: tuple[str, ...] = ()  # extra `ddlc health` options, e.g. ("--min-free-gb", "50")

    def command(self, python: str) -> str:
        # --reference-time: the host's clock is compared with this machine's (ssh latency is far below the limit).
        argv = [python, "-m", "ddlc.cli.main", "health", "--reference-time", f"{time.time():.3f}", *self.args]
        return " ".join(shlex.quote(a) for a in argv)


_ENGINE_MISSING, _UNHEALTHY = 97, 98  # exit codes of the probe script (ssh itself uses 255)


def probe_script(plan: LaunchPlan, python: str, health: HealthGate, cleanup_tag: Optional[str] = None) -> str:
    """One shell command per host: (kill leftovers of an earlier session,) import the engine, run `ddlc health`."""
    module = ENGINE_MODULES[plan.engine]
    code = f"import {module}"
    if plan.engine == "horovod" and len(plan.hosts) > 1:
        code += _HOSTNAME_PROBE
    parts = [f"cd {shlex.quote(plan.workdir)}"]
    if plan.env:  # the job's environment (PYTHONPATH, ...) so the probe imports what the job will
        parts.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items()))
    if cleanup_tag:
        # A node that was cut off (network down) may still run the job's processes: never two agents on a host.
        parts.append(f'for p in $(grep -lzx {shlex.quote("DDLC_LAUNCH_ID=" + cleanup_tag)} /proc/[0-9]*/environ '
                     f'2>/dev/null | cut -d/ -f3); do kill -9 $p 2>/dev/null; done; true')
    parts.append(f"{{ {shlex.quote(python)} -c {shlex.quote(code)} || exit {_ENGINE_MISSING}; }}")
    if health.enabled:
        parts.append(f"{{ {health.command(python)} || exit {_UNHEALTHY}; }}")
    return " && ".join(parts)


@dataclass
class ProbeResult:
    host: Host
    fatal: Optional[str] = None  # unreachable, engine missing, loopback hostname: the user must fix it
    unhealthy: Optional[str] = None  # `ddlc health` failed: the host is left out

    @property
    def ok(self) -> bool:
        return self.fatal is None and self.unhealthy is None


def probe_hosts(plan: LaunchPlan, hosts: Sequence[Host], ssh: SSH, python: str, health: HealthGate,
                cleanup_tags: Optional[Mapping[str, str]] = None) -> list[ProbeResult]:
    """Run the probe on every host at once (a host that is this machine, alone in the job, runs it here)."""
    module = ENGINE_MODULES[plan.engine]
    procs = {}
    for host in hosts:
        script = probe_script(plan, python, health, (cleanup_tags or {}).get(host.name))
        argv = ["bash", "-c", script] if host.is_local and len(plan.hosts) == 1 else ssh.argv(host.name) + [script]
        procs[host.name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
    results = []
    for host in hosts:
        proc, result = procs[host.name], ProbeResult(host)
        results.append(result)
        try:
            out, err = proc.communicate(timeout=ssh.connect_timeout_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            result.fatal = f"host {host.name} ({host.origin}) did not answer over ssh"
            continue
        last = (err.strip().splitlines() or [""])[-1]
        if proc.returncode == 255:
            result.fatal = f"host {host.name} ({host.origin}) unreachable over ssh: {last}"
        elif proc.returncode == _ENGINE_MISSING:
            result.fatal = (f"engine {plan.engine} missing on host {host.name}: `{python} -c 'import {module}'` "
                            f"failed: {last}")
        elif proc.returncode == _UNHEALTHY:
            lines = [line[len("UNHEALTHY "):] for line in out.splitlines() if line.startswith("UNHEALTHY ")]
            result.unhealthy = "; ".join(lines) or f"`ddlc health` did not run: {last or out.strip()[-200:]}"
        elif proc.returncode != 0:
            result.fatal = f"host {host.name}: the preflight probe failed (exit {proc.returncode}): {last}"
        elif plan.engine == "horovod" and len(plan.hosts) > 1:
            result.fatal = _loopback_hostname(host, _probe_line(out))
    return results


def _probe_line(out: str) -> str:
    """The hostname probe's line (`name address`), before whatever `ddlc health` printed."""
    for line in out.splitlines():
        if len(line.split()) == 2 and not line.startswith(("healthy:", "UNHEALTHY")):
            return line
    return ""


def preflight(plan: LaunchPlan, ssh: SSH, python: str = sys.executable,
              health: HealthGate = HealthGate()) -> dict[str, str]:
    """Every host answers over ssh and can import the engine (otherwise exit 2 naming the host). Returns the hosts
    that failed `ddlc health`, host name -> the failed checks."""
    targets = [h for h in plan.hosts if not (h.is_local and len(plan.hosts) == 1)]
    if plan.engine == "horovod" or not targets:
        _check_local_engine(ENGINE_MODULES[plan.engine], python, plan.engine)
    # Every host, this machine too when it is the only one: `ddlc health` runs wherever the job will.
    results = probe_hosts(plan, plan.hosts, ssh, python, health)
    problems = [r.fatal for r in results if r.fatal]
    if problems:
        raise UserError("; ".join(problems))
    return {r.host.name: r.unhealthy for r in results if r.unhealthy}


def _loopback_hostname(host: Host, probe_output: str) -> Optional[str]:
    """A problem line when the host's own name resolves to a loopback address (see _HOSTNAME_PROBE)."""
    words = (probe_output.strip().splitlines() or [""])[-1].split()
    if len(words) != 2:
        return None
    name, address = words
    if address.startswith("127.") or address in ("::1", "nothing"):
        return (f"host {host.name}: its hostname {name!r} resolves to {address}, but Horovod's gloo announces that "
                f"address to the other hosts (Horovod 0.28.1 ignores the network interface there); map {name!r} to "
                f"the host's cluster address in /etc/hosts or DNS (docs/launch.md, known limitations)")
    return None


def _check_local_engine(module: str, python: str, engine: str) -> None:
    proc = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        hint = " (make horovod)" if engine == "horovod" else f" (pip install 'ddlc[{engine}]')" if engine == "deepspeed" else ""
        raise UserError(f"engine {engine} missing on this host: import {module} failed: {last}{hint}")
