"""Prove, before step 1, that every rank checkpoints to one shared place.

A multi-node job whose checkpoint location is a local path writes each node's shards to that node's own disk:
rank 0 never sees the others' files and every save fails. This module checks it once at start:

    every rank: resolve the location ──all_gather──▶ the same string on every rank?   (else: exit 2)
    rank 0: write <loc>/.ddlc-probe-<token>/rank00000 = token ──broadcast token──▶ every rank
    every rank: read rank 0's probe (== token?), write its own probe ──all_gather (saw it?, node)──▶ rank 0
    rank 0: read every rank's probe ──broadcast verdict──▶ every rank: pass, or the same one-line UserError

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

# Run on each host (python -c URI ENDPOINT TOKEN INDEX): read this machine's probe, write the host's own, print one
# JSON line. Self-contained (fsspec only for s3://), so it runs wherever the training interpreter does.
_HOST_PROBE = """
import json, os, sys
uri, endpoint, token, index = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4]
probe = "/" + ".ddlc-probe-" + token + "/rank%05d"
saw, error = False, None
if uri.startswith("s3://"):
    import fsspec
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **({"endpoint_url": endpoint} if endpoint else {}))
    root = uri[len("s3://"):].rstrip("/")
    try:
        saw = fs.cat_file(root + probe % 0).decode() == token
    except Exception:
        pass
    try:
        fs.pipe_file(root + probe % int(index), (token + " " + index).encode())
    except Exception as exc:
        error = "cannot write there (%s: %s)" % (type(exc).__name__, str(exc)[:200])
else:
    try:
        with open(uri + probe % 0) as handle:
            saw = handle.read() == token
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(uri + probe % int(index)), exist_ok=True)
        with open(uri + probe % int(index), "w") as handle:
            handle.write(token + " " + index)
    except OSError as exc:
        error = "cannot write there (%s)" % (exc.strerror or exc)
print(json.dumps({"saw": saw, "error": error}))
"""


def probe_command(python: str, location: str, endpoint_url: Optional[str], token: str, index: int) -> list[str]:
    return [python, "-c", _HOST_PROBE, location, endpoint_url or "", token, str(index)]


# (host, argv, timeout_s) -> (exit code, stdout, stderr); raises on a timeout
RunOnHost = Callable[[str, list, float], tuple]


def check_hosts(uri: str, hosts: Sequence[str], run_on_host: RunOnHost, python: str,
                endpoint_url: Optional[str] = None, timeout_s: float = 60.0, workdir: Optional[str] = None) -> Optional[str]:
    """From this machine: does every host in `hosts` see the checkpoint location `uri` (a relative path is taken
    relative to `workdir`, default the current directory)? None when it does, else the one-line problem naming the
    location and the hosts that cannot see it. Probe files are removed again."""
    import os

    if "://" not in uri and not os.path.isabs(os.path.expanduser(uri)):
        uri = os.path.join(workdir or os.getcwd(), uri)
    store = _store(uri, endpoint_url)
    location = store.display()
    token = uuid.uuid4().hex
    error = _write(store, probe_name(token, 0), token)
    if error:
        return f"checkpoint location {location}: this host {error}; {INSTEAD}"
    blind: list[str] = []
    unprobed: list[str] = []
    try:
        for index, host in enumerate(hosts, start=1):
            try:
                code, out, err = run_on_host(host, probe_command(python, location, endpoint_url, token, index),
                                             timeout_s)
                answer = json.loads((out or "").strip().splitlines()[-1]) if code == 0 else None
            except Exception as exc:  # noqa: BLE001 - a timeout or garbled answer: that host could not be probed
                code, err, answer = -1, _short(exc), None
            if answer is None:
                last = ((err or "").strip().splitlines() or [f"exit code {code}"])[-1].strip()
                unprobed.append(f"{host} ({last})")
            elif answer["error"]:
                blind.append(f"{host} ({answer['error']})")
            elif not answer["saw"] or _read(store, probe_name(token, index)) != f"{token} {index}":
                blind.append(host)
    finally:
        for index in range(len(hosts) + 1):
            _remove(store, probe_name(token, index))
    if blind:
        return (f"checkpoint location {location} is not shared by all nodes: {', '.join(blind)} cannot see this "
                f"host's files there (each node would checkpoint to its own disk and every save would fail); "
                f"{INSTEAD}")
    if unprobed:
        return f"checkpoint location {location}: could not probe {', '.join(unprobed)}"
    return None
