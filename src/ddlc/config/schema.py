"""The typed configuration of a ddlc training job.

Every section forbids unknown keys, so a typo fails loudly instead of being ignored. Types are strict where a
lax conversion would hide a mistake: a boolean is not a number (`max_steps: true` is not 1), an integer field
takes no float or string (`1e23`, `2.5`), every float is finite (`.inf`, `.nan` are rejected), and each count has
an upper bound so that an absurd value fails here instead of hanging a worker.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator


def _not_a_bool(value):
    # pydantic's lax float accepts True as 1.0; YAML's `yes`/`true` in a number field is a mistake.
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


def _finite_number(value):
    """Before any bound is checked, so `.inf` is called what it is rather than "greater than 1e30"."""
    value = _not_a_bool(value)
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except (ValueError, OverflowError):
        number = None
    if number is not None and not math.isfinite(number):
        raise ValueError("Input should be a finite number")
    return value


Int = Annotated[int, Strict()]  # no bool, no float, no string
# Lax on purpose for strings: PyYAML reads `3e-4` (no dot) as a string, and users write it that way.
Float = Annotated[float, BeforeValidator(_finite_number), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
BIG = 10**9  # upper bound for step counts, sizes and intervals: beyond it a job would never finish anyway
PositiveInt = Annotated[Int, Field(gt=0, le=BIG)]
PositiveFloat = Annotated[Float, Field(gt=0)]
Beta = Annotated[Float, Field(ge=0.0, lt=1.0)]

class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """A decoder-only (GPT-style) transformer. Defaults are a CPU-sized demo model."""

    n_layer: PositiveInt = 2
    n_head: PositiveInt = 4
    n_embd: PositiveInt = 128
    block_size: PositiveInt = 64  # context length in tokens
    vocab_size: Optional[PositiveInt] = None  # None: taken from the dataset
    dropout: Float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: Bool = False
    # Embedding/head rows rounded up to a multiple of this (50257 -> 50304 at 64: tensor-core friendly shapes); the
    # padded ids are never inputs and their logits are cut off before the loss and any sampling. 1: no padding.
    pad_vocab_to: Int = Field(default=64, ge=1, le=65536)

    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the dataset) first")
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class DataConfig(Section):
    """Where tokens come from.

    synthetic: a seeded Markov-chain corpus with learnable structure (the demo default).
    text:      a UTF-8 text file (or directory of .txt files), byte-level tokens (vocab 256).
    tokens:    token shards: raw uint16 `.bin` files (nanoGPT layout) or `.npy` arrays; a file, dir or glob.
    """

    source: Literal["synthetic", "text", "tokens"] = "synthetic"
    path: Optional[str] = None
    synthetic_tokens: PositiveInt = 1_000_000
    synthetic_vocab: Int = Field(default=256, ge=2, le=65536)
    shuffle: Bool = True
    # Held out for validation: the last ceil(val_fraction x windows) windows of the corpus, never trained on
    # (the same on every rank and every launch). 0: no validation split.
    val_fraction: Float = Field(default=0.0, ge=0.0, le=0.5)

    @model_validator(mode="after")
    def _path_required(self) -> "DataConfig":
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class OptimizerConfig(Section):
    """AdamW with linear warmup followed by cosine (or linear/constant) decay to min_lr_ratio * lr."""

    name: Literal["adamw"] = "adamw"
    lr: PositiveFloat = Field(default=3e-3, le=1.0e30)  # beyond ~3e38 torch's AdamW cannot even convert it to fp32
    betas: tuple[Beta, Beta] = (0.9, 0.95)  # each in [0, 1)
    eps: PositiveFloat = 1e-8
    weight_decay: Float = Field(default=0.1, ge=0.0)
    warmup_steps: Int = Field(default=20, ge=0, le=BIG)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: Float = Field(default=0.1, ge=0.0, le=1.0)


class TrainingConfig(Section):
    """How long and how big. Exactly one of max_steps / epochs decides the length.

    global_batch_size = micro_batch_size * grad_accum_steps * world_size. Give global_batch_size and the
    accumulation is derived for whatever world size the job runs on; give grad_accum_steps instead to fix it.
    """

    max_steps: Optional[PositiveInt] = 200
    epochs: Optional[PositiveFloat] = Field(default=None, le=1e6)
    micro_batch_size: PositiveInt = 8
    global_batch_size: Optional[PositiveInt] = None
    grad_accum_steps: Optional[PositiveInt] = None
    grad_clip: Optional[Float] = Field(default=1.0, gt=0.0)
    # auto: bf16 on GPUs that have it (A100, H100, ...), fp32 elsewhere (CPU, V100); see ddlc.runtime.precision
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False  # torch.compile the model (DDP/FSDP); eager with a warning where it cannot run
    seed: Int = Field(default=1337, ge=-(2**63), lt=2**63 - 2**20)  # torch's range, minus room for + rank
    log_interval: PositiveInt = 10
    # End this invocation early at this step (after a checkpoint); the LR schedule still targets the full
    # length. For time-boxed jobs, and to test that stopping and resuming changes nothing.
    stop_at_step: Optional[PositiveInt] = None
    # A step whose loss or gradient norm is not finite is skipped (no update); this many in a row stop the job
    # with exit code 65 (ddlc.errors.DIVERGED_EXIT_CODE).
    max_nonfinite_steps: PositiveInt = 5
    # Validation loss (needs data.val_fraction > 0): every eval_interval steps and at the last step; None: at the
    # last step only. eval_batches micro-batches per rank, averaged over all ranks.
    eval_interval: Optional[PositiveInt] = None
    eval_batches: Annotated[Int, Field(gt=0, le=100_000)] = 8

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_default_steps(cls, data):
        # Giving `epochs` alone replaces the default max_steps rather than conflicting with it.
        if isinstance(data, dict) and data.get("epochs") is not None and "max_steps" not in data:
            data = {**data, "max_steps": None}
        return data

    @model_validator(mode="after")
    def _one_length(self) -> "TrainingConfig":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of training.max_steps and training.epochs")
        return self


class FSDPConfig(Section):
    reshard_after_forward: Bool = True
    # Build the model on the meta device and materialise only this rank's shards (same initial weights as a
    # model built whole); false: build it whole on every rank, then shard.
    meta_init: Bool = True


class DeepSpeedConfig(Section):
    """strategy=deepspeed: ZeRO stage and the DeepSpeed JSON to start from (batch sizes, clipping and precision
    always come from this config, so the two cannot disagree)."""

    zero_stage: Optional[Annotated[Literal[0, 1, 2, 3], BeforeValidator(_not_a_bool)]] = None  # None: the JSON's zero_optimization.stage (else 2)
    config: Optional[str] = None  # ds_config.json; None: --deepspeed/--deepspeed_config, else built-in defaults
    # ZeRO stage 3: build the model under deepspeed.zero.Init, so each rank allocates only its partition (same
    # initial weights as a model built whole); false: build it whole on every rank, then partition. Stages 0-2
    # keep a full copy of the weights on every rank and always build whole.
    zero_init: Bool = True


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed", "horovod"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo otherwise
    device: Literal["auto", "cuda", "cpu"] = "auto"
    timeout_s: Int = Field(default=600, gt=0, le=7 * 24 * 3600)
    fsdp: FSDPConfig = FSDPConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()


class CheckpointConfig(Section):
    enabled: Bool = True
    uri: Optional[str] = None  # None: <run_dir>/<run_name>/checkpoints; local path, file:// or s3://
    interval_steps: PositiveInt = 100
    keep_last: PositiveInt = 3
    keep_every: Optional[PositiveInt] = None
    async_save: Bool = True
    resume: Bool = True
    verify_on_resume: Literal["sha256", "size"] = "sha256"
    rpo_seconds: PositiveFloat = 3600.0  # recovery point objective: alert when the newest commit is older
    endpoint_url: Optional[str] = None  # S3-compatible endpoint; default: AWS_ENDPOINT_URL or AWS itself
    # A fresh start (resume=false) in a URI holding another run's checkpoints: refuse (exit 2) or move them aside.
    on_existing: Literal["refuse", "move_aside"] = "refuse"
    load_timeout_s: Optional[PositiveFloat] = None  # resume's own timeout; default max(1 h, 4 x distributed.timeout_s)
    # Host-memory tier (docs/checkpointing.md, "Tiers"): every this many steps each rank's full state is also
    # committed to <memory_dir>/<run name>/ (host shared memory), newest two kept; resume takes the newest verified
    # step of either tier. None: off. On one node it does not survive the loss of the node; on several, each node's
    # snapshot files are copied to the next node (ring) after each commit, so one lost node loses no shard.
    memory_interval_steps: Optional[PositiveInt] = None
    memory_dir: str = "/dev/shm/ddlc"
    # Multi-node jobs: the peer replica above. False: the tier is off for multi-node jobs (a warning says so).
    memory_peer_replica: Bool = True


class MonitoringConfig(Section):
    run_dir: str = "runs"
    run_name: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # Prometheus endpoint per rank at metrics_port + local_rank (0: ephemeral); None: no endpoint.
    metrics_port: Optional[Int] = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # After a clean end, the endpoint stays up this long so Prometheus scrapes the last step: at least two scrape
    # intervals (35 s covers the generated config's default 15 s).
    metrics_linger_s: Float = Field(default=35.0, ge=0, le=3600)
    # For the cost estimate (price table in ddlc/monitor/prices.yaml); None: $DDLC_INSTANCE_TYPE or cpu-local.
    instance_type: Optional[str] = None
    progress: Literal["auto", "bar", "plain"] = "auto"


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    training: TrainingConfig = TrainingConfig()
    distributed: DistributedConfig = DistributedConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    @model_validator(mode="after")
    def _eval_needs_a_split(self) -> "Config":
        if self.training.eval_interval is not None and self.data.val_fraction == 0:
            raise ValueError("training.eval_interval is set but data.val_fraction is 0 (no validation split): "
                             "set data.val_fraction, e.g. 0.05")
        return self
