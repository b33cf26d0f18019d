"""Per-step training metrics: a JSONL file per run, and a progress bar or plain log lines for people.

Usable on its own::

    logger = MetricsLogger(Path("runs/my-run"), total_steps=1000, enabled=ctx.is_main)
    logger.log({"step": 1, "loss": 3.2, ...})
    logger.close()
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ddlc.run_format import METRICS_FILE, validate_step

ProgressMode = Literal["auto", "bar", "plain"]


def format_step(record: Mapping[str, Any], total_steps: int) -> str:
    """`step 10/200 | loss 4.1234 | lr 3.00e-03 | gnorm 0.84 | 12.3 ms/step | 52,000 tok/s`."""
    parts = [f"step {record['step']}/{total_steps}", f"loss {record['loss']:.4f}"]
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    if record.get("grad_norm") is not None:
        parts.append(f"gnorm {record['grad_norm']:.3f}")
    if "step_time_s" in record:
        parts.append(f"{record['step_time_s'] * 1000:.1f} ms/step")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    if record.get("mfu") is not None:
        parts.append(f"MFU {record['mfu']:.1%}")
    return " | ".join(parts)


class MetricsLogger:
    """Writes one JSON object per step to `<run_dir>/metrics.jsonl` and shows progress (rank 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        enabled: bool = True,
        progress: ProgressMode = "auto",
        log_interval: int = 10,
        start_step: int = 0,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_interval = log_interval
        self._file = None
        self._progress: Optional[Progress] = None
        self._task = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        _drop_torn_tail(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        use_bar = progress == "bar" or (progress == "auto" and sys.stdout.isatty())
        if use_bar:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stdout),
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")
            self._progress.start()

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(_json_safe(record)) + "\n")  # validated: readers use the same model
        step = int(record["step"])
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=f"loss {record['loss']:.4f}")
        elif step % self.log_interval == 0 or step == self.total_steps or step == 1:
            print(format_step(record, self.total_steps), flush=True)
        if step % self.log_interval == 0:
            self._file.flush()  # readable by monitors while the run goes on

    def event(self, message: str) -> None:
        """A one-off line (resume, checkpoint, warnings) that does not break the progress bar."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message, flush=True)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _json_safe(record: Mapping[str, Any]) -> dict:
    """The record as metrics.jsonl holds it (ddlc.run_format.StepRecord): NaN/inf spelled as strings (JSON has
    none; the fact stays visible), `time` added when missing. A record the readers would reject raises here."""
    out = dict(record)
    out.setdefault("time", time.time())
    return validate_step(out)


def _drop_torn_tail(path: Path) -> None:
    """A writer killed mid-line (kill -9, node loss) leaves a line without its newline; a resumed run appending
    after it would glue two records into one malformed line. Cut the torn piece off: its step is logged again
    after the resume, from the checkpoint."""
    try:
        with path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep = 0
            position = size
            while position > 0:  # find the last newline, reading backwards in blocks
                start = max(position - 65536, 0)
                handle.seek(start)
                block = handle.read(position - start)
                index = block.rfind(b"\n")
                if index >= 0:
                    keep = start + index + 1
                    break
                position = start
            handle.truncate(keep)
    except FileNotFoundError:
        return


def read_metrics(run_dir: Path) -> list[dict]:
    """All step records of a run, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
