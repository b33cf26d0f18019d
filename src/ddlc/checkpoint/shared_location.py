"""Prove, before step 1, that every rank checkpoints to one shared place.

A multi-node job whose checkpoint location is a local path writes each node's shards to that node's own disk:
rank 0 never sees the others' files and every save fails. This module checks it once at start:

    rank 0: write <loc>/.ddlc-probe-<token>/rank00000 = token ──broadcast (its location, token)──▶ every rank
    every rank: same location as rank 0? read rank 0's probe (== token?), write its own probe
                ──all_gather (location, saw it?, node)──▶ rank 0
    rank 0: read every rank's probe ──broadcast verdict──▶ every rank: pass, or the same one-line error (exit 2)

The same probe runs across the hosts of a hostfile (`ddlc doctor --hostfile`, `ddlc launch`) through
`probe_command` / `check_hosts`, one ssh command per host instead of collectives. Probe files are removed again.
"""

from __future__ import annotations

import json
import posixpath
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ddlc.errors import UserError

PROBE_PREFIX = ".ddlc-probe-"
INSTEAD = "use s3://bucket/prefix, FSx for Lustre (/fsx/...) or another filesystem every node mounts"


class SharedLocationError(UserError):
    """The checkpoint location is not one place shared by every rank. Printed on every node (not only rank 0),
    since each node's log should say why it stopped."""

    every_node = True


def probe_name(token: str, rank: int) -> str:
    return posixpath.join(f"{PROBE_PREFIX}{token}", f"rank{rank:05d}")


def _store(uri: str, endpoint_url: Optional[str]):
    from ddlc.checkpoint.storage import CheckpointStore

    return CheckpointStore(uri, endpoint_url)


def _write(store, name: str, text: str) -> Optional[str]:
    """None, or why the probe could not be written."""
    try:
        store.write_bytes_atomic(name, text.encode())
        return None
    except Exception as error:  # noqa: BLE001 - reported in the verdict line, never raised mid-collective
        return f"cannot write there ({type(error).__name__}: {_short(error)})"


def _read(store, name: str) -> Optional[str]:
    try:
        store.refresh()
        with store.open(name, "rb") as handle:
            return handle.read().decode(errors="replace")
    except Exception:  # noqa: BLE001 - missing or unreadable: either way this rank cannot see it
        return None


def _remove(store, name: str) -> None:
    try:
        store.fs.rm(store.path(name))
    except Exception:  # noqa: BLE001 - cleanup only
        pass
    if store.scheme == "file":  # the probe directory on a node that does not share the location
        import os

        try:
            os.rmdir(posixpath.dirname(store.path(name)))
        except OSError:
            pass


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]


def _ranks(ranks: Sequence[int]) -> str:
    return "rank " + str(ranks[0]) if len(ranks) == 1 else "ranks " + ",".join(map(str, ranks))


@dataclass(frozen=True)
class RankReport:
    rank: int
    node: str  # "node 1 (hostname)"
    location: str
    saw_rank0: bool = False
    error: Optional[str] = None


def _by_node(reports: Sequence[RankReport]) -> str:
    nodes: dict[str, list[int]] = {}
    for report in reports:
        nodes.setdefault(report.node, []).append(report.rank)
    return "; ".join(f"{node} ({_ranks(ranks)})" for node, ranks in nodes.items())


def verdict(location: str, reports: Sequence[RankReport], rank0_error: Optional[str] = None,
            unseen_by_rank0: Sequence[int] = ()) -> Optional[str]:
    """The one-line problem, or None when every rank shares `location` (rank 0's resolved location)."""
    if rank0_error:
        return f"checkpoint location {location}: rank 0 {rank0_error}; {INSTEAD}, writable from every node"
    elsewhere = [r for r in reports if r.location != location]
    if elsewhere:
        where = "; ".join(f"{r.node} rank {r.rank}: {r.location}" for r in elsewhere)
        return (f"ranks resolve the checkpoint location differently (rank 0: {location}; {where}): give every "
                f"rank the same checkpoint.uri and monitoring.run_dir, on storage all nodes share: {INSTEAD}")
    blind = [r for r in reports if not r.saw_rank0 or r.error or r.rank in unseen_by_rank0]
    if blind:
        return (f"checkpoint location {location} is not shared by all nodes: {_by_node(blind)} cannot see rank 0's "
                f"files there (each node would checkpoint to its own disk and every save would fail); {INSTEAD}")
    return None


def verify_shared_location(uri: str, rank: int, world_size: int, node_rank: int = 0,
                           endpoint_url: Optional[str] = None, group=None) -> float:
    """Check, with three small collectives on `group`, that every rank sees one shared `uri`; returns the seconds
    it took. Raises SharedLocationError (the same line on every rank) when it is not shared. Call it on every rank
    of an initialised job, before training."""
    import torch.distributed as dist

    started = time.perf_counter()
    if world_size <= 1 or not dist.is_initialized():
        return 0.0
    store = _store(uri, endpoint_url)
    location = store.display()
    node = f"node {node_rank} ({socket.gethostname()})"

    # 1. rank 0 writes its probe, then hands out the token (the broadcast orders everyone's read after the write)
    token = uuid.uuid4().hex if rank == 0 else None
    error = _write(store, probe_name(token, 0), token) if rank == 0 else None
    shared = [location, token, error]
    dist.broadcast_object_list(shared, src=0, group=group)
    location0, token, rank0_error = shared
    try:
        # 2. every rank reads rank 0's probe and writes its own; rank 0 learns who saw what
        report = RankReport(rank, node, location)
        if rank0_error is None and location == location0:
            saw = _read(store, probe_name(token, 0)) == token
            own_error = _write(store, probe_name(token, rank), f"{token} {rank}") if rank else None
            report = RankReport(rank, node, location, saw_rank0=saw, error=own_error)
        reports: list = [None] * world_size
        dist.all_gather_object(reports, report, group=group)

        # 3. rank 0 reads every rank's probe and tells everyone the verdict
        problem = [None]
        if rank == 0:
            unseen = [r.rank for r in reports[1:]
                      if r.location == location0 and _read(store, probe_name(token, r.rank)) != f"{token} {r.rank}"]
            problem[0] = verdict(location0, reports, rank0_error, unseen)
        dist.broadcast_object_list(problem, src=0, group=group)
    finally:
        if token is not None and location == location0:
            _remove(store, probe_name(token, rank))
    if problem[0]:
        raise SharedLocationError(problem[0])
    return time.perf_counter() - started


# -- across the hosts of a hostfile (doctor, launch) -------------------------------------------------------------

# Run on a host as `python -c _HOST_PROBE LOCATION ENDPOINT TOKEN MODE [INDICES]`; prints one JSON line. Modes:
#   origin   write probe 0 (the token)                               -> {"error"}
#   probe I  read probe 0, write probe I (removed again if probe 0 was not there: nobody else could)
#                                                                    -> {"saw", "error"}
#   collect I,J,...  which of the probes I, J... hold what they should; then remove them all and probe 0
#                                                                    -> {"seen": [...]}
# Self-contained (fsspec only for s3://), so it runs wherever the training interpreter does, in the working
# directory training uses (a relative location resolves as training's does).
_HOST_PROBE = """
import json, os, sys
location, endpoint, token, mode = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4]
s3 = location.startswith("s3://")
if s3:
    import fsspec
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **({"endpoint_url": endpoint} if endpoint else {}))
    root = location[len("s3://"):].rstrip("/")
else:
    root = os.path.abspath(os.path.expanduser(location))
directory = root + "/.ddlc-probe-" + token
def path(i): return directory + "/rank%05d" % int(i)
def content(i): return token if int(i) == 0 else token + " " + str(i)
def read(i):
    try:
        if s3:
            return fs.cat_file(path(i)).decode()
        with open(path(i)) as handle:
            return handle.read()
    except Exception:
        return None
def write(i):
    try:
        if s3:
            fs.pipe_file(path(i), content(i).encode())
        else:
            os.makedirs(directory, exist_ok=True)
            with open(path(i), "w") as handle:
                handle.write(content(i))
                handle.flush()
                os.fsync(handle.fileno())
    except Exception as exc:
        return "cannot write there (%s: %s)" % (type(exc).__name__, " ".join(str(exc).split())[:200])
def remove(indices):
    for i in indices:
        try:
            fs.rm_file(path(i)) if s3 else os.remove(path(i))
        except Exception:
            pass
    if not s3:
        try:
            os.rmdir(directory)
        except OSError:
            pass
if mode == "origin":
    answer = {"error": write(0)}
elif mode == "probe":
    index = sys.argv[5]
    saw = read(0) == token
    answer = {"saw": saw, "error": write(index), "location": root}
    if not saw:
        remove([index])
else:
    indices = [i for i in sys.argv[5].split(",") if i.isdigit()]
    answer = {"seen": [i for i in indices if read(i) == content(i)]}
    remove(indices + ["0"])
print(json.dumps(answer))
"""


def probe_command(python: str, location: str, endpoint_url: Optional[str], token: str, mode: str,
                  indices: str = "") -> list[str]:
    return [python, "-c", _HOST_PROBE, location, endpoint_url or "", token, mode, *([indices] if indices else [])]


# (host, argv, timeout_s) -> (exit code, stdout, stderr); may raise (a timeout, ssh missing)
RunOnHost = Callable[[str, list, float], tuple]


def check_hosts(location: str, hosts: Sequence[str], run_on_host: RunOnHost, python: str,
                endpoint_url: Optional[str] = None, timeout_s: float = 60.0,
                origin_label: Optional[str] = None) -> Optional[str]:
    """Does every host in `hosts` see the checkpoint `location` the first of them writes? None when it does, else
    the one-line problem naming the location and the hosts that cannot see it. Probe files are removed again."""
    origin, others = hosts[0], list(hosts[1:])
    label = origin_label or origin
    token = uuid.uuid4().hex

    def ask(host: str, mode: str, indices: str = "") -> tuple[Optional[dict], str]:
        try:
            code, out, err = run_on_host(host, probe_command(python, location, endpoint_url, token, mode, indices),
                                         timeout_s)
            if code == 0:
                return json.loads((out or "").strip().splitlines()[-1]), ""
        except Exception as exc:  # noqa: BLE001 - a timeout or a garbled answer: that host could not be probed
            code, err = -1, _short(exc)
        return None, ((err or "").strip().splitlines() or [f"exit code {code}"])[-1].strip()

    answer, why = ask(origin, "origin")
    if answer is None:
        return f"checkpoint location {location}: could not probe {label} ({why})"
    if answer["error"]:
        return f"checkpoint location {location}: {label} {answer['error']}; {INSTEAD}, writable from every node"
    blind, unprobed, wrote = [], [], []
    for index, host in enumerate(others, start=1):
        answer, why = ask(host, "probe", str(index))
        if answer is None:
            unprobed.append(f"{host} ({why})")
        elif answer["error"]:
            blind.append(f"{host} ({answer['error']})")
        elif not answer["saw"]:
            blind.append(host)
        else:
            wrote.append(str(index))
    answer, why = ask(origin, "collect", ",".join(wrote) or "-")
    seen = set(answer["seen"]) if answer else set()
    blind += [others[int(i) - 1] for i in wrote if i not in seen]
    if blind:
        return (f"checkpoint location {location} is not shared by all nodes: {', '.join(blind)} cannot see the "
                f"files {label} writes there (each node would checkpoint to its own disk and every save would "
                f"fail); {INSTEAD}")
    if unprobed:
        return f"checkpoint location {location}: could not probe {', '.join(unprobed)}"
    return None
