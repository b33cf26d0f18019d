"""docs/runbook.md's two-node rehearsal, run as written at the world size it shows (2 torchrun "nodes" x 2
workers on this machine; only the master port is swapped for a free one), and the same pair with a config that
does not fit that world size: one line from rank 0, every worker exits 2, no collective is ever attempted."""

import re
import shlex
import shutil
import subprocess

from tests.support import CONFIG, PYTHON, REPO, TRAIN_PY, child_env, free_port

RUNBOOK = REPO / "docs" / "runbook.md"


def rehearsal_commands() -> list[str]:
    blocks = re.findall(r"^```bash runnable\n(.*?)^```", RUNBOOK.read_text(), re.MULTILINE | re.DOTALL)
    commands = [line for block in blocks for line in block.splitlines() if "--nnodes=2 --node_rank=" in line]
    assert len(commands) == 2, commands
    return commands


def run_pair(tmp_path, commands: list[str]) -> list[tuple[int, str, str]]:
    shutil.copy(TRAIN_PY, tmp_path / "train.py")
    shutil.copy(CONFIG, tmp_path / "config.yaml")
    port = str(free_port())
    procs = []
    for command in commands:
        argv = [a.replace("29500", port) if a.startswith("--master_port=") else a for a in shlex.split(command)]
        assert argv[0] == "torchrun"
        procs.append(subprocess.Popen([PYTHON, "-m", "torch.distributed.run", *argv[1:]], cwd=tmp_path,
                                      env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_two_node_rehearsal_runs_as_written(tmp_path):
    results = run_pair(tmp_path, rehearsal_commands())
    for code, out, err in results:
        assert code == 0, err[-4000:]
    assert "4 x cpu (gloo)" in results[0][1]
    summaries = list((tmp_path / "runs").glob("*/summary.json"))
    assert len(summaries) == 1 and '"steps": 50' in summaries[0].read_text()


def test_a_config_that_does_not_fit_the_world_size_fails_in_one_line(tmp_path):
    """config.yaml's micro batch 8 over 4 workers (the runbook's commands before #13): no gloo storm."""
    commands = [c.replace(" training.micro_batch_size=4", "") for c in rehearsal_commands()]
    results = run_pair(tmp_path, commands)
    stderr = "".join(err for _, _, err in results)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: training.global_batch_size=16 is not a multiple of micro_batch_size (8) x world size "
                      "(4) = 32; set training.global_batch_size to a multiple of 32 or training.micro_batch_size to "
                      "a divisor of 4"], stderr[-4000:]
    assert all(code != 0 for code, _, _ in results)
    assert "exitcode  : 2" in results[0][2]  # torchrun's table names the workers' code (it exits 1 itself)
    for noise in ("connectFullMesh", "[rank", "ProcessGroup", "Connection"):
        assert noise not in stderr, stderr[-4000:]
