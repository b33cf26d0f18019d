"""Token data and deterministic, world-size-independent batching.

Every optimizer step consumes one *global batch* of `global_batch_size` samples, numbered by a global sample
index (step * global_batch_size + j). Sample g reads window perm_epoch[g mod windows] of the corpus, with a
seeded permutation per epoch. Which rank reads which of those samples depends on the world size, but the set of
samples in a step does not: a job can resume on a different number of ranks and see the same data.

Validation (data.val_fraction > 0): split_validation cuts the corpus's windows in two, training windows
[0, n - v) and validation windows [n - v, n), so no validation token is ever trained on, on any rank or launch.

    windows 0 ............ n-v-1 | n-v ...... n-1
            training (sampler)   | validation (validation_batch: micro-batch b of rank r, no shuffle)
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ddlc.config.schema import DataConfig
from ddlc.errors import UserError


class TokenCorpus:
    """One or more 1-D token arrays (shards), cut into non-overlapping windows of `seq_len + 1` tokens."""

    def __init__(self, shards: Sequence[np.ndarray], vocab_size: int, seq_len: int, name: str):
        self.shards = list(shards)
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.name = name
        counts = [max((len(s) - 1) // seq_len, 0) for s in self.shards]
        self._cumulative = np.cumsum([0] + counts)
        self.num_windows = int(self._cumulative[-1])
        if self.num_windows == 0:
            total = sum(len(s) for s in self.shards)
            raise UserError(
                f"data: {name} has {total} tokens, too few for one sequence of model.block_size={seq_len} (+1)"
            )

    @property
    def num_tokens(self) -> int:
        return int(sum(len(s) for s in self.shards))

    def window(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._cumulative, index, side="right") - 1)
        start = (index - int(self._cumulative[shard])) * self.seq_len
        return self.shards[shard][start : start + self.seq_len + 1]


@dataclass
class BatchPlan:
    """How one global batch is split: per rank, per micro-step."""

    micro_batch_size: int
    grad_accum_steps: int
    world_size: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size


def plan_batches(micro: int, global_batch: int | None, accum: int | None, world_size: int) -> BatchPlan:
    """Resolve grad accumulation for this world size; explain what does not divide."""
    if global_batch is None:
        return BatchPlan(micro, accum or 1, world_size)
    per_step = micro * world_size
    if global_batch % per_step:
        raise UserError(
            f"training.global_batch_size={global_batch} is not a multiple of micro_batch_size ({micro}) x "
            f"world size ({world_size}) = {per_step}; set training.global_batch_size to a multiple of {per_step}"
            + (f" or training.micro_batch_size to a divisor of {global_batch // world_size}"
               if global_batch % world_size == 0 else "")
        )
    derived = global_batch // per_step
    if accum is not None and accum != derived:
        raise UserError(
            f"training.grad_accum_steps={accum} disagrees with global_batch_size={global_batch} / "
            f"(micro_batch_size {micro} x world size {world_size}) = {derived}; set only one of them"
        )
    return BatchPlan(micro, derived, world_size)


class WindowSlice:
    """Windows [start, start + count) of a corpus, numbered from 0: what the sampler and the evaluation read."""

    def __init__(self, corpus: TokenCorpus, start: int, count: int, name: str):
        self.corpus, self.start, self.num_windows, self.name = corpus, start, count, name
        self.vocab_size, self.seq_len = corpus.vocab_size, corpus.seq_len

    @property
    def num_tokens(self) -> int:
        return self.num_windows * self.seq_len

    def window(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} outside 0..{self.num_windows - 1}")
        return self.corpus.window(self.start + index)


def split_validation(corpus: TokenCorpus, fraction: float) -> tuple["TokenCorpus | WindowSlice", WindowSlice | None]:
    """(training windows, validation windows): the last ceil(fraction x windows) are held out; fraction 0: none."""
    if fraction <= 0:
        return corpus, None
    held_out = math.ceil(fraction * corpus.num_windows)
    if held_out >= corpus.num_windows:
        raise UserError(
            f"data.val_fraction={fraction} leaves no training data: {corpus.name} has only {corpus.num_windows} "
            f"sequences of model.block_size={corpus.seq_len}; lower data.val_fraction or use more data"
        )
    train = corpus.num_windows - held_out
    return (WindowSlice(corpus, 0, train, corpus.name),
            WindowSlice(corpus, train, held_out, f"{corpus.name} (validation)"))


def validation_batch(split: WindowSlice, plan: "BatchPlan", batch: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch `batch` of `rank` for evaluation: fixed windows, in order (wrapping round a small split)."""
    first = (batch * plan.world_size + rank) * plan.micro_batch_size
    rows = np.stack([split.window((first + j) % split.num_windows) for j in range(plan.micro_batch_size)])
    tokens = torch.from_numpy(rows.astype(np.int64))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class GlobalBatchSampler:
    """Maps (step, micro_step, rank) to token tensors. Stateless: position is just the step number."""

    def __init__(self, corpus: TokenCorpus, plan: BatchPlan, seed: int, shuffle: bool = True):
        self.corpus = corpus
        self.plan = plan
        self.seed = seed
        self.shuffle = shuffle
        # Position = base_sample + (step - base_step) * global batch; rebased on resume, so a job can come back
        # with a different world size or global batch size and continue at the very next sample.
        self.base_step = 0
        self.base_sample = 0

    def rebase(self, step: int, samples_seen: int) -> None:
        self.base_step, self.base_sample = step, samples_seen

    def samples_seen(self, step: int) -> int:
        """Global samples consumed before `step`."""
        return self.base_sample + (step - self.base_step) * self.plan.global_batch_size

    @lru_cache(maxsize=2)
    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.corpus.num_windows)
        return np.random.default_rng((self.seed, epoch)).permutation(self.corpus.num_windows)

    def sample_indices(self, step: int, micro_step: int, rank: int) -> range:
        plan = self.plan
        first = self.samples_seen(step) + (micro_step * plan.world_size + rank) * plan.micro_batch_size
        return range(first, first + plan.micro_batch_size)

    def window_of(self, sample: int) -> int:
        epoch, position = divmod(sample, self.corpus.num_windows)
        return int(self._permutation(epoch)[position])

    def epoch_of_step(self, step: int) -> float:
        return self.samples_seen(step) / self.corpus.num_windows

    def batch(self, step: int, micro_step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.corpus.window(self.window_of(g)) for g in self.sample_indices(step, micro_step, rank)])
        tokens = torch.from_numpy(rows.astype(np.int64))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def synthetic_corpus(num_tokens: int, vocab_size: int, seed: int, seq_len: int) -> TokenCorpus:
    """A seeded first-order Markov chain with a few likely successors per token.

    Its entropy (~1.2 nats) is far below uniform (ln V), so a model visibly learns it within a few hundred steps.
    """
    rng = np.random.default_rng(seed)
    fanout = min(4, vocab_size)
    successors = np.stack([rng.choice(vocab_size, size=fanout, replace=False) for _ in range(vocab_size)])
    weights = np.array([0.6, 0.25, 0.1, 0.05][:fanout])
    cumulative = np.cumsum(weights / weights.sum())
    chains = 256
    length = -(-num_tokens // chains)
    out = np.empty((length, chains), dtype=np.uint16)
    state = rng.integers(0, vocab_size, size=chains)
    draws = rng.random((length, chains))
    for t in range(length):
        out[t] = state
        choice = (draws[t][:, None] > cumulative[None, :]).sum(axis=1).clip(max=fanout - 1)
        state = successors[state, choice]
    return TokenCorpus([out.T.reshape(-1)[:num_tokens]], vocab_size, seq_len, "synthetic corpus")


def _expand(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    target = Path(path).expanduser()
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix in suffixes and p.is_file())
    elif any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(path)))
    elif target.exists():
        files = [target]
    else:
        raise UserError(f"data.path: no such file or directory: {path}")
    if not files:
        raise UserError(f"data.path: no {'/'.join(suffixes)} files found in {path}")
    return files


def _load_token_shard(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
        else:
            array = np.memmap(path, dtype=np.uint16, mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"data.path: cannot read token shard {path}: {exc}") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"data.path: {path} must hold a 1-D integer token array, got {array.dtype}{array.shape}")
    return array


def check_data_config(cfg: DataConfig) -> None:
    """Fail early, before workers start, when the data path names nothing."""
    if cfg.source == "text":
        _expand(cfg.path, (".txt", ".md", ".text"))
    elif cfg.source == "tokens":
        _expand(cfg.path, (".bin", ".npy"))


def load_corpus(cfg: DataConfig, seq_len: int, vocab_size: int | None, seed: int) -> TokenCorpus:
    """Build the corpus named by the data config."""
    if cfg.source == "synthetic":
        return synthetic_corpus(cfg.synthetic_tokens, cfg.synthetic_vocab, seed, seq_len)
    if cfg.source == "text":
        files = _expand(cfg.path, (".txt", ".md", ".text"))
        shards = []
        for file in files:
            try:
                shards.append(np.frombuffer(file.read_bytes(), dtype=np.uint8).astype(np.uint16))
            except OSError as exc:
                raise UserError(f"data.path: cannot read {file}: {exc}") from None
        return TokenCorpus(shards, 256, seq_len, cfg.path)
    files = _expand(cfg.path, (".bin", ".npy"))
    shards = [_load_token_shard(f) for f in files]
    observed = max(int(s.max()) for s in shards if len(s)) + 1
    vocab = vocab_size or observed
    if observed > vocab:
        raise UserError(f"data.path: token id {observed - 1} in {cfg.path} >= model.vocab_size={vocab}")
    return TokenCorpus(shards, vocab, seq_len, cfg.path)
