"""Settings docs/configuration.md documents, each checked for its effect: no weight decay on norms and biases,
`training.grad_clip`, `training.epochs` and the `constant` schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ddlc.config import load_config
from ddlc.runtime.data import load_corpus
from ddlc.runtime.metrics import read_metrics
from ddlc.runtime.model import GPT
from ddlc.runtime.optim import build_optimizer
from ddlc.runtime.parallel import clip_and_measure
from tests.support import CONFIG, FAST, PYTHON, TRAIN_PY, assert_ok, run

SMALL = ["model.bias=true", "model.n_layer=2", "model.n_embd=32", "model.n_head=4", "model.vocab_size=64",
         "model.block_size=16"]


def test_no_weight_decay_on_norms_and_biases():
    cfg = load_config(None, [*SMALL, "optimizer.weight_decay=0.25"])
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, cfg.optimizer)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(decay_of) == len(named) == sum(len(g["params"]) for g in optimizer.param_groups)  # each once
    no_decay = {name for name, p in named.items() if decay_of[id(p)] == 0.0}
    decayed = {name for name, p in named.items() if decay_of[id(p)] == 0.25}
    assert no_decay | decayed == set(named)
    assert no_decay == {name for name in named if name.endswith(".bias") or ".ln_" in name or name.startswith("ln_f")}
    assert {"tok_emb.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.down.weight"} <= decayed
    # and the optimizer applies it: with zero gradients, only decayed weights move (AdamW decays before its update)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    before = {name: p.detach().clone() for name, p in named.items()}
    optimizer.step()
    moved = {name for name, p in named.items() if not torch.equal(p, before[name])}
    assert moved == {name for name in decayed if before[name].abs().sum() > 0}


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _backward(model, cfg, scale):
    torch.manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (4, cfg.model.block_size))
    model.zero_grad()
    logits = model(tokens)
    (logits.float().square().mean() * scale).backward()


@pytest.mark.parametrize("clip", [0.5, None])
def test_grad_clip_bounds_the_applied_gradient_and_the_logged_norm_is_before_clipping(clip):
    cfg = load_config(None, [*SMALL, f"training.grad_clip={'null' if clip is None else clip}"])
    assert cfg.training.grad_clip == clip
    torch.manual_seed(1)
    model = GPT(cfg.model)
    _backward(model, cfg, scale=1000.0)
    raw = _grads(model)
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    assert raw_norm > 1.0  # far above the clip: clipping must act
    logged = clip_and_measure(model, cfg.training.grad_clip)
    assert float(logged) == pytest.approx(float(raw_norm), rel=1e-5)
    applied = _grads(model)
    applied_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in applied]))
    if clip is None:
        assert all(torch.equal(a, b) for a, b in zip(applied, raw))
    else:
        assert float(applied_norm) <= clip * (1 + 1e-5)
        assert float(applied_norm) == pytest.approx(clip, rel=1e-4)
        for a, b in zip(applied, raw):  # scaled, not reshaped: the direction is kept
            torch.testing.assert_close(a, b * (clip / raw_norm), rtol=1e-4, atol=1e-9)


def test_training_by_epochs_with_a_constant_schedule(tmp_path):
    """training.epochs decides the length (the step that completes the epochs is the last); after warmup the
    `constant` schedule keeps optimizer.lr (min_lr_ratio does not apply)."""
    epochs, lr, warmup = 0.05, 2e-3, 3
    overrides = [*FAST, "data.synthetic_tokens=60000", "training.max_steps=null", f"training.epochs={epochs}",
                 "optimizer.decay=constant", f"optimizer.lr={lr}", f"optimizer.warmup_steps={warmup}",
                 "optimizer.min_lr_ratio=0.1", "training.log_interval=1", "checkpoint.enabled=false",
                 f"monitoring.run_dir={tmp_path}", "monitoring.run_name=epochs"]
    assert_ok(run([PYTHON, str(TRAIN_PY), "--config", str(CONFIG), *overrides], cwd=tmp_path))
    cfg = load_config(CONFIG, overrides)
    windows = load_corpus(cfg.data, cfg.model.block_size, cfg.model.vocab_size, cfg.training.seed).num_windows
    batch = cfg.training.global_batch_size
    records = read_metrics(tmp_path / "epochs")
    steps = len(records)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert (steps - 1) * batch < epochs * windows <= steps * batch, (steps, windows)
    assert steps > warmup + 2
    lrs = [r["lr"] for r in records]
    assert lrs[:warmup] == pytest.approx([lr * (s + 1) / warmup for s in range(warmup)])
    assert lrs[warmup:] == [pytest.approx(lr, rel=1e-12)] * (steps - warmup)
    assert math.isclose(records[-1]["epoch"], steps * batch / windows, rel_tol=1e-9)  # epochs done after the step


@pytest.mark.parametrize("clip", [0.05, None])
def test_the_trainer_applies_grad_clip_to_the_update(tmp_path, clip):
    """Through the Trainer's own step: what the optimizer applies has norm <= grad_clip; the norm it reports is the
    one before clipping (docs: "null: no clipping, norm still logged")."""
    from ddlc.runtime import Trainer, init_distributed

    cfg = load_config(CONFIG, [*FAST, f"training.grad_clip={'null' if clip is None else clip}",
                               "checkpoint.enabled=false", f"monitoring.run_dir={tmp_path}", "monitoring.run_name=c"])
    trainer = Trainer(cfg, init_distributed("cpu", "gloo"))
    applied = []

    def record(optimizer, *_):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        applied.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.register_step_pre_hook(record)
    reported = [float(trainer.train_step()[1]) for _ in range(3)]
    assert len(applied) == 3 and all(norm > 0.05 * 2 for norm in reported), reported
    if clip is None:
        assert applied == pytest.approx(reported, rel=1e-5)
    else:
        assert applied == pytest.approx([clip] * 3, rel=1e-4)
