"""model.pad_vocab_to: embedding/head rows padded (50257 -> 50304), the same losses as unpadded, padded ids never
trained toward or predicted, and an unpadded checkpoint refused in one line rather than called corrupt."""

import torch

from ddlc.config.loader import load_config
from ddlc.config.schema import ModelConfig
from ddlc.runtime.model import GPT
from ddlc.runtime.optim import build_optimizer
from ddlc.runtime.preflight import parameter_count
from tests.support import CONFIG, PYTHON, TRAIN_PY, assert_ok, run

SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=250, dropout=0.0)


def _model(pad: int) -> GPT:
    torch.manual_seed(7)
    return GPT(ModelConfig(**SMALL, pad_vocab_to=pad))


def test_padded_sizes():
    assert ModelConfig(vocab_size=50257).padded_vocab_size == 50304  # the default: a multiple of 64
    assert ModelConfig(vocab_size=50257, pad_vocab_to=1).padded_vocab_size == 50257
    assert ModelConfig(vocab_size=256).padded_vocab_size == 256  # already a multiple: unchanged
    cfg = load_config(None, ["model.vocab_size=250", "model.n_layer=1"])
    assert parameter_count(cfg) == GPT(cfg.model).num_parameters()  # the preflight estimate counts the padding


def test_padding_changes_no_loss_and_padded_rows_stay_out_of_training():
    padded, plain = _model(64), _model(1)
    assert padded.tok_emb.weight.shape == (256, 32) and plain.tok_emb.weight.shape == (250, 32)
    # Same random draws for the real rows and every other parameter; the padded rows are zero.
    assert torch.equal(padded.tok_emb.weight[:250], plain.tok_emb.weight)
    assert not padded.tok_emb.weight[250:].any()
    for (name, a), (_, b) in zip(padded.named_parameters(), plain.named_parameters()):
        if name != "tok_emb.weight":
            assert torch.equal(a, b), name
    cfg = load_config(None, [])
    optimizers = [build_optimizer(m, cfg.optimizer) for m in (padded, plain)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        tokens = torch.randint(0, 250, (4, 17), generator=generator)
        losses = []
        for model, optimizer in zip((padded, plain), optimizers):
            logits, loss = model(tokens[:, :-1], tokens[:, 1:])
            assert logits.shape[-1] == 250  # padded ids are never predicted (nor sampled)
            loss.backward()
            losses.append(loss.detach())
            optimizer.step()
            optimizer.zero_grad()
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    # No gradient ever reached the padded rows (AdamW's decay of zero is zero): still exactly zero.
    assert not padded.tok_emb.weight[250:].any()
    # (Adam divides tiny gradients by their own size: float rounding of the wider matmul shows as ~1e-5.)
    torch.testing.assert_close(padded.tok_emb.weight[:250], plain.tok_emb.weight, rtol=1e-3, atol=5e-5)


def test_an_unpadded_checkpoint_is_refused_in_one_line_not_called_corrupt(tmp_path):
    args = ["--config", str(CONFIG), "model.n_layer=1", "model.n_embd=32", "model.block_size=16",
            "data.synthetic_tokens=5000", "data.synthetic_vocab=250", "training.micro_batch_size=2",
            "checkpoint.interval_steps=2", f"monitoring.run_dir={tmp_path}", "monitoring.run_name=pad",
            "monitoring.progress=plain"]
    assert_ok(run([PYTHON, str(TRAIN_PY), *args, "training.max_steps=2", "model.pad_vocab_to=1"], cwd=tmp_path))
    before = sorted(p.name for p in (tmp_path / "pad" / "checkpoints").iterdir())
    proc = run([PYTHON, str(TRAIN_PY), *args, "training.max_steps=4"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit this model" in lines[0] and "model.pad_vocab_to: 1" in lines[0], lines
    assert "corrupt" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "pad" / "checkpoints").iterdir()) == before  # nothing lost
    # Resuming with the setting it was written with keeps working.
    assert_ok(run([PYTHON, str(TRAIN_PY), *args, "training.max_steps=4", "model.pad_vocab_to=1"], cwd=tmp_path))
