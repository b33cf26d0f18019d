"""A small decoder-only transformer (GPT-style). The config sets its size, from a CPU demo to a GPU node.

    ids -> tok_emb [padded vocab x n_embd] + pos_emb -> blocks -> ln_f -> head (tied to tok_emb) -> logits[..., :vocab]

The embedding/head rows are padded to model.pad_vocab_to (50257 -> 50304): the head's matmul gets a tensor-core
friendly width. The padded rows start at zero, are never looked up (ids < vocab) and their logits are cut off before
the loss, so they get no gradient and stay zero; the real rows are initialised from the same random draws as without
padding, so a padded model computes the same losses as an unpadded one.

Initial weights (init_weights): each parameter from its own generator, seeded by (seed, parameter name), drawn at
full size one parameter at a time and copied into whatever this rank holds of it. So a model built whole on the CPU
and one built on the meta device, sharded (FSDP2) and materialised per shard start from the same bits, and the
sharded build never holds more than one full parameter at once:

    with torch.device("meta"): GPT(cfg)  -> fully_shard -> to_empty(device) -> init_weights(seed)   (shards only)
    with deepspeed.zero.Init(): GPT(cfg) -> (partitioned per module) -> init_partitioned(seed)      (ZeRO-3 partitions)
    GPT(cfg)                             -> init_weights(seed) -> DDP / fully_shard / deepspeed      (whole model)

(init_partitioned is in ddlc.runtime.engines.deepspeed_engine: it gathers one parameter at a time and writes its
initial_value, so ZeRO-3 partitions start from the same bits too.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddlc.config.schema import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        shape = (batch, seq, self.n_head, width // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).contiguous().view(batch, seq, width))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.down = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, `n_layer` pre-norm blocks, tied output head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the dataset) before building the model")
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        rows = cfg.padded_vocab_size  # model.pad_vocab_to; init_weights leaves the padded rows at zero
        self.tok_emb = nn.Embedding(rows, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, rows, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        # Deterministic in the global seed (torch.manual_seed before building), whatever the constructors drew.
        # Built on meta (FSDP2) or partitioned by deepspeed.zero.Init (ZeRO-3): the builder initialises it later.
        if not _deferred(self.tok_emb.weight):
            self.init_weights(torch.initial_seed())

    def initial_value(self, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
        """The full-size initial value of parameter `name` (float32, CPU), from its own seeded generator."""
        if name.endswith(".bias"):
            return torch.zeros(shape)
        if ".ln_" in name or name.startswith("ln_"):  # LayerNorm gains
            return torch.ones(shape)
        generator = torch.Generator().manual_seed(_name_seed(seed, name))
        # GPT-2 style: scale residual projections by depth so activations stay O(1) as layers grow.
        std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("proj.weight", "down.weight")) else 0.02
        if name == "tok_emb.weight":  # only the real rows are drawn; the padded ones are zero
            value = torch.zeros(shape)
            value[: self.vocab_size] = torch.empty(self.vocab_size, *shape[1:]).normal_(0.0, std, generator=generator)
            return value
        return torch.empty(shape).normal_(0.0, std, generator=generator)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Set every parameter to its initial value; a sharded one (DTensor, FSDP2) only its local shard."""
        for name, param in self.named_parameters():  # the tied head is tok_emb.weight, listed once
            full = self.initial_value(name, param.shape, seed)
            local = param.to_local() if hasattr(param, "to_local") else param
            if local is not param:
                from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

                shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
                full = full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
            local.copy_(full.to(local.dtype))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        seq = idx.shape[1]
        if seq > self.cfg.block_size:
            raise ValueError(f"sequence length {seq} exceeds model.block_size {self.cfg.block_size}")
        pos = torch.arange(seq, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if logits.size(-1) != self.vocab_size:
            logits = logits[..., : self.vocab_size]  # padded ids: never predicted, sampled or trained toward
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _deferred(param: torch.Tensor) -> bool:
    """The parameter has no values of its own yet: on the meta device, or a ZeRO-3 partition (ds_id)."""
    return param.device.type == "meta" or hasattr(param, "ds_id")


def _name_seed(seed: int, name: str) -> int:
    """A 63-bit seed from the run's seed and a parameter name (stable across processes, unlike hash())."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1
