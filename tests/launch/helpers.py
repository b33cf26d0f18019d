"""Shared by the launch tests: run `ddlc launch` on the test hosts and compare what each rank trained."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from tests.launch.hosts import Hosts
from tests.support import CONFIG, FAST, PYTHON, REPO, child_env

WORKER = REPO / "tests" / "launch" / "params_worker.py"
DDLC = [PYTHON, "-m", "ddlc.cli.main"]


# -- real hosts -------------------------------------------------------------------------------------------------
def launch_on(hosts: Hosts, engine: str, script_args: list[str], *extra: str, timeout: float = 240,
              wait: bool = True, hostfile=None):
    hostfile = hostfile or hosts.hostfile()
    argv = hosts.in_head([*DDLC, "launch", "--engine", engine, "--hostfile", str(hostfile),
                          *hosts.ssh_options(), "--env-profile", "none", "--env", f"GLOO_SOCKET_IFNAME={hosts.nic}",
                          *extra, str(WORKER), "--", *script_args])
    env = child_env(PYTHONPATH=str(REPO / "src"), TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    if not wait:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_identical_ranks(out: Path, world: int) -> None:
    states = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    assert states[0], "no parameters written"
    for rank, state in enumerate(states[1:], start=1):
        assert state.keys() == states[0].keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, states[0][name]), f"rank {rank} differs from rank 0 in {name}"


def initial_parameters() -> dict:
    """The weights every rank starts from under job_args (FAST, config.yaml's seed), built here the same way."""
    from ddlc.config import load_config
    from ddlc.runtime.data import load_corpus
    from ddlc.runtime.model import GPT
    from ddlc.runtime.trainer import seed_everything

    cfg = load_config(CONFIG, FAST)
    cfg.model.vocab_size = load_corpus(cfg.data, cfg.model.block_size, None, cfg.training.seed).vocab_size
    seed_everything(cfg.training.seed)
    return {name: tensor.detach().clone() for name, tensor in GPT(cfg.model).state_dict().items()}


def assert_trained(run_dir: Path, out: Path, steps: int, world: int) -> None:
    """The job really trained (identical ranks alone also hold after zero steps, or with no update applied): every
    step once, on `world` ranks, and every parameter moved away from the weights it started from."""
    import json

    from ddlc.runtime.metrics import read_metrics

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == steps and summary["world_size"] == world, summary
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, steps + 1))
    trained, initial = torch.load(out / "rank0.pt"), initial_parameters()
    assert trained.keys() == initial.keys()
    assert not any(torch.equal(trained[name], initial[name]) for name in initial if trained[name].numel() > 0), \
        "parameters still have their initial values"


def job_args(out: Path, tmp: Path, name: str, steps: int, *more: str) -> list[str]:
    return [str(out), str(CONFIG), *FAST, f"training.max_steps={steps}", f"monitoring.run_dir={tmp}",
            f"monitoring.run_name={name}", "monitoring.progress=plain", "checkpoint.interval_steps=1000", *more]
