"""An async checkpoint's staging copy starts only after the device work queued before `save()` has finished.

On a GPU the optimizer step's kernels are only queued when `optimizer.step()` returns. The stand-in here is a
"slow stream": work launched on it runs later on another thread, and an event recorded on it completes when that
work has run, the way a CUDA event recorded after queued kernels does."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ddlc.checkpoint import state as state_module
from ddlc.checkpoint.checkpointer import Checkpointer
from ddlc.checkpoint.state import make_stager


class SlowStream:
    def __init__(self, delay_s: float = 0.4):
        self.delay_s = delay_s
        self.queued: list[threading.Thread] = []

    def launch(self, kernel) -> None:
        """Queue `kernel`; it runs `delay_s` later (the host call returns at once, as a CUDA launch does)."""
        def run():
            time.sleep(self.delay_s)
            kernel()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.queued.append(thread)

    def record(self):
        """An event that completes when everything queued so far has run."""
        queued = list(self.queued)

        class Event:
            def synchronize(self):
                for thread in queued:
                    thread.join()

        return Event()


def test_the_stand_in_exposes_the_race_without_ordering():
    """Without an event to wait for (torch's DefaultStager alone), the copy reads the state before the step."""
    stream = SlowStream()
    param = torch.zeros(1000)
    stream.launch(lambda: param.add_(1))  # "the optimizer step", still running
    stager = make_stager(record=lambda: None)
    try:
        staged = stager.stage({"p": param}).result()
    finally:
        stager.close()
    assert torch.all(staged["p"] == 0)  # a copy of the previous step's values: what the fix prevents


def test_staging_waits_for_the_recorded_event():
    stream = SlowStream()
    param = torch.zeros(1000)
    stream.launch(lambda: param.add_(1))
    stager = make_stager(record=stream.record)
    try:
        started = time.perf_counter()
        future = stager.stage({"p": param})
        returned_after = time.perf_counter() - started
        staged = future.result()
    finally:
        stager.close()
    assert torch.all(staged["p"] == 1)  # the step's result, never the state before it
    assert returned_after < stream.delay_s  # the caller was not held: the wait is on the staging thread


def test_an_async_save_holds_the_state_after_a_step_still_running_on_the_device(tmp_path, ctx, monkeypatch):
    stream = SlowStream(delay_s=3.0)  # longer than save() takes to start staging on a loaded machine
    monkeypatch.setattr(state_module, "record_device_work", stream.record)  # what Checkpointer's stager records
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()

    def step_kernels():
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2).add_(1)
            for s in optimizer.state.values():
                s["exp_avg"].add_(3)

    stream.launch(step_kernels)  # the step "returned" but its kernels have not run yet
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(1, model, optimizer, {"step": 1}, blocking=False)
    ckpt.close()
    stream.record().synchronize()
    expected = {k: v.clone() for k, v in model.state_dict().items()}  # after the kernels ran
    moment = optimizer.state[model.weight]["exp_avg"].clone()

    fresh = torch.nn.Linear(64, 64)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh(torch.randn(4, 64)).sum().backward()
    fresh_optimizer.step()
    assert Checkpointer(str(tmp_path / "ck")).resume(fresh, fresh_optimizer)["step"] == 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert torch.equal(fresh_optimizer.state[fresh.weight]["exp_avg"], moment)
