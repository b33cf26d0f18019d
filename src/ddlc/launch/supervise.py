"""Running a planned job and watching it until it ends.

    fixed size (DeepSpeed, Horovod): start every node; the first node to fail stops them all (exit: its code)
    elastic (torchrun):
      rendezvous store started here (ddlc.launch.rdzv_store); a node session per healthy host
      a node exits 0            -> the job is done (the others finish too)
      a node is lost            -> say which, when and why. Below --min-nodes, or more losses than --max-restarts:
        (non-zero exit, ssh      stop every node and exit non-zero. Otherwise the survivors' workers that were in a
         cut off)                world with it are killed (a dead peer whose link is down never answers, so they
                                 would hang in a collective); their agents re-rendezvous and restart them, and they
                                 resume from the newest committed checkpoint at the new world size
      every --rejoin-interval   -> lost and left-out hosts, and hosts newly listed in the hostfile, are probed (ssh,
                                 engine, `ddlc health`); a healthy one is started and joins at the next rendezvous
    Ctrl-C / SIGTERM: every node is told to stop; the workers checkpoint and exit 75, and the launcher exits 75
    (PREEMPTED_EXIT_CODE, "preempted") when they did, else 128 + the signal number.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable, Optional, Sequence, TextIO

from ddlc.errors import UserError
from ddlc.launch.multinode import SSH, HealthGate, Host, LaunchPlan, probe_hosts
from ddlc.launch.node_session import DEFAULT_STOP_TIMEOUT_S, NodeSession, Output, stop_sessions
from ddlc.launch.run_files import STOPPED_LINE

PREEMPTED_EXIT_CODE = 75  # what the workers exit with after a checkpoint on SIGTERM (ddlc.runtime.preemption)
_FINISH_GRACE_S = 20  # once one node finished the job, how long the others get to finish too (a node still
# waiting to join a rendezvous when the job ends is stopped then)


def clock() -> str:
    return time.strftime("%H:%M:%S")


class _Signals:
    """SIGINT/SIGTERM set a flag that the supervising loop acts on (only the main thread can install handlers)."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, _frame):
        self.received = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Preemption:
    """Watches the nodes' output for the workers' "stopped by signal at step N; checkpoint saved" line."""

    def __init__(self):
        self.step: Optional[int] = None

    def __call__(self, host: str, line: str) -> None:
        match = STOPPED_LINE.search(line)
        if match:
            self.step = int(match.group(1))


def _stop_on_signal(signals: _Signals, sessions: list[NodeSession], preemption: _Preemption, output: Output,
                    stop_timeout_s: int) -> int:
    name = signal.Signals(signals.received).name
    output.say(f"ddlc launch: {name} at {clock()}; stopping all nodes (the workers checkpoint first, up to "
               f"{stop_timeout_s} s)")
    stop_sessions(sessions, graceful=True, stop_timeout_s=stop_timeout_s)
    if preemption.step is not None:
        output.say(f"ddlc launch: preempted: the job saved a checkpoint at step {preemption.step} and stopped; "
                   f"run the same command again to resume (exit {PREEMPTED_EXIT_CODE})")
        return PREEMPTED_EXIT_CODE
    output.say("ddlc launch: interrupted; every node stopped (no checkpoint was reported)")
    return 128 + signals.received


def _start(plan: LaunchPlan, ssh: SSH, node, tag: str, output: Output, stop_timeout_s: int) -> NodeSession:
    inner = node.shell(plan.workdir, {**plan.env, "DDLC_LAUNCH_ID": tag})
    prefix = [] if node.local else ssh.argv(node.host.name)
    return NodeSession.start(node.host.name, prefix, inner, tag, output, stop_timeout_s)


# -- fixed size -------------------------------------------------------------------------------------------------
def run_plan(plan: LaunchPlan, ssh: SSH, out: TextIO = sys.stdout,
             on_start: Optional[Callable[[list[subprocess.Popen]], None]] = None,
             stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S) -> int:
    """Start every node, stream `[host] line` output, stop all on the first failure or a signal; return the code."""
    if plan.elastic is not None:
        return ElasticRun(plan, ssh, out=out, stop_timeout_s=stop_timeout_s).run()
    signals, preemption = _Signals(), _Preemption()
    output = Output(out, preemption)
    sessions: list[NodeSession] = []
    try:
        launch_id = uuid.uuid4().hex[:12]
        sessions = [_start(plan, ssh, node, f"{launch_id}-{node.node_rank}", output, stop_timeout_s)
                    for node in plan.nodes]
        if on_start is not None:
            on_start([s.proc for s in sessions])
        while True:
            if signals.received is not None:
                return _stop_on_signal(signals, sessions, preemption, output, stop_timeout_s)
            codes = [s.poll() for s in sessions]
            failed = [(s, node, c) for s, node, c in zip(sessions, plan.nodes, codes) if c not in (None, 0)]
            if failed:
                bad, node, code = failed[0]
                output.say(f"ddlc launch: node {bad.host} (rank {node.node_rank}) exited with code {code}; "
                           f"stopping all nodes")
                stop_sessions(sessions)
                return code
            if all(c == 0 for c in codes):
                stop_sessions(sessions)
                return 0
            time.sleep(0.1)
    finally:
        stop_sessions(sessions)
        signals.restore()


# -- elastic ----------------------------------------------------------------------------------------------------
def describe_exit(code: int) -> str:
    if code == 255:
        return "ssh connection lost (host unreachable, its network down, or sshd gone)"
    if code > 128:
        try:
            return f"its processes were killed ({signal.Signals(code - 128).name})"
        except ValueError:
            pass
    if code == PREEMPTED_EXIT_CODE:
        return "its workers stopped on a signal after a checkpoint (the node is being shut down?)"
    return f"torchrun exited with code {code} (its workers failed; see the lines above)"


class RendezvousStore:
    """The TCPStore server process on this machine."""

    def __init__(self, plan: LaunchPlan, python: str = sys.executable):
        self.proc = subprocess.Popen([python, "-m", "ddlc.launch.rdzv_store", plan.master_addr, str(plan.master_port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            error = (self.proc.stderr.read().strip().splitlines() or ["it exited"])[-1]
            self.close()
            raise UserError(f"cannot host the rendezvous store on {plan.master_addr}:{plan.master_port} "
                            f"(--master-addr/--master-port): {error}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ElasticRun:
    def __init__(self, plan: LaunchPlan, ssh: SSH, health: HealthGate = HealthGate(), out: TextIO = sys.stdout,
                 left_out: Optional[dict[str, str]] = None, rejoin_interval_s: float = 5.0,
                 stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S,
                 read_hosts: Optional[Callable[[], Sequence[Host]]] = None):
        assert plan.elastic is not None
        self.plan, self.ssh, self.health = plan, ssh, health
        self.settings = plan.elastic
        self.preemption = _Preemption()
        self.output = Output(out, self.preemption)
        self.left_out = dict(left_out or {})
        self.rejoin_interval_s, self.stop_timeout_s = rejoin_interval_s, stop_timeout_s
        self.read_hosts = read_hosts  # re-reads the hostfile: hosts listed later join too
        self.launch_id = uuid.uuid4().hex[:8]
        self.hosts = {h.name: h for h in plan.hosts}
        self.sessions: dict[str, NodeSession] = {}
        self.tags: dict[str, str] = {}  # host -> tag of its latest session (to clean up before a rejoin)
        self.unavailable: dict[str, str] = {h: f"left out: {why}" for h, why in self.left_out.items()}
        self.losses = 0
        self.finished_at: Optional[float] = None
        self._probed: "queue.Queue[list]" = queue.Queue()
        self._stop = threading.Event()
        self._said: dict[str, str] = {}
        self._started = 0
        self._lock = threading.Lock()  # sessions / unavailable / hosts, shared with the probing thread

    # -- starting nodes -----------------------------------------------------------------------------------------
    def _start_node(self, host: Host) -> None:
        self._started += 1
        tag = f"{self.launch_id}-{self._started}"
        node = self.plan.torchrun_node(host, self._started - 1)
        self.sessions[host.name] = _start(self.plan, self.ssh, node, tag, self.output, self.stop_timeout_s)
        self.tags[host.name] = tag

    def run(self) -> int:
        signals = _Signals()
        store = None
        try:
            store = RendezvousStore(self.plan, self.plan.python if self.plan.nodes[0].local else sys.executable)
            for host in self.plan.hosts:
                if host.name not in self.left_out:
                    self._start_node(host)
            prober = threading.Thread(target=self._probe_loop, name="ddlc-rejoin", daemon=True)
            prober.start()
            return self._supervise(signals, store)
        finally:
            self._stop.set()
            stop_sessions(list(self.sessions.values()))
            if store is not None:
                store.close()
            signals.restore()

    def _supervise(self, signals: _Signals, store: RendezvousStore) -> int:
        while True:
            if signals.received is not None:
                return _stop_on_signal(signals, list(self.sessions.values()), self.preemption, self.output,
                                       self.stop_timeout_s)
            if not store.alive():
                self.output.say("ddlc launch: the rendezvous store on this machine died; stopping all nodes")
                return 1
            for name, session in list(self.sessions.items()):
                code = session.poll()
                if code is None:
                    continue
                with self._lock:
                    del self.sessions[name]
                if code == 0:
                    if self.finished_at is None:
                        self.finished_at = time.monotonic()
                    continue
                if self.finished_at is not None:
                    continue  # the job is done: a node still waiting for a rendezvous was closed out
                outcome = self._lost(name, code)
                if outcome is not None:
                    return outcome
            if self.finished_at is not None:
                if not self.sessions:
                    return 0
                if time.monotonic() - self.finished_at > _FINISH_GRACE_S:
                    self.output.say("ddlc launch: the job finished; stopping nodes that are still running")
                    return 0
            self._start_probed()
            time.sleep(0.1)

    def _lost(self, name: str, code: int) -> Optional[int]:
        e = self.settings
        reason = describe_exit(code)
        self.losses += 1
        with self._lock:
            self.unavailable[name] = f"lost: {reason}"
        left = len(self.sessions)
        self.output.say(f"ddlc launch: node {name} lost at {clock()}: {reason}")
        if left < e.min_nodes:
            self.output.say(f"ddlc launch: {left} node{'s' if left != 1 else ''} left, fewer than --min-nodes "
                            f"{e.min_nodes}; stopping the job")
            stop_sessions(list(self.sessions.values()))
            return code if code not in (0, PREEMPTED_EXIT_CODE) else 1
        if self.losses > e.max_restarts:
            self.output.say(f"ddlc launch: {self.losses} node losses, more than --max-restarts {e.max_restarts}; "
                            f"stopping the job")
            stop_sessions(list(self.sessions.values()))
            return code if code not in (0, PREEMPTED_EXIT_CODE) else 1
        self.output.say(f"ddlc launch: carrying on with {left} nodes (restart {self.losses} of {e.max_restarts}): "
                        f"they re-rendezvous and resume from the newest checkpoint")
        # Workers that started before the loss were in a world with that node; one whose peer vanished without a
        # TCP reset (link down) would wait in a collective until its timeout. Workers restarted since are spared.
        for session in self.sessions.values():
            session.send("workers 2")
        return None

    # -- rejoining ----------------------------------------------------------------------------------------------
    def _candidates(self) -> list[Host]:
        with self._lock:
            return self._candidates_locked()

    def _candidates_locked(self) -> list[Host]:
        if self.read_hosts is not None:
            try:
                for host in self.read_hosts():
                    if host.name not in self.hosts:
                        self.hosts[host.name] = host
                        self.unavailable[host.name] = "newly listed"
                        self.output.say(f"ddlc launch: host {host.name} newly listed; probing it")
            except UserError as error:
                self._say_once("hostfile", f"ddlc launch: not re-reading the hosts: {error}")
        return [self.hosts[name] for name in self.unavailable if name not in self.sessions]

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.rejoin_interval_s):
            if self.finished_at is not None or len(self.sessions) >= self.settings.max_nodes:
                continue
            candidates = self._candidates()
            if candidates:
                self._probed.put(probe_hosts(self.plan, candidates, self.ssh, self.plan.python, self.health,
                                             cleanup_tags=dict(self.tags)))

    def _start_probed(self) -> None:
        while True:
            try:
                results = self._probed.get_nowait()
            except queue.Empty:
                return
            for result in results:
                name = result.host.name
                if name in self.sessions or self.finished_at is not None:
                    continue
                if not result.ok:
                    self._say_once(name, f"ddlc launch: host {name} not rejoining: "
                                         f"{result.unhealthy and 'health check failed: ' + result.unhealthy or result.fatal}")
                    continue
                if len(self.sessions) >= self.settings.max_nodes:
                    continue
                with self._lock:
                    was = self.unavailable.pop(name, "")
                    self._said.pop(name, None)
                    self.output.say(f"ddlc launch: node {name} is reachable and healthy at {clock()} ({was}); it "
                                    f"joins the job at the next rendezvous")
                    self._start_node(result.host)

    def _say_once(self, key: str, line: str) -> None:
        if self._said.get(key) != line:
            self._said[key] = line
            self.output.say(line)
