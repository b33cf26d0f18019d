"""docs/configuration.md, `monitoring.progress: auto`: a progress bar when stdout is a terminal, plain step lines
otherwise (logs, pipes). A real pseudo-terminal, not a patched isatty."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from tests.support import child_env

SCRIPT = """
import sys
from pathlib import Path
from ddlc.runtime.metrics import MetricsLogger
logger = MetricsLogger(Path(sys.argv[1]), total_steps=4, progress=sys.argv[2], log_interval=2)
for step in range(1, 5):
    logger.log({"step": step, "loss": 1.0 / step, "lr": 0.1})
logger.close()
"""


def _output(tmp_path, mode: str, terminal: bool) -> str:
    argv = [sys.executable, "-c", SCRIPT, str(tmp_path / f"{mode}-{terminal}"), mode]
    if not terminal:
        return subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=120, check=True).stdout
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, env=child_env(TERM="xterm", COLUMNS="120"), stdout=follower, stderr=follower,
                            stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_auto_draws_a_bar_on_a_terminal_and_plain_lines_in_a_pipe(tmp_path):
    on_terminal = _output(tmp_path, "auto", terminal=True)
    assert "train" in on_terminal and "4/4" in on_terminal, on_terminal[-2000:]
    assert "step 1/4 |" not in on_terminal, on_terminal[-2000:]
    in_pipe = _output(tmp_path, "auto", terminal=False)
    assert [line.split(" |")[0] for line in in_pipe.splitlines()] == ["step 1/4", "step 2/4", "step 4/4"], in_pipe


def test_plain_is_plain_even_on_a_terminal(tmp_path):
    assert "step 1/4 |" in _output(tmp_path, "plain", terminal=True)
