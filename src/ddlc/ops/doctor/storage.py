"""Storage checks: free disk for runs/checkpoints and write access to the checkpoint URI."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ddlc.ops.doctor.results import ANCHOR_SHARED, ANCHOR_STORAGE, NETWORK_TIMEOUT_S, CheckResult, Status


# -- storage ------------------------------------------------------------------------------------------------

def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def local_checkpoint_path(uri: Optional[str]) -> Optional[Path]:
    if not uri:
        return None
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        return None
    return Path(uri)


def check_disk(path: Path, min_free_gb: float) -> CheckResult:
    name = "disk"
    where = _existing_ancestor(path)
    try:
        usage = shutil.disk_usage(where)
    except OSError as error:
        return CheckResult(name, Status.FAIL, f"cannot read free space of {where}: {error.strerror or error}",
                           "check the mount", ANCHOR_STORAGE)
    free_gb = usage.free / 1e9
    detail = f"{free_gb:,.1f} GB free on {where} (need >= {min_free_gb:g} GB)"
    if free_gb < min_free_gb:
        return CheckResult(name, Status.FAIL, detail, "free space: `ddlc checkpoints prune URI --keep-last N`, "
                           "or checkpoint to s3://", ANCHOR_STORAGE)
    return CheckResult(name, Status.PASS, detail)


def _run_with_deadline(work: Callable[[], Any], timeout_s: float) -> Any:
    """Run `work` in a daemon thread; TimeoutError if it takes longer (the thread is abandoned, not joined)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, name="ddlc-doctor-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def probe_checkpoint_store(uri: str, endpoint_url: Optional[str] = None) -> float:
    """Write a probe object atomically, read it back, delete it; returns the seconds it took."""
    from ddlc.checkpoint.storage import CheckpointStore

    started = time.perf_counter()
    store = CheckpointStore(uri, endpoint_url)
    if store.scheme == "s3":
        import fsspec

        # A preflight must answer quickly: short timeouts and one retry instead of botocore's patient defaults.
        store.fs = fsspec.filesystem(
            "s3", skip_instance_cache=True,
            config_kwargs={"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2, "mode": "standard"}},
            **store.storage_options,
        )
    local_root = Path(store.root) if store.scheme == "file" else None
    first_existing = _existing_ancestor(local_root) if local_root else None
    name = f".ddlc-doctor-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    payload = f"ddlc doctor probe {time.time()}\n".encode()
    store.write_bytes_atomic(name, payload)
    try:
        with store.open(name, "rb") as handle:
            if handle.read() != payload:
                raise OSError(f"read back different bytes from {store.display(name)}")
    finally:
        store.fs.rm(store.path(name))
        if local_root is not None and first_existing is not None:
            _remove_created_dirs(local_root, first_existing)
    return time.perf_counter() - started


def _remove_created_dirs(path: Path, keep: Path) -> None:
    """Remove the empty directories the probe created below `keep` (leave the tree as it was)."""
    path = path.absolute()
    while path != keep and keep in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def check_checkpoint_write(uri: Optional[str], endpoint_url: Optional[str] = None,
                           timeout_s: float = NETWORK_TIMEOUT_S) -> CheckResult:
    name = "checkpoint-write"
    if not uri:
        return CheckResult(name, Status.SKIP, "no checkpoint URI given (--checkpoint-uri, or DDLC_CHECKPOINT_BUCKET "
                           "on a cluster node)")
    where = f" via {endpoint_url}" if endpoint_url else ""
    try:
        seconds = _run_with_deadline(lambda: probe_checkpoint_store(uri, endpoint_url), timeout_s)
    except TimeoutError as error:
        return CheckResult(name, Status.FAIL, f"{uri}{where}: {error}", "check the network path to the storage "
                           "(VPC endpoint, security group, proxy)", ANCHOR_STORAGE)
    except PermissionError as error:
        return CheckResult(name, Status.FAIL, f"{uri}{where}: access denied ({_one_line(error)})",
                           "grant the node role (or your credentials) write access to the URI", ANCHOR_STORAGE)
    except FileNotFoundError as error:
        return CheckResult(name, Status.FAIL, f"{uri}{where}: not found ({_one_line(error)})",
                           "check the bucket name (`ddlc cluster status` shows CheckpointBucketName)",
                           ANCHOR_STORAGE)
    except Exception as error:  # noqa: BLE001 - every failure becomes one line
        return CheckResult(name, Status.FAIL, f"{uri}{where}: {type(error).__name__}: {_one_line(error)}",
                           "fix access to the checkpoint URI before training", ANCHOR_STORAGE)
    return CheckResult(name, Status.PASS, f"wrote, read back and deleted a probe object in {uri}{where} "
                       f"({seconds:.2f} s)")


def check_shared_checkpoint(uri: Optional[str], hosts: Optional[Sequence[str]], runner, python: str,
                            endpoint_url: Optional[str] = None, timeout_s: float = NETWORK_TIMEOUT_S,
                            unreachable_status: Status = Status.FAIL) -> CheckResult:
    """Every host of the hostfile sees the checkpoint location this host writes to (the probe training runs at
    start, here over ssh: `ddlc.checkpoint.shared_location.check_hosts`)."""
    name = "checkpoint-shared"
    if hosts is None:
        return CheckResult(name, Status.SKIP, "no hostfile given: nothing to compare with")
    if not uri:
        return CheckResult(name, Status.SKIP, "no checkpoint URI given (--checkpoint-uri, or DDLC_CHECKPOINT_BUCKET "
                           "on a cluster node)")
    from ddlc.checkpoint.shared_location import INSTEAD, check_hosts

    def run_on_host(host: str, argv: list, timeout: float) -> tuple:
        proc = runner.run(host, argv, timeout)
        return proc.returncode, proc.stdout, proc.stderr

    location = uri
    if "://" not in uri:  # this host's view of a relative path, on every host
        location = str(Path(uri).expanduser().absolute())
    origin = "localhost"  # this host writes first (SshRunner runs local names here)
    try:
        problem = _run_with_deadline(lambda: check_hosts(location, [origin, *hosts], run_on_host, python,
                                                         endpoint_url, timeout_s, "this host"),
                                     timeout_s * (len(hosts) + 1))
    except Exception as error:  # noqa: BLE001 - every failure becomes one line
        return CheckResult(name, Status.FAIL, f"{uri}: {type(error).__name__}: {_one_line(error)}", INSTEAD,
                           ANCHOR_SHARED)
    if problem is None:
        return CheckResult(name, Status.PASS, f"all {len(hosts)} hosts read and write the same {location} as this "
                           "host")
    status = unreachable_status if problem.startswith(f"checkpoint location {location}: could not probe") else Status.FAIL
    return CheckResult(name, status, problem, INSTEAD, ANCHOR_SHARED)
