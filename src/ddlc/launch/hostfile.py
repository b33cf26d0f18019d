"""Which hosts a `ddlc launch` runs on: a hostfile (or stdin), else Slurm's allocation.

    --hostfile PATH | - -> hostfile_text (size / NUL / UTF-8 checks) -> parse_hostfile_text -> [Host(name, slots)]
    SLURM_JOB_NODELIST (+ SLURM_NTASKS_PER_NODE) -> slurm_hosts -> [Host]

Every bad line is a UserError naming the file and line number (exit 2 in the CLI). ddlc.launch.multinode plans
and runs the job on these hosts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from ddlc.errors import UserError
from ddlc.launch.slurm import expand_nodelist

LOCAL_NAMES = {"localhost", "localhost.localdomain", "127.0.0.1", "::1"}


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
        if ":" in name and len(parts) == 1 and not _is_ipv6(name):
            name, _, count = name.partition(":")
            slots = _slots(count, where, raw)
        elif len(parts) == 2 and parts[1].startswith("slots="):
            slots = _slots(parts[1][len("slots="):], where, raw)
        elif len(parts) != 1:
            raise UserError(f"{where}: expected 'host slots=N', 'host:N' or 'host', got {raw.strip()!r}")
        if not (_HOST_RE.match(name) or _is_ipv6(name)):
            raise UserError(f"{where}: {name!r} is not a host name or address")
        if name in seen:
            raise UserError(f"{where}: host {name!r} is listed twice")
        seen.add(name)
        hosts.append(Host(name, slots, where))
    if not hosts:
        raise UserError(f"{origin}: no hosts listed")
    return hosts


def _is_ipv6(name: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(name), ipaddress.IPv6Address)
    except ValueError:
        return False


def _slots(value: str, where: str, raw: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{where}: slots must be a positive integer, got {raw.strip()!r}")
    return int(value)


def parse_hostfile(path: str | Path) -> list[Host]:
    if str(path) == "-":
        return parse_hostfile_text(hostfile_text(sys.stdin.buffer.read(MAX_HOSTFILE_BYTES + 1), "<stdin>"), "<stdin>")
    file = Path(path)
    if not file.exists():
        raise UserError(f"--hostfile {path}: no such file")
    try:
        data = read_hostfile_bytes(file, pipes=True)
    except OSError as error:
        raise UserError(f"--hostfile {path}: cannot read it: {error.strerror or error}") from None
    return parse_hostfile_text(hostfile_text(data, str(path)), str(path))


MAX_HOSTFILE_BYTES = 1 << 20  # 1 MiB: tens of thousands of hosts


def read_hostfile_bytes(path: Path, pipes: bool = False) -> bytes:
    """At most MAX_HOSTFILE_BYTES + 1 bytes of a regular file, enough for hostfile_text to refuse a bigger one:
    a many-GB file neither hangs the reader nor fills its memory. `pipes` (a command line's --hostfile): a pipe or
    device is read the same bounded way, so `--hostfile <(scontrol show hostnames | sed 's/$/ slots=8/')`
    (/dev/fd/63) works, and a FIFO nobody writes to reads as empty (no hosts) instead of hanging
    (ddlc.bounded_read); without it (a timer's unattended read) only a regular file is read. OSError as open()
    raises it."""
    from ddlc.bounded_read import read_at_most

    if path.is_dir():
        raise UserError(f"--hostfile {path}: a directory, not a hostfile (one 'host slots=N' per line)")
    if path.is_socket() or (path.exists() and not path.is_file() and not pipes):
        raise UserError(f"--hostfile {path}: not a regular file")
    return read_at_most(path, MAX_HOSTFILE_BYTES + 1)


def hostfile_text(data: bytes, origin: str) -> str:
    """A hostfile is short UTF-8 text: say so in one line for anything else (a binary, an image, a tarball)."""
    if len(data) > MAX_HOSTFILE_BYTES:
        raise UserError(f"--hostfile {origin}: over {MAX_HOSTFILE_BYTES:,} bytes is not a hostfile "
                        "(one 'host slots=N' per line)")
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
