"""The run directory format, one definition for its writer and its readers.

    runtime (writer)                         runs/<run>/                    dashboards, reports (readers)
    MetricsLogger.log -> StepRecord    ->    metrics.jsonl (one per line)   -> ddlc.dashboards.runs
    Trainer.fit       -> RunSummary    ->    summary.json  (atomic)         -> ddlc.dashboards.runs
    Trainer.fit       -> config.Config ->    config.yaml   (atomic)         -> ddlc.dashboards.runs

Every record the writer puts in a file is validated with the model below first, and every reader validates what
it reads with the same model, so "malformed" means the same thing on both sides: a reader can name the file,
the line and the field, instead of failing somewhere downstream on a string where a number should be.

JSON has no NaN or infinity: the writer stores non-finite metrics as the strings "nan", "inf", "-inf" (a loss
that diverged is a fact worth keeping), and the models accept exactly those strings besides numbers.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt, TypeAdapter
from typing_extensions import Annotated, Required, TypedDict

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
RUN_FILES = (METRICS_FILE, SUMMARY_FILE, CONFIG_FILE)

NonFinite = Literal["nan", "inf", "-inf", "NaN", "Infinity", "-Infinity"]
# A metric value: a JSON number (not a boolean) or the writer's spelling of a non-finite one.
# strict float: JSON ints yes, booleans and "3.5" no; tried left to right (a number first: nearly every value)
# rather than pydantic's "smart" mode, which validates against every member: ~15% off parsing a big file
Metric = Annotated[Union[Annotated[float, Strict()], NonFinite], Field(union_mode="left_to_right")]
MAX_TIME = 2.0**33  # seconds since the epoch: year 2242; beyond it a timestamp is not a date any more
MAX_STEP = 2**62


class StepRecord(TypedDict, total=False):
    """One line of metrics.jsonl. `step`, `time` and `loss` always; the rest when the trainer measured them.
    Library users may log keys of their own (extra keys are kept; readers plot the numeric ones)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    step: Required[Annotated[StrictInt, Field(ge=0, le=MAX_STEP)]]
    time: Required[Annotated[float, Strict(), Field(ge=0, le=MAX_TIME)]]
    loss: Required[Optional[Metric]]
    lr: Optional[Metric]
    grad_norm: Optional[Metric]
    step_time_s: Optional[Metric]
    tokens_per_s: Optional[Metric]
    tokens_seen: Optional[Metric]
    epoch: Optional[Metric]
    val_loss: Optional[Metric]  # on evaluated steps only (data.val_fraction > 0)


STEP_RECORD = TypeAdapter(StepRecord)
STEP_RECORDS = TypeAdapter(list[StepRecord])  # a whole file at once (pydantic-core parses the JSON)


class RunSummary(BaseModel):
    """summary.json, written once when a run ends (ddlc.runtime.trainer.TrainResult, field for field)."""

    model_config = ConfigDict(extra="allow")  # fields a later ddlc adds do not make older readers fail

    run_name: str
    run_dir: str
    steps: Annotated[int, Field(ge=0, le=MAX_STEP)]
    start_step: Annotated[int, Field(ge=0, le=MAX_STEP)]
    first_loss: Optional[float]
    final_loss: Optional[float]
    tokens_per_second: Annotated[float, Field(ge=0)]
    wall_time_s: Annotated[float, Field(ge=0)]
    world_size: Annotated[int, Field(ge=1)]
    strategy: str
    checkpoint_uri: Optional[str] = None
    resumed_from: Optional[str] = None
    preempted: bool = False
    instance_type: Optional[str] = None
    node: Optional[str] = None
    num_nodes: Annotated[int, Field(ge=1, le=100_000)] = 1
    gpus: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    final_val_loss: Optional[float] = None
    extra: dict = Field(default_factory=dict)


def metric_value(value: Any) -> float:
    """A validated metric as a float (the non-finite strings become NaN/inf); anything else is NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and value in ("nan", "inf", "-inf", "NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return math.nan


def validate_step(record: Mapping[str, Any]) -> dict[str, Any]:
    """The writer's check before a line goes to metrics.jsonl: raises pydantic.ValidationError on a bad record.
    Non-finite floats are spelled as strings first (JSON cannot hold them)."""
    safe = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    STEP_RECORD.validate_python(safe)
    return safe


def write_temp(path: Path, text: str, mode: int = 0o644, durable: bool = False) -> str:
    """`text` in a new hidden file next to `path` (same file system: renaming it over `path` is atomic); its name.
    `durable`: the bytes are on disk before it returns. Nothing is left behind when writing fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600; run files are meant to be read by others
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def write_atomic(path: Path, text: str, mode: int = 0o644, durable: bool = False) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of one; `durable`: the
    bytes are on disk before the rename (a configuration a power loss must not leave empty)."""
    tmp = write_temp(path, text, mode, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> RunSummary:
    """Validate `summary` (a TrainResult as a dict) and write summary.json atomically."""
    import json

    model = RunSummary.model_validate(dict(summary))
    write_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(model.model_dump(), indent=2))
    return model
