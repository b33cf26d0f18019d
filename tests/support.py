"""Helpers for tests: run real processes (python, torchrun, the ddlc CLI) the way a user would."""

from __future__ import annotations

import os
import socket
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TRAIN_PY = REPO / "train.py"
CONFIG = REPO / "config.yaml"

# Tiny settings that still learn: keeps each real multi-process run to a few seconds on 2 cores.
FAST = [
    "model.n_layer=1",
    "model.n_embd=64",
    "model.block_size=32",
    "data.synthetic_tokens=200000",
    "training.micro_batch_size=4",
    "training.global_batch_size=8",
    "training.log_interval=5",
    "optimizer.warmup_steps=5",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=child_env(**env), capture_output=True, text=True, timeout=timeout)


def torchrun(*args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", *args]


def stop_job(job: subprocess.Popen, timeout: float = 60) -> None:
    """End a background training job as a user would (SIGTERM: it checkpoints and exits), killing it only if it
    has not left within `timeout`."""
    job.send_signal(signal.SIGTERM)
    try:
        job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        job.communicate()


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"


class MotoServer:
    """A real AWS endpoint over HTTP on 127.0.0.1 (moto's server: S3, EC2, Auto Scaling, CloudFormation,
    CloudWatch, SSM...). Tests share one per session (the `moto` fixture of tests/conftest.py), so its state is
    global: each user keeps its data apart by name and never assumes an empty account."""

    def __init__(self):
        import time
        import urllib.request

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = Path(PYTHON).parent / "moto_server"
        self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> None:
        """A new, empty bucket. One that exists already is refused rather than reused: it would be another
        test's (moto in us-east-1 answers a second create of the same name with success, as AWS does)."""
        s3 = self.client("s3")
        if name in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            raise AssertionError(f"bucket {name!r} already exists on the shared moto server: another test uses it")
        s3.create_bucket(Bucket=name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
