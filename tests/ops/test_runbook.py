"""Every command in a `bash runnable` block of docs/runbook.md is a valid invocation of a real CLI.

- `ddlc ...`: resolves to a real subcommand and its arguments parse (options exist, values have the right
  type), and `ddlc <subcommand> --help` succeeds as a process;
- `torchrun ...` / `python train.py ...`: torchrun's own parser accepts the launcher arguments, the script is
  `train.py` or `-m ddlc.train`, and its arguments and config overrides load into a valid config;
- `npx cdk VERB ...`: the environment exists in cdk.json and `npx cdk VERB --help` succeeds;
- `make TARGET` / `npm VERB`: the target exists (`make -n`), the verb exists (`npm VERB --help`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from tests.support import PYTHON, REPO

RUNBOOK = REPO / "docs" / "runbook.md"
CDK = REPO / "node_modules" / ".bin" / "cdk"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Example values for the placeholders the runbook uses (on nodes they come from /etc/ddlc/*.env).
PLACEHOLDERS = {
    "DDLC_CHECKPOINT_BUCKET": "ddlc-prod-checkpointsbucket-example",
    "DDLC_NODE_COUNT": "4",
    "DDLC_GPUS_PER_NODE": "8",
    "MASTER_ADDR": "10.42.1.10",
    "NODE_RANK": "0",
    "JOB_ID": "1234",
}


def runnable_commands(markdown: str) -> list[str]:
    commands = []
    for block in re.findall(r"^```bash runnable\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return commands


def expand(command: str) -> list[str]:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in PLACEHOLDERS:
            pytest.fail(f"runbook uses ${name}; add an example value to PLACEHOLDERS in {__file__}")
        return PLACEHOLDERS[name]

    argv = shlex.split(re.sub(r"\$\{(\w+)\}|\$(\w+)", value, command), comments=True)
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value prefixes
        argv.pop(0)
    return argv


COMMANDS = runnable_commands(RUNBOOK.read_text())
NODE_SIDE_CONFIGS = {"gpt.yaml"}  # the runbook's own config on the cluster's /fsx, not a file of this repository


def test_runbook_has_runnable_commands_for_every_stage():
    programs = {expand(c)[0] + (" " + expand(c)[1] if expand(c)[0] in ("ddlc", "npx") else "") for c in COMMANDS}
    for needed in ("ddlc cluster", "ddlc doctor", "ddlc checkpoints", "ddlc monitor", "ddlc submit", "torchrun",
                   "npx cdk"):
        assert needed in programs, f"no runnable `{needed}` command in the runbook"
    # "Launch" leads with `ddlc submit` (Slurm); the ssh launchers follow it.
    launch = re.search(r"^## 4\. Launch$(.*?)^## ", RUNBOOK.read_text(), re.M | re.S).group(1)
    assert re.findall(r"^### (.*)$", launch, re.M)[0].startswith("`ddlc submit`")
    # The multi-node engines are documented in launch.md; the runbook points there with each launcher's command.
    section = re.search(r"^### `ddlc launch`, DeepSpeed, Horovod$(.*?)^## ", RUNBOOK.read_text(), re.M | re.S)
    assert section and "(launch.md)" in section.group(1)
    for launcher in ("ddlc launch --engine", "deepspeed --hostfile", "horovodrun"):
        assert launcher in section.group(1), launcher


# -- ddlc --------------------------------------------------------------------------------------------------

def resolve_ddlc(args: list[str]) -> list[str]:
    """Walk the real command tree to the subcommand and parse the rest like the CLI would; returns its path.

    Duck-typed: typer builds its commands on click or on its vendored copy of it, depending on the version.
    """
    import typer

    from ddlc.cli.main import app

    command = typer.main.get_command(app)
    path: list[str] = []
    while hasattr(command, "list_commands"):  # a group
        if not args and getattr(command, "invoke_without_command", False):
            break  # a group that is a command of its own too (`ddlc jobs`)
        assert args, f"`ddlc {' '.join(path)}` needs a subcommand"
        name, args = args[0], args[1:]
        sub = command.get_command(command.context_class(command), name)
        assert sub is not None, f"`ddlc {' '.join(path + [name])}`: no such command"
        path.append(name)
        command = sub
    try:
        command.make_context(" ".join(["ddlc", *path]), list(args))
    except Exception as error:
        if not hasattr(error, "format_message"):  # not a usage error: a bug worth its traceback
            raise
        pytest.fail(f"`ddlc {' '.join(path)}` rejects the runbook's arguments {args}: {error.format_message()}")
    return path


@lru_cache(maxsize=None)
def ddlc_help(path: tuple[str, ...]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([PYTHON, "-m", "ddlc", *path, "--help"], capture_output=True, text=True, env=env,
                          timeout=60, cwd=REPO)


# -- training launchers ------------------------------------------------------------------------------------

def check_train_args(script_args: list[str]) -> None:
    from ddlc.config.loader import load_config
    from ddlc.runtime.entry import build_parser

    try:
        parsed = build_parser().parse_args(script_args)
    except SystemExit:
        pytest.fail(f"train.py rejects {script_args}")
    bad = [o for o in parsed.overrides if "=" not in o]
    assert not bad, f"not a dotted override: {bad}"
    config = parsed.config
    if config in NODE_SIDE_CONFIGS:
        config = None  # the user's file on the node (/fsx/gpt.yaml): validate the overrides against the defaults
    elif config is not None and not Path(config).is_absolute():
        assert (REPO / config).is_file(), f"--config {config}: no such file in the repository"
        config = str(REPO / config)
    elif config is not None:
        config = None  # a node-side path such as /fsx/gpt.yaml: validate the overrides against the defaults
    load_config(config, parsed.overrides)  # unknown keys or bad values raise UserError


def check_torchrun(args: list[str]) -> None:
    from torch.distributed.run import get_args_parser

    try:
        parsed = get_args_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"torchrun rejects {args}")
    if parsed.module:
        assert parsed.training_script == "ddlc.train", parsed.training_script
    else:
        assert parsed.training_script == "train.py" and (REPO / "train.py").is_file()
    check_train_args(parsed.training_script_args)


def check_python(args: list[str]) -> None:
    if args[:2] == ["-m", "ddlc.train"]:
        check_train_args(args[2:])
    else:
        assert args[0] == "train.py", f"python {args[0]}: only train.py / -m ddlc.train are documented"
        check_train_args(args[1:])


def test_train_py_help_runs():
    proc = subprocess.run([PYTHON, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0 and "dotted config overrides" in proc.stdout


# -- cdk, make, npm ----------------------------------------------------------------------------------------

def check_cdk(args: list[str]) -> None:
    verb, rest = args[0], args[1:]
    environments = json.loads((REPO / "cdk.json").read_text())["context"]["environments"]
    for index, arg in enumerate(rest):
        value = rest[index + 1] if arg == "--context" and index + 1 < len(rest) else None
        if value and value.startswith("environment="):
            assert value.split("=", 1)[1] in environments, f"cdk.json has no environment {value}"
    if not CDK.exists():
        if IN_CI:
            pytest.fail("CDK CLI missing in CI (make node_modules)")
        pytest.skip("CDK CLI not installed (run `make node_modules`)")
    proc = cdk_help(verb)
    # An unknown verb also exits 0 (with the general help), so the usage line must name the verb.
    assert proc.returncode == 0 and proc.stdout.startswith(f"cdk {verb} "), proc.stdout[:500] + proc.stderr[-2000:]


@lru_cache(maxsize=None)
def cdk_help(verb: str) -> subprocess.CompletedProcess:
    return subprocess.run(["npx", "cdk", verb, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "CDK_DISABLE_CLI_TELEMETRY": "true"})


def check_make(args: list[str]) -> None:
    proc = subprocess.run(["make", "-n", *args], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, f"make {args}: {proc.stderr.strip()}"


def check_npm(args: list[str]) -> None:
    assert (REPO / "package-lock.json").is_file()
    proc = subprocess.run(["npm", args[0], "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and f"npm {args[0]}" in proc.stdout, proc.stderr[-1000:]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
def test_runnable_command_is_valid(command):
    argv = expand(command)
    program, args = argv[0], argv[1:]
    if program == "ddlc":
        path = resolve_ddlc(args)
        if path in (["submit"], ["launch"]) and "--" in args:  # the training script's own arguments, after --
            script = args[args.index("--") - 1]
            assert script == "train.py" and (REPO / script).is_file(), script
            check_train_args(args[args.index("--") + 1:])
        proc = ddlc_help(tuple(path))
        usage = re.search(r"Usage: .*\bddlc (.*?) \[OPTIONS\]", proc.stdout)
        assert proc.returncode == 0 and usage and usage.group(1) == " ".join(path), proc.stdout + proc.stderr
    elif program == "torchrun":
        check_torchrun(args)
    elif program in ("python", "python3"):
        check_python(args)
    elif program == "npx":
        assert args[0] == "cdk", f"npx {args[0]}: only the CDK CLI is documented"
        check_cdk(args[1:])
    elif program == "make":
        check_make(args)
    elif program == "npm":
        check_npm(args)
    else:
        pytest.fail(f"`{program}` is not a CLI the runbook test knows how to validate; do not mark it runnable")


def test_the_validator_catches_mistakes():
    """The checks above fail on a wrong subcommand, option, override or environment (they are not vacuous)."""
    for bad in (["cluster", "teardown"], ["doctor", "--no-such-option"], ["doctor", "--master-port", "http"],
                ["checkpoints", "prune", "URI", "--keep-last", "0"]):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            resolve_ddlc(bad)
    with pytest.raises(Exception):
        check_torchrun(["--nproc_per_node=2", "train.py", "training.no_such_key=1"])
    with pytest.raises(pytest.fail.Exception):
        check_torchrun(["--no-such-flag", "train.py"])
    with pytest.raises(AssertionError):
        check_cdk(["deploy", "--context", "environment=qa"])
    with pytest.raises(AssertionError):
        check_make(["no-such-target"])
    if CDK.exists():
        with pytest.raises(AssertionError):
            check_cdk(["teardown", "--context", "environment=prod"])


# -- commands that run on a CPU machine, run as written ----------------------------------------------------
# Elsewhere: the two-node rehearsal pair (tests/ops/test_runbook_rehearsal.py), the `--max_restarts` command and
# the checkpoint list/show/verify/export/prune commands on its checkpoints (tests/launch/test_restarts.py).

def _run_as_written(command: str, cwd: Path) -> subprocess.CompletedProcess:
    for name in ("train.py", "config.yaml"):  # the repository root, where the runbook's commands run
        (cwd / name).write_bytes((REPO / name).read_bytes())
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    for name in ("RANK", "WORLD_SIZE", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"):
        env.pop(name, None)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


LOCAL = [c for c in COMMANDS if c.startswith(("torchrun --standalone", "ddlc train", "ddlc monitor rules"))]


@pytest.mark.slow
@pytest.mark.parametrize("command", LOCAL, ids=[c[:60] for c in LOCAL])
def test_local_command_runs_as_written(tmp_path, command):
    assert len(LOCAL) == 3, LOCAL
    proc = _run_as_written(command, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    if command.startswith("torchrun"):
        [summary] = (tmp_path / "runs").glob("*/summary.json")
        data = json.loads(summary.read_text())
        assert data["steps"] == 50 and data["world_size"] == 2 and data["final_loss"] < data["first_loss"]
    elif "--dry-run" in command:
        assert "ddlc.launch.torchrun --standalone --nproc_per_node=2" in proc.stdout
        assert not (tmp_path / "runs").exists()
    else:
        assert (tmp_path / "ddlc-alerts.yml").stat().st_size > 0
