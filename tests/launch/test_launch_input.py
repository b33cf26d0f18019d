"""`ddlc launch` refuses bad input on the launching host, in one line, before it ssh'es anywhere."""

import pytest

from tests.support import CONFIG, PYTHON, REPO, run

DDLC = [PYTHON, "-m", "ddlc"]
# Nothing resolves this name: a launch that got as far as ssh would fail with "unreachable over ssh" instead.
HOSTS = "node-a.invalid slots=2\nnode-b.invalid slots=2\n"


def _launch(tmp_path, *args, hostfile_bytes=HOSTS.encode()):
    hostfile = tmp_path / "hosts"
    hostfile.write_bytes(hostfile_bytes)
    return run([*DDLC, "launch", "--hostfile", str(hostfile), *args], cwd=REPO, timeout=120)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    "data, expected",
    [
        (open("/bin/true", "rb").read(4096), "binary data (NUL byte at offset"),
        (b"\xff\xfenode-a slots=2\n", "not UTF-8 text (byte offset 0)"),
        (b"node-a.invalid slots=2\nnode-b.invalid slots=0\n", ":2: slots must be a positive integer, got "
                                                            "'node-b.invalid slots=0'"),
    ],
)
def test_unusable_hostfile_is_one_line(tmp_path, data, expected):
    assert expected in _one_error_line(_launch(tmp_path, "train.py", hostfile_bytes=data))


@pytest.mark.parametrize(
    "script_args, expected",
    [
        # world size 4 (2 hosts x 2 slots): config.yaml's global batch 16 does not divide over micro batch 8
        (["--config", str(CONFIG)], "training.global_batch_size=16 is not a multiple of micro_batch_size (8) x world size (4)"),
        (["--config", str(CONFIG), "training.max_steps=true"], "training.max_steps: Input should be a valid integer"),
        (["--config", "missing.yaml"], "config file not found"),
        (["--config", str(CONFIG), "--bogus"], "train.py arguments: train.py: error: unrecognized arguments: --bogus"),
    ],
)
def test_bad_training_config_is_refused_before_ssh(tmp_path, script_args, expected):
    line = _one_error_line(_launch(tmp_path, "train.py", "--", *script_args))
    assert expected in line and "ssh" not in line


def test_a_good_config_goes_on_to_the_hosts(tmp_path):
    proc = _launch(tmp_path, "train.py", "--", "--config", str(CONFIG), "training.micro_batch_size=4")
    assert proc.returncode == 2 and "unreachable over ssh" in proc.stderr  # got past the config check


def test_other_scripts_are_not_second_guessed(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text("print('my own training script')\n")
    proc = _launch(tmp_path, str(script), "--", "--config", "whatever-format.toml")
    assert proc.returncode == 2 and "unreachable over ssh" in proc.stderr


@pytest.mark.parametrize("command", [["doctor", "--hostfile"], ["monitor", "prometheus-config", "--hostfile"]])
def test_binary_hostfile_elsewhere_is_one_line_too(tmp_path, command):
    hostfile = tmp_path / "hosts"
    hostfile.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00" * 10)
    proc = run([*DDLC, *command, str(hostfile)], cwd=tmp_path, timeout=120)
    assert "binary data (NUL byte at offset 7)" in _one_error_line(proc)


def test_an_elastic_job_must_fit_every_node_count(tmp_path):
    """--min-nodes 1 of 2 hosts x 2 slots: the batch must divide over 2 workers and over 4."""
    batch = ["training.micro_batch_size=4", "training.global_batch_size=8"]  # 8 = 4 x 2, but not 4 x 4
    line = _one_error_line(_launch(tmp_path, "--min-nodes", "1", "--dry-run", "train.py", "--",
                                   "--config", str(CONFIG), *batch))
    assert "micro_batch_size (4) x world size (4) = 16" in line
    ok = _launch(tmp_path, "--min-nodes", "1", "--dry-run", "train.py", "--", "--config", str(CONFIG),
                 "training.micro_batch_size=2", "training.global_batch_size=8")
    assert ok.returncode == 0, ok.stderr


def test_hostfile_dash_reads_the_hosts_from_stdin(tmp_path):
    import subprocess

    from tests.support import child_env

    script = tmp_path / "mine.py"
    script.write_text("print('my own training script')\n")
    proc = subprocess.run([*DDLC, "launch", "--hostfile", "-", "--dry-run", str(script)], cwd=REPO, env=child_env(),
                          input="stdin-a.invalid slots=3\nstdin-b.invalid:3\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("# engine=torchrun nodes=2"), lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["[stdin-a.invalid]", "[stdin-b.invalid]"]
    assert all("--nproc_per_node=3" in line for line in lines[1:])
    bad = subprocess.run([*DDLC, "launch", "--hostfile", "-", "--dry-run", str(script)], cwd=REPO, env=child_env(),
                         input="stdin-a.invalid slots=0\n", capture_output=True, text=True, timeout=120)
    assert "<stdin>:1: slots must be a positive integer" in _one_error_line(bad)


def test_no_preflight_goes_straight_to_the_job(tmp_path):
    """With preflight an unreachable host is exit 2 before anything starts; --no-preflight skips that probe, so the
    job itself is started (and its ssh fails)."""
    script = tmp_path / "mine.py"
    script.write_text("print('my own training script')\n")
    checked = _launch(tmp_path, str(script))
    assert "unreachable over ssh" in _one_error_line(checked)
    unchecked = _launch(tmp_path, "--no-preflight", str(script))
    assert unchecked.returncode not in (0, 2), unchecked.stderr[-3000:]
    assert "unreachable over ssh" not in unchecked.stdout + unchecked.stderr
    assert "Could not resolve hostname node-a.invalid" in unchecked.stdout + unchecked.stderr


@pytest.mark.parametrize("engine, refusal", [
    ("deepspeed", "0 healthy hosts, fewer than the 1 hosts a deepspeed job needs; not starting"),
    ("horovod", "0 healthy hosts, fewer than the 1 hosts a horovod job needs; not starting"),
    ("torchrun", "0 healthy hosts, fewer than --min-nodes 1; not starting"),
])
def test_a_launch_without_enough_healthy_hosts_refuses_to_start(tmp_path, engine, refusal):
    """docs/launch.md: a host failing `ddlc health` is left out with its reason; DeepSpeed and Horovod then refuse
    to start (exit 1), as does torchrun below --min-nodes. Here the one host, this machine, fails the disk check it is
    given. (Horovod on one local host used to skip the check and start the job.)"""
    marker = tmp_path / "started"
    script = tmp_path / "mine.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('started')\n")
    proc = _launch(tmp_path, "--engine", engine, "--health-arg=--min-free-gb=999999999", str(script),
                   hostfile_bytes=b"localhost slots=1\n")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "ddlc launch: leaving out host localhost: health check failed: disk: " in output, output[-3000:]
    assert f"ddlc launch: {refusal}" in output, output[-3000:]
    assert "Traceback" not in output and not marker.exists()
