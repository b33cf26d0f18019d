"""benchmarks/checkpoint.py measures ddlc against its peers in the same run: vanilla DCP (dcp.save, dcp.async_save,
dcp.load with FileSystemWriter/Reader), torch.save/torch.load and raw I/O, and prints one PASS/MISS line per issue
#18 target. One tiny round in CPU mode: every row carries a number and every target line is there (no timing
assertions: the verdicts depend on the machine)."""

from __future__ import annotations

import re

from tests.support import PYTHON, REPO, run

PEER_ROWS = [
    "ddlc save: loop held (save() + staging wait)",
    "ddlc save: total until committed",
    "dcp.save, FileSystemWriter (blocking = total)",
    "dcp.async_save: loop held (in the call)",
    "dcp.async_save: total until done",
    "torch.save on rank 0 (blocking = total)",
    "raw write+fsync, rank 0 alone",
    "ddlc load: resume (verify + DCP load)",
    "dcp.load, FileSystemReader (no verify)",
    "torch.load on every rank + load_state_dict",
    "raw read, every rank reads all bytes",
]
TARGETS = [
    "ddlc blocking <= dcp.async_save blocking",
    "ddlc save total <= 1.2 x dcp.save",
    "ddlc verified load <= 1.1 x dcp.load",
]


def test_checkpoint_benchmark_prints_peer_rows_and_targets():
    result = run([PYTHON, str(REPO / "benchmarks" / "checkpoint.py"), "--nproc", "1", "--rounds", "1",
                  "--layers", "1", "--width", "32", "--vocab", "256"], cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for row in PEER_ROWS:
        match = re.search(re.escape(row) + r"\s+(\d+\.\d+)\s+(\d+)\s*$", out, re.MULTILINE)
        assert match, f"no numbers on the row {row!r}:\n{out}"  # (a tiny state can round to 0.000 s)
    for target in TARGETS:
        match = re.search(r"^target (PASS|MISS): " + re.escape(target) + r": ratio (\d+\.\d+) .*limit (\d\.\d)$", out,
                          re.MULTILINE)
        assert match, f"no target line for {target!r}:\n{out}"
    cpu = re.search(r"^CPU seconds per phase.*: (.*)$", out, re.MULTILINE)
    assert cpu and {"ddlc_total", "dcp_save", "ddlc_load", "dcp_load"} <= {
        part.split()[0] for part in cpu.group(1).split(", ")}, out
