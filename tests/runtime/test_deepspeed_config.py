"""docs/launch.md, DeepSpeed: the JSON handed to `deepspeed.initialize` takes batch sizes, clipping and bf16 from
the ddlc config whatever the file says, drops its optimizer/scheduler, and picks the ZeRO stage override > JSON > 2.
(No DeepSpeed engine is built: this is the dict ddlc builds for it.)"""

from __future__ import annotations

import json

import pytest

from ddlc.config.loader import load_config
from ddlc.runtime.data import plan_batches
from ddlc.runtime.engines.deepspeed_engine import deepspeed_config

CONTRARY = {
    "train_batch_size": 999, "train_micro_batch_size_per_gpu": 77, "gradient_accumulation_steps": 13,
    "gradient_clipping": 42.0, "bf16": {"enabled": True}, "fp16": {"enabled": True},
    "optimizer": {"type": "SGD", "params": {"lr": 9.0}}, "scheduler": {"type": "WarmupLR"},
    "zero_optimization": {"stage": 3, "reduce_bucket_size": 12345},
}


@pytest.fixture
def contrary_json(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(CONTRARY))
    return path


def test_the_json_cannot_disagree_with_the_ddlc_config(contrary_json):
    cfg = load_config(None, [f"distributed.deepspeed.config={contrary_json}", "training.grad_clip=0.5",
                             "training.precision=fp32"])
    plan = plan_batches(4, 24, None, 2)  # micro 4 x world 2 x accumulation 3
    ds = deepspeed_config(cfg, plan)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (24, 4, 3)
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False} and "fp16" not in ds
    assert "optimizer" not in ds and "scheduler" not in ds  # ddlc's AdamW and schedule are passed in instead
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["reduce_bucket_size"] == 12345

    bf16 = load_config(None, [f"distributed.deepspeed.config={contrary_json}", "training.grad_clip=",
                              "training.precision=bf16"])
    ds = deepspeed_config(bf16, plan)
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 0.0  # null grad_clip: no clipping


@pytest.mark.parametrize("override, in_json, expected", [(None, None, 2), (None, 1, 1), (0, 3, 0), (3, None, 3)])
def test_zero_stage_is_the_override_else_the_json_else_2(tmp_path, override, in_json, expected):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({} if in_json is None else {"zero_optimization": {"stage": in_json}}))
    overrides = [f"distributed.deepspeed.config={path}"]
    if override is not None:
        overrides.append(f"distributed.deepspeed.zero_stage={override}")
    ds = deepspeed_config(load_config(None, overrides), plan_batches(4, 8, None, 2))
    assert ds["zero_optimization"]["stage"] == expected
