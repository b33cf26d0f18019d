"""One node of a job: its launcher started over ssh (or locally) under a wrapper that can stop what it started.

    NodeSession.start(node) -> ssh host -- <wrapper around `cd workdir && env K=V... launcher`>
      stdout/stderr -> "[host] line" on the launcher's output (a thread per node)
      stdin         -> commands to the wrapper:
                         "term"           SIGTERM every process of the node (workers checkpoint), SIGKILL after
                                          the stop timeout
                         "workers SECS"   SIGKILL the workers (not the torchrun agent) that started at least SECS
                                          ago: they were in a world with a node that is gone, so the agent
                                          restarts them into the next rendezvous
                         EOF              SIGTERM everything, SIGKILL a few seconds later (launcher stopping the node
                                          fast, or gone: killed, ssh cut)

Every process the node's launcher starts inherits a unique DDLC_LAUNCH_ID (torchrun puts each worker in a new
session, so a process group would not reach them); the wrapper finds them by that variable in /proc/*/environ.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TextIO

STOP_GRACE_S = 3  # after EOF: SIGTERM, then SIGKILL this many seconds later (remote wrapper and local fallback)
DEFAULT_STOP_TIMEOUT_S = 60  # after "term": time the workers get to write their checkpoint

_WRAPPER = """exec 3<&0
tag={tag}
flag=${{TMPDIR:-/tmp}}/ddlc-stopping-$tag
tagged() {{ grep -lzx "DDLC_LAUNCH_ID=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3; }}
kill_tagged() {{ pids=$(tagged); [ -n "$pids" ] && kill -$1 $pids 2>/dev/null; }}
wait_gone() {{ i=0; while [ $i -lt $1 ] && [ -n "$(tagged)" ]; do sleep 1; i=$((i+1)); done; }}
kill_workers() {{ for p in $(tagged); do grep -qz '^LOCAL_RANK=' /proc/$p/environ 2>/dev/null || continue
  age=$(ps -o etimes= -p $p 2>/dev/null | tr -d ' '); [ -n "$age" ] && [ "$age" -ge "$1" ] && kill -KILL $p 2>/dev/null; done; }}
bash -c {inner} </dev/null &
child=$!
( while read -r -u 3 cmd arg; do
    case "$cmd" in
      term) : > "$flag"; kill_tagged TERM; wait_gone {stop_timeout}; kill_tagged KILL ;;
      workers) kill_workers "$arg" ;;
    esac
  done; kill_tagged TERM; wait_gone {grace}; kill_tagged KILL ) >/dev/null 2>&1 &
watcher=$!
wait $child; rc=$?
# Workers that outlive their launcher (it was killed) are stopped too; while stopping on "term" they keep the
# stop timeout to finish their checkpoint.
if [ -e "$flag" ]; then wait_gone {stop_timeout}; fi
if kill_tagged TERM; then wait_gone 2; kill_tagged KILL; fi
pkill -P $watcher 2>/dev/null; kill $watcher 2>/dev/null; rm -f "$flag"
exit $rc"""


def wrap_remote(inner: str, tag: str, stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S) -> str:
    return _WRAPPER.format(inner=shlex.quote(inner), tag=shlex.quote(tag), grace=STOP_GRACE_S,
                           stop_timeout=int(stop_timeout_s))


class Output:
    """The launcher's output: whole lines, one writer at a time, optionally watched (e.g. for the preemption line)."""

    def __init__(self, out: TextIO, watch: Optional[Callable[[str, str], None]] = None):
        self.out, self.watch, self.lock = out, watch, threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def node_line(self, host: str, line: str) -> None:
        if self.watch is not None:
            self.watch(host, line)
        self.say(f"[{host}] {line}")


@dataclass
class NodeSession:
    host: str
    tag: str
    proc: subprocess.Popen
    reader: threading.Thread
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, host: str, argv_prefix: list[str], inner: str, tag: str, output: Output,
              stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S) -> "NodeSession":
        """`argv_prefix`: `ssh ... host --`, or [] to run on this machine."""
        script = wrap_remote(inner, tag, stop_timeout_s)
        argv = argv_prefix + [script] if argv_prefix else ["bash", "-c", script]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # Ctrl-C in the terminal reaches the launcher only
        reader = threading.Thread(target=_stream, args=(proc, host, output), daemon=True)
        reader.start()
        return cls(host, tag, proc, reader)

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def send(self, command: str) -> None:
        """A line to the wrapper; ignored when the session is already gone."""
        if self.proc.poll() is None and self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write(f"{command}\n".encode())
                self.proc.stdin.flush()
            except OSError:
                pass

    def close_input(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def kill_local(self) -> None:
        """Last resort: the ssh client (and a local wrapper) here; the remote wrapper then sees EOF."""
        import os

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def stop_sessions(sessions: list[NodeSession], graceful: bool = False,
                  stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S) -> None:
    """Stop every session: "term" (workers checkpoint) when graceful, else EOF; wait; kill the ssh as a last resort."""
    for session in sessions:
        if graceful:
            session.send("term")
        else:
            session.close_input()
    deadline = time.monotonic() + (stop_timeout_s if graceful else STOP_GRACE_S) + 10
    for session in sessions:
        try:
            session.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            session.kill_local()
    for session in sessions:
        session.close_input()
        session.reader.join(timeout=5)


def _stream(proc: subprocess.Popen, host: str, output: Output) -> None:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        output.node_line(host, raw.decode(errors="replace").rstrip("\n"))
