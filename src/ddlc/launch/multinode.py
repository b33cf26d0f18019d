"""`ddlc launch`: one command on the head node starts a training job on every node.

    hosts (hostfile | `ddlc cluster hosts` output | Slurm variables)
      -> plan: master address/port + the exact per-node command for the engine (torchrun / deepspeed / horovod)
      -> preflight: every host answers over ssh and has the engine installed (else exit 2 naming the host)
      -> run: one ssh session per node, output prefixed with the host; the first node to fail stops them all

Each node's command runs in its own session (setsid) under a small shell wrapper that kills that whole process
group when the ssh connection's stdin closes. Closing stdin is therefore how the launcher stops a node, and a
launcher that dies (Ctrl-C, kill) stops every node too: no orphaned workers are left behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, TextIO

from ddlc.errors import UserError
from ddlc.launch.slurm import expand_nodelist

ENGINES = ("torchrun", "deepspeed", "horovod")
LOCAL_NAMES = {"localhost", "127.0.0.1"}
# What preflight imports on each node to prove the engine is installed there.
ENGINE_MODULES = {"torchrun": "torch.distributed.run", "deepspeed": "deepspeed", "horovod": "horovod.torch"}
STOP_GRACE_S = 3  # SIGTERM, then SIGKILL this many seconds later (remote wrapper and local fallback)


# -- hosts ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    origin: str  # "hostfile:3", "slurm", ... for error messages

    @property
    def is_local(self) -> bool:
        return self.name in LOCAL_NAMES


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


def parse_hostfile_text(text: str, origin: str) -> list[Host]:
    """DeepSpeed style `host slots=N`, horovod style `host:N`, or a bare `host` (1 slot). `#` starts a comment."""
    hosts: list[Host] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{origin}:{number}"
        parts = line.split()
        name, slots = parts[0], 1
        if ":" in name and len(parts) == 1:
            name, _, count = name.partition(":")
            slots = _slots(count, where, raw)
        elif len(parts) == 2 and parts[1].startswith("slots="):
            slots = _slots(parts[1][len("slots="):], where, raw)
        elif len(parts) != 1:
            raise UserError(f"{where}: expected 'host slots=N', 'host:N' or 'host', got {raw.strip()!r}")
        if not _HOST_RE.match(name):
            raise UserError(f"{where}: {name!r} is not a host name or address")
        if name in seen:
            raise UserError(f"{where}: host {name!r} is listed twice")
        seen.add(name)
        hosts.append(Host(name, slots, where))
    if not hosts:
        raise UserError(f"{origin}: no hosts listed")
    return hosts


def _slots(value: str, where: str, raw: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{where}: slots must be a positive integer, got {raw.strip()!r}")
    return int(value)


def parse_hostfile(path: str | Path) -> list[Host]:
    if str(path) == "-":
        return parse_hostfile_text(hostfile_text(sys.stdin.buffer.read(), "<stdin>"), "<stdin>")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--hostfile {path}: no such file")
    try:
        data = file.read_bytes()
    except OSError as error:
        raise UserError(f"--hostfile {path}: cannot read it: {error.strerror or error}") from None
    return parse_hostfile_text(hostfile_text(data, str(path)), str(path))


MAX_HOSTFILE_BYTES = 1 << 20  # 1 MiB: tens of thousands of hosts


def hostfile_text(data: bytes, origin: str) -> str:
    """A hostfile is short UTF-8 text: say so in one line for anything else (a binary, an image, a tarball)."""
    if len(data) > MAX_HOSTFILE_BYTES:
        raise UserError(f"--hostfile {origin}: {len(data):,} bytes is not a hostfile (one 'host slots=N' per line)")
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(f"--hostfile {origin}: binary data (NUL byte at offset {nul}), expected text lines "
                        "'host slots=N'")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"--hostfile {origin}: not UTF-8 text (byte offset {error.start}), expected lines "
                        "'host slots=N'") from None


def slurm_hosts(env: Mapping[str, str]) -> Optional[list[Host]]:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "1"
    slots = int(per_node.split("(")[0]) if per_node.split("(")[0].isdigit() else 1
    return [Host(name, slots, "SLURM_JOB_NODELIST") for name in expand_nodelist(nodelist)]


def resolve_hosts(hostfile: Optional[str], env: Mapping[str, str] | None = None) -> list[Host]:
    """--hostfile wins; otherwise Slurm's allocation; otherwise a clear error."""
    if hostfile is not None:
        return parse_hostfile(hostfile)
    hosts = slurm_hosts(os.environ if env is None else env)
    if hosts is None:
        raise UserError("no hosts: pass --hostfile FILE (e.g. from `ddlc cluster hosts`) or run inside Slurm")
    return hosts


# -- ssh --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SSH:
    port: Optional[int] = None
    identity: Optional[str] = None
    user: Optional[str] = None
    options: tuple[str, ...] = ()
    connect_timeout_s: int = 10

    def argv(self, host: str) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", "ServerAliveInterval=15", "-o", "LogLevel=ERROR"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.identity:
            argv += ["-i", self.identity]
        if self.user:
            argv += ["-l", self.user]
        for option in self.options:
            argv += ["-o", option]
        return argv + [host, "--"]


# -- plan -------------------------------------------------------------------------------------------------------
@dataclass
class NodeCommand:
    host: Host
    node_rank: int
    argv: list[str]  # the engine launcher's command line on that node
    local: bool = False  # run on this machine instead of over ssh (horovodrun, localhost)

    def shell(self, workdir: str, env: Mapping[str, str]) -> str:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        launcher = " ".join(shlex.quote(a) for a in self.argv)
        return f"cd {shlex.quote(workdir)} && env {assignments} {launcher}".replace("env  ", "env ")


@dataclass
class LaunchPlan:
    engine: str
    hosts: list[Host]
    master_addr: str
    master_port: int
    workdir: str
    env: dict[str, str]
    nodes: list[NodeCommand] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return sum(h.slots for h in self.hosts)

    def describe(self, ssh: SSH) -> str:
        """What `--dry-run` prints: one line per node, exactly what will run."""
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
) -> LaunchPlan:
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    hosts = [Host(h.name, nproc_per_node or h.slots, h.origin) for h in hosts]
    addr = master_addr or ("127.0.0.1" if hosts[0].is_local else hosts[0].name)
    port = master_port or pick_port()
    plan = LaunchPlan(engine, hosts, addr, port, workdir or os.getcwd(), dict(env or {}))
    nnodes = len(hosts)
    user = [script, *script_args]
    if engine == "torchrun":
        for rank, host in enumerate(hosts):
            argv = [python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={host.slots}",
                    f"--node_rank={rank}", f"--master_addr={addr}", f"--master_port={port}", *user]
            plan.nodes.append(NodeCommand(host, rank, argv, local=host.is_local and nnodes == 1))
    elif engine == "deepspeed":
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


def preflight(plan: LaunchPlan, ssh: SSH, python: str = sys.executable) -> None:
    """Every host answers over ssh and can import the engine; otherwise exit 2 naming the host."""
    module = ENGINE_MODULES[plan.engine]
    code = f"import {module}"
    check_hostname = plan.engine == "horovod" and len(plan.hosts) > 1
    if check_hostname:
        code += _HOSTNAME_PROBE
    probe = f"cd {shlex.quote(plan.workdir)} && {shlex.quote(python)} -c {shlex.quote(code)}"
    targets = [h for h in plan.hosts if not (h.is_local and len(plan.hosts) == 1)]
    if plan.engine == "horovod" or not targets:
        _check_local_engine(module, python, plan.engine)
    procs = {h.name: subprocess.Popen(ssh.argv(h.name) + [probe], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in targets}
    problems = []
    for host in targets:
        proc = procs[host.name]
        try:
            out, err = proc.communicate(timeout=ssh.connect_timeout_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            problems.append(f"host {host.name} ({host.origin}) did not answer over ssh")
            continue
        last = (err.strip().splitlines() or [""])[-1]
        if proc.returncode == 255:
            problems.append(f"host {host.name} ({host.origin}) unreachable over ssh: {last}")
        elif proc.returncode != 0:
            problems.append(f"engine {plan.engine} missing on host {host.name}: `{python} -c 'import {module}'` "
                            f"failed: {last}")
        elif check_hostname:
            problem = _loopback_hostname(host, out)
            if problem:
                problems.append(problem)
    if problems:
        raise UserError("; ".join(problems))


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


# -- run --------------------------------------------------------------------------------------------------------
# Runs the node's launcher with a unique DDLC_LAUNCH_ID in its environment, which every process it starts inherits
# (torchrun puts each worker in a new session, so a process group would not reach them). When our stdin closes
# (the launcher stopping this node, or gone), every process carrying the id gets SIGTERM, then SIGKILL. After the
# launcher exits, whatever still carries the id (workers of a launcher that was killed) is killed too.
_WRAPPER = """exec 3<&0
tag={tag}
kill_tagged() {{ pids=$(grep -lzx "DDLC_LAUNCH_ID=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); [ -n "$pids" ] && kill -$1 $pids 2>/dev/null; }}
bash -c {inner} </dev/null &
child=$!
( while read -r -u 3 _; do :; done; kill_tagged TERM; sleep {grace}; kill_tagged KILL ) >/dev/null 2>&1 &
watcher=$!
wait $child; rc=$?
if kill_tagged TERM; then sleep 1; kill_tagged KILL; fi
kill $watcher 2>/dev/null
exit $rc"""


def wrap_remote(inner: str, tag: str) -> str:
    return _WRAPPER.format(inner=shlex.quote(inner), tag=shlex.quote(tag), grace=STOP_GRACE_S)


@dataclass
class _Running:
    node: NodeCommand
    proc: subprocess.Popen
    reader: threading.Thread


def run_plan(plan: LaunchPlan, ssh: SSH, out: TextIO = sys.stdout,
             on_start: Optional[Callable[[list[subprocess.Popen]], None]] = None) -> int:
    """Start every node, stream `[host] line` output, stop all on the first failure or Ctrl-C; return the code."""
    lock = threading.Lock()
    running: list[_Running] = []
    stop_requested = threading.Event()

    def _signal(signum, _frame):
        stop_requested.set()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        launch_id = uuid.uuid4().hex[:12]
        for node in plan.nodes:
            tag = f"{launch_id}-{node.node_rank}"
            script = wrap_remote(node.shell(plan.workdir, {**plan.env, "DDLC_LAUNCH_ID": tag}), tag)
            argv = ["bash", "-c", script] if node.local else ssh.argv(node.host.name) + [script]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            reader = threading.Thread(target=_stream, args=(proc, node.host.name, out, lock), daemon=True)
            reader.start()
            running.append(_Running(node, proc, reader))
        if on_start is not None:
            on_start([r.proc for r in running])
        code = 0
        while True:
            if stop_requested.is_set():
                _say(out, lock, "ddlc launch: interrupted; stopping all nodes")
                code = 130
                break
            codes = [r.proc.poll() for r in running]
            failed = [(r, c) for r, c in zip(running, codes) if c not in (None, 0)]
            if failed:
                bad, code = failed[0]
                _say(out, lock, f"ddlc launch: node {bad.node.host.name} (rank {bad.node.node_rank}) exited with "
                     f"code {code}; stopping all nodes")
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
        _stop_all(running)
        for r in running:
            r.reader.join(timeout=5)
        return code
    finally:
        _stop_all(running)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(running: list[_Running]) -> None:
    """Close every node's stdin (its wrapper kills the node's processes), then wait; kill ssh as a last resort."""
    for r in running:
        if r.proc.poll() is None and r.proc.stdin and not r.proc.stdin.closed:
            try:
                r.proc.stdin.close()
            except OSError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S + 10
    for r in running:
        try:
            r.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()


def _stream(proc: subprocess.Popen, host: str, out: TextIO, lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        _say(out, lock, f"[{host}] {line}")


def _say(out: TextIO, lock: threading.Lock, line: str) -> None:
    with lock:
        out.write(line + "\n")
        out.flush()
