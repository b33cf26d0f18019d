"""Hostfile and Slurm host parsing (ddlc.launch.hostfile), in-process and at its boundaries: the size cap, the
offsets a bad file is reported at, IPv6 names, host-name edges, which Slurm variable wins, --hostfile over Slurm.
Fast on purpose: `make mutate` reruns these for every mutant of the module."""

from __future__ import annotations

import io
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ddlc.errors import UserError
from ddlc.launch.hostfile import (MAX_HOSTFILE_BYTES, Host, hostfile_text, parse_hostfile, parse_hostfile_text,
                                  resolve_hosts, slurm_hosts)


def _pairs(hosts: list[Host]) -> list[tuple[str, int]]:
    return [(h.name, h.slots) for h in hosts]


def test_line_numbers_count_comments_and_blank_lines():
    hosts = parse_hostfile_text("\n# header\n\na slots=2  # two\n   \nb\n", "hf")
    assert _pairs(hosts) == [("a", 2), ("b", 1)]
    assert [h.origin for h in hosts] == ["hf:4", "hf:6"]


@pytest.mark.parametrize("text, expected", [
    ("fe80::1\n", [("fe80::1", 1)]),                    # an IPv6 address is a name, not host:N
    ("fe80::1 slots=3\n", [("fe80::1", 3)]),
    ("n:12\n", [("n", 12)]),
    ("x\n", [("x", 1)]),                                # one character is a host name
    ("a.b_c-9 slots=1\n", [("a.b_c-9", 1)]),
    ("node slots=10\n", [("node", 10)]),
])
def test_accepted_forms(text, expected):
    assert _pairs(parse_hostfile_text(text, "hf")) == expected


@pytest.mark.parametrize("text, message", [
    ("a:\n", "hf:1: slots must be a positive integer, got 'a:'"),
    ("a slots=\n", "hf:1: slots must be a positive integer"),
    ("a slots=1.5\n", "hf:1: slots must be a positive integer"),
    ("a slots=2 b\n", "hf:1: expected 'host slots=N', 'host:N' or 'host', got 'a slots=2 b'"),
    ("a:2 slots=2\n", "hf:1: ':2' is not a host name|hf:1: 'a:2' is not a host name"),
    ("-a\n", "hf:1: '-a' is not a host name or address"),
    ("a-\n", "hf:1: 'a-' is not a host name or address"),
    ("ok\n\nok\n", "hf:3: host 'ok' is listed twice"),
    ("a slots=2 # one # two\nb slots=x # c\n", "hf:2: slots must be a positive integer, got 'b slots=x # c'"),
    ("a:b:3\n", "hf:1: slots must be a positive integer, got 'a:b:3'"),  # host:N splits at the first colon
    ("\n\n", "hf: no hosts listed"),
])
def test_refused_forms_name_the_line(text, message):
    with pytest.raises(UserError, match=message):
        parse_hostfile_text(text, "hf")


def test_local_names_are_this_machine():
    assert Host("localhost", 1, "x").is_local and Host("127.0.0.1", 1, "x").is_local
    assert not Host("node-1", 1, "x").is_local


def test_the_size_cap_is_inclusive():
    line = b"h slots=1\n"
    exactly = line + b"#" * (MAX_HOSTFILE_BYTES - len(line))
    assert len(exactly) == MAX_HOSTFILE_BYTES == 1 << 20
    assert hostfile_text(exactly, "hf").startswith("h slots=1")
    # The reader stops after the cap + 1 byte (read_hostfile_bytes): the size past the cap is not known.
    with pytest.raises(UserError, match=r"^--hostfile hf: over 1,048,576 bytes is not a hostfile"):
        hostfile_text(exactly + b"#", "hf")


@pytest.mark.parametrize("data, message", [
    (b"\0a\n", r"^--hostfile hf: binary data \(NUL byte at offset 0\), expected text lines 'host slots=N'$"),
    (b"abc\n\0\0", r"^--hostfile hf: binary data \(NUL byte at offset 4\)"),  # the first NUL
    (b"\xffa\n", r"^--hostfile hf: not UTF-8 text \(byte offset 0\), expected lines 'host slots=N'$"),
    (b"ab\xc3(\n", r"^--hostfile hf: not UTF-8 text \(byte offset 2\)"),
])
def test_bad_bytes_are_reported_at_their_offset(data, message):
    with pytest.raises(UserError, match=message):
        hostfile_text(data, "hf")


def test_empty_and_utf8_text_pass_through():
    assert hostfile_text(b"", "hf") == ""
    assert hostfile_text("n\u00e9ud slots=1\n".encode(), "hf") == "n\u00e9ud slots=1\n"


def test_parse_hostfile_reads_a_file_and_names_it(tmp_path):
    path = tmp_path / "hosts"
    path.write_bytes(b"a slots=2\nb:3\n")
    hosts = parse_hostfile(path)
    assert _pairs(hosts) == [("a", 2), ("b", 3)]
    assert hosts[1].origin == f"{path}:2"
    path.write_bytes(b"a slots=0\n")
    with pytest.raises(UserError, match=rf"^{path}:1: slots must be"):
        parse_hostfile(str(path))
    path.write_bytes(b"a\0")
    with pytest.raises(UserError, match=rf"^--hostfile {path}: binary data"):
        parse_hostfile(str(path))


def test_a_file_that_cannot_be_read_is_one_line():
    """/proc/self/mem is a regular file whose read fails (EIO), also for root, who may read any mode bits."""
    with pytest.raises(UserError, match=r"^--hostfile /proc/self/mem: cannot read it: Input/output error$"):
        parse_hostfile("/proc/self/mem")


@pytest.mark.parametrize("make, said", [("missing", "no such file"),
                                        ("directory", "a directory, not a hostfile"),
                                        ("socket", "not a regular file")])
def test_parse_hostfile_without_a_file(tmp_path, make, said):
    path = tmp_path / "hosts"
    if make == "directory":
        path.mkdir()
    if make == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
    with pytest.raises(UserError, match=rf"^--hostfile {path}: {said}"):
        parse_hostfile(path)


def test_process_substitution_is_read_like_a_file(tmp_path):
    """`ddlc launch --hostfile <(…)` hands over /dev/fd/N, a pipe: it was refused as "no such file"."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / 'src')!r}); "
              "from ddlc.launch.hostfile import parse_hostfile; "
              "print([(h.name, h.slots) for h in parse_hostfile(sys.argv[1])])")
    out = subprocess.run(["bash", "-c", f"{sys.executable} -c {shlex.quote(script)} <(printf 'a slots=2\\nb\\n')"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[('a', 2), ('b', 1)]", out.stderr


def test_a_fifo_nobody_writes_to_is_no_hosts_not_a_hang(tmp_path):
    """`mkfifo p; ddlc launch --hostfile p` waited forever for a writer (ddlc.bounded_read opens without blocking)."""
    import os
    import threading

    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def parse() -> None:
        try:
            parse_hostfile(fifo)
        except UserError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=parse, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # free the hung reader before failing
        with open(fifo, "w"):
            pass
        reader.join(timeout=30)
        pytest.fail("parse_hostfile waited on a FIFO nobody writes to")
    assert outcome == [f"{fifo}: no hosts listed"]


def test_parse_hostfile_dash_reads_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a slots=2\n\0")))
    with pytest.raises(UserError, match=r"^--hostfile <stdin>: binary data \(NUL byte at offset 10\)"):
        parse_hostfile("-")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a slots=2\nb\n")))
    hosts = parse_hostfile("-")
    assert _pairs(hosts) == [("a", 2), ("b", 1)] and hosts[0].origin == "<stdin>:1"


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_JOB_NODELIST": ""}, None),
    ({"SLURM_NODELIST": "n[1-2]"}, [("n1", 1), ("n2", 1)]),
    ({"SLURM_JOB_NODELIST": "a", "SLURM_NODELIST": "b"}, [("a", 1)]),
    ({"SLURM_JOB_NODELIST": "a", "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_GPUS_ON_NODE": "8"}, [("a", 4)]),
    ({"SLURM_JOB_NODELIST": "a", "SLURM_GPUS_ON_NODE": "8"}, [("a", 8)]),
    ({"SLURM_JOB_NODELIST": "a", "SLURM_NTASKS_PER_NODE": "x"}, [("a", 1)]),
])
def test_slurm_hosts(env, expected):
    hosts = slurm_hosts(env)
    assert (None if hosts is None else _pairs(hosts)) == expected
    if hosts:
        assert hosts[0].origin == "SLURM_JOB_NODELIST"


def test_resolve_hosts_prefers_the_hostfile_then_slurm(tmp_path, monkeypatch):
    path = tmp_path / "hosts"
    path.write_text("f slots=2\n")
    slurm = {"SLURM_JOB_NODELIST": "s"}
    assert _pairs(resolve_hosts(str(path), slurm)) == [("f", 2)]
    assert _pairs(resolve_hosts(None, slurm)) == [("s", 1)]
    monkeypatch.setenv("SLURM_JOB_NODELIST", "e[1-2]")
    assert _pairs(resolve_hosts(None)) == [("e1", 1), ("e2", 1)]
    with pytest.raises(UserError, match=r"^no hosts: pass --hostfile FILE"):
        resolve_hosts(None, {})


def test_a_hostfile_on_stdin_that_never_ends_is_refused():
    """`ddlc launch --hostfile - < /dev/zero` read stdin until memory ran out (read_hostfile_bytes' bound)."""
    import resource
    import subprocess
    import sys

    with open("/dev/zero", "rb") as zero:
        proc = subprocess.run([sys.executable, "-c", "from ddlc.launch.hostfile import parse_hostfile\nparse_hostfile('-')"],
                              stdin=zero, capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
    assert "over 1,048,576 bytes is not a hostfile" in proc.stderr, proc.stderr[-1500:]
