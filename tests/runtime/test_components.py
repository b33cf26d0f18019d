"""Unit tests of the runtime's pieces: launcher detection, model, data, schedule, metrics logger."""

import json

import numpy as np
import pytest
import torch

from ddlc.config import DataConfig, ModelConfig, OptimizerConfig
from ddlc.errors import UserError
from ddlc.runtime.data import GlobalBatchSampler, TokenCorpus, load_corpus, plan_batches, synthetic_corpus
from ddlc.runtime.distributed import detect_launch_env
from ddlc.runtime.metrics import MetricsLogger, format_step, read_metrics
from ddlc.runtime.model import GPT
from ddlc.runtime.optim import lr_multiplier


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ("single", 0, 1, 0, 1)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"},
         ("torchrun", 3, 8, 1, 2)),
        ({"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "5", "LOCAL_SIZE": "8", "CROSS_RANK": "0"},
         ("deepspeed", 5, 16, 5, 8)),
        ({"HOROVOD_RANK": "2", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "0", "HOROVOD_LOCAL_SIZE": "2"},
         ("horovod", 2, 4, 0, 2)),
        # no local rank given: the rank's place on its node (one node here), not 0 for every rank
        ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, ("mpi", 1, 2, 1, 2)),
        ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "8",
          "SLURM_JOB_NODELIST": "p4d-[3-4]"}, ("slurm", 9, 16, 1, 8)),
    ],
)
def test_launcher_detection(env, expected):
    launch = detect_launch_env(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == expected


def test_slurm_master_is_first_node_and_node_rank():
    launch = detect_launch_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8",
                                "SLURM_JOB_NODELIST": "p4d-[3-4]"})
    assert launch.master_addr == "p4d-3" and launch.node_rank == 1 and launch.num_nodes == 2


def test_bad_rank_variable_is_a_user_error():
    with pytest.raises(UserError, match="RANK='one'"):
        detect_launch_env({"RANK": "one", "WORLD_SIZE": "2"})


def test_gpt_shapes_and_tied_head():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, block_size=16))
    idx, targets = torch.randint(0, 50, (2, 3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 50)
    assert loss.item() == pytest.approx(np.log(50), rel=0.1)  # near-uniform at init
    assert model.head.weight is model.tok_emb.weight
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, n_layer=1, n_embd=16, n_head=2, block_size=8)).eval()
    a = torch.randint(0, 20, (1, 8))
    b = a.clone()
    b[0, -1] = (b[0, -1] + 1) % 20
    assert torch.allclose(model(a)[0, :-1], model(b)[0, :-1])


def test_batch_plan():
    assert plan_batches(8, 64, None, 2).grad_accum_steps == 4
    assert plan_batches(8, None, 3, 2).global_batch_size == 48
    with pytest.raises(UserError, match="not a multiple"):
        plan_batches(8, 60, None, 2)
    with pytest.raises(UserError, match="disagrees"):
        plan_batches(8, 64, 2, 2)


def _samples_by_step(corpus, micro, world, steps=3):
    sampler = GlobalBatchSampler(corpus, plan_batches(micro, 8, None, world), seed=1)
    out = []
    for step in range(steps):
        rows = []
        for micro_step in range(sampler.plan.grad_accum_steps):
            for rank in range(world):
                rows += [tuple(r.tolist()) for r in sampler.batch(step, micro_step, rank)[0]]
        out.append(sorted(rows))
    return out


def test_global_batches_do_not_depend_on_world_size():
    corpus = synthetic_corpus(20_000, 64, seed=0, seq_len=16)
    assert _samples_by_step(corpus, 4, 1) == _samples_by_step(corpus, 2, 2) == _samples_by_step(corpus, 1, 4)


def test_sampler_covers_an_epoch_without_repeats():
    corpus = TokenCorpus([np.arange(16 * 10 + 1, dtype=np.uint16)], 1000, 16, "counting")
    sampler = GlobalBatchSampler(corpus, plan_batches(2, None, 1, 1), seed=3)
    windows = [sampler.window_of(g) for g in range(10)]
    assert sorted(windows) == list(range(10))
    assert [sampler.window_of(g) for g in range(10, 20)] != windows  # next epoch reshuffles
    inputs, targets = sampler.batch(0, 0, 0)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are inputs shifted by one


def test_synthetic_corpus_is_deterministic_and_low_entropy():
    a = synthetic_corpus(50_000, 256, seed=5, seq_len=32)
    b = synthetic_corpus(50_000, 256, seed=5, seq_len=32)
    assert np.array_equal(a.shards[0], b.shards[0])
    tokens = a.shards[0].astype(np.int64)
    pairs = len(set(zip(tokens[:-1].tolist(), tokens[1:].tolist())))
    assert pairs < 256 * 8  # few successors per token: learnable structure


def test_text_and_token_sources(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 100)
    corpus = load_corpus(DataConfig(source="text", path=str(tmp_path)), 16, None, 0)
    assert corpus.vocab_size == 256 and corpus.num_tokens == 1200
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "shard0.bin")
    np.save(tmp_path / "shard1.npy", np.arange(500, dtype=np.uint16))
    corpus = load_corpus(DataConfig(source="tokens", path=str(tmp_path)), 16, None, 0)
    assert corpus.vocab_size == 1000 and len(corpus.shards) == 2
    assert corpus.num_windows == 999 // 16 + 499 // 16
    last = corpus.window(corpus.num_windows - 1)
    assert last[0] == (499 // 16 - 1) * 16 and len(last) == 17  # windows never cross shards


@pytest.mark.parametrize(
    "cfg, message",
    [
        (DataConfig(source="text", path="/definitely/missing"), "no such file or directory"),
        (DataConfig(source="tokens", path="{empty}"), "no .bin/.npy files"),
    ],
)
def test_bad_data_paths(cfg, message, tmp_path):
    cfg = cfg.model_copy(update={"path": cfg.path.format(empty=tmp_path)})  # an empty directory of our own
    with pytest.raises(UserError, match=message):
        load_corpus(cfg, 16, None, 0)


def test_too_little_data(tmp_path):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(UserError, match="too few for one sequence"):
        load_corpus(DataConfig(source="text", path=str(tmp_path / "tiny.txt")), 16, None, 0)


def test_token_ids_beyond_vocab(tmp_path):
    np.arange(300, dtype=np.uint16).tofile(tmp_path / "s.bin")
    with pytest.raises(UserError, match="token id 299"):
        load_corpus(DataConfig(source="tokens", path=str(tmp_path / "s.bin")), 16, 256, 0)


def test_lr_schedule_warmup_then_cosine_floor():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    values = [lr_multiplier(s, cfg, 110) for s in range(120)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[60] == pytest.approx(0.55)
    assert values[110] == pytest.approx(0.1) and values[119] == pytest.approx(0.1)
    assert lr_multiplier(50, OptimizerConfig(warmup_steps=0, decay="linear", min_lr_ratio=0.0), 100) == 0.5


def test_metrics_logger_plain_lines_and_jsonl(tmp_path, capsys):
    logger = MetricsLogger(tmp_path / "run", total_steps=4, progress="plain", log_interval=2)
    for step in range(1, 5):
        logger.log({"step": step, "loss": 1.0 / step, "lr": 0.1, "grad_norm": float("nan")})
    logger.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines] == ["step 1/4", "step 2/4", "step 4/4"]
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[0]["grad_norm"] == "nan"
    json.dumps(records)


def test_metrics_logger_disabled_on_other_ranks(tmp_path):
    logger = MetricsLogger(tmp_path / "run", total_steps=4, enabled=False)
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_format_step():
    line = format_step({"step": 3, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "step_time_s": 0.01,
                        "tokens_per_s": 12345.0}, 10)
    assert line == "step 3/10 | loss 2.5000 | lr 1.00e-03 | gnorm 0.500 | 10.0 ms/step | 12,345 tok/s"
