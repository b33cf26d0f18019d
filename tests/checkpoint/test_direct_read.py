"""DirectReader (ddlc's local DCP reader) loads exactly what DCP's own reader loads, and digests the file it read."""

import hashlib

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from ddlc.checkpoint import direct_read
from ddlc.checkpoint.direct_read import DirectReader


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(1024, 600, generator=g)  # 2.4 MB: read straight into its destination
    return {
        "big": big,
        "big_bf16": torch.randn(800, 1000, generator=g).to(torch.bfloat16),
        "big_int": torch.randint(0, 1 << 40, (300_000,), generator=g),
        "transposed": torch.randn(700, 500, generator=g).t(),  # stored non-contiguous: decoded the ordinary way
        "view_with_offset": torch.randn(600_000, generator=g)[1000:500_000],  # torch.save keeps the whole storage
        "small": torch.randn(7, 3, generator=g),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "nested": {"step": 12, "name": "run-a", "moment": torch.randn(2000, 600, generator=g)},
    }


def _blank_like(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = _blank_like(value)
        elif isinstance(value, torch.Tensor):
            out[key] = torch.zeros(value.shape, dtype=value.dtype)
        else:
            out[key] = None
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("dcp") / "ck"
    state = _state(0)
    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    return path, state


def test_loads_what_dcp_loads_and_digests_the_file(saved, monkeypatch):
    path, state = saved
    direct_calls = []
    original = DirectReader._read_direct
    monkeypatch.setattr(DirectReader, "_read_direct",
                        lambda self, *a, **k: direct_calls.append(original(self, *a, **k)) or direct_calls[-1])
    by_dcp, by_direct = _blank_like(state), _blank_like(state)
    dcp.load(by_dcp, checkpoint_id=str(path), storage_reader=FileSystemReader(str(path)), no_dist=True)
    shards = sorted(p.name for p in path.glob("*.distcp"))
    reader = DirectReader(str(path), digest_names=frozenset(shards))
    dcp.load(by_direct, checkpoint_id=str(path), storage_reader=reader, no_dist=True)
    _assert_same(by_dcp, by_direct)
    _assert_same(by_direct, {**state, "transposed": state["transposed"].contiguous()})
    assert True in direct_calls and False in direct_calls  # both paths taken (straight reads and ordinary decoding)
    assert reader.digests == {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in shards}


def test_a_partial_load_still_digests_every_byte_of_the_file(saved):
    path, state = saved
    target = {"big": torch.zeros(1024, 600)}  # one item of the file: the rest is read for the digest only
    shards = sorted(p.name for p in path.glob("*.distcp"))
    reader = DirectReader(str(path), digest_names=frozenset(shards))
    dcp.load(target, checkpoint_id=str(path), storage_reader=reader, no_dist=True)
    assert torch.equal(target["big"], state["big"])
    assert reader.digests == {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in shards}


def test_small_items_only_still_load(saved, monkeypatch):
    path, state = saved
    monkeypatch.setattr(direct_read, "DIRECT_MIN_BYTES", 1 << 40)  # every item through the ordinary path
    loaded = _blank_like(state)
    dcp.load(loaded, checkpoint_id=str(path), storage_reader=DirectReader(str(path)), no_dist=True)
    _assert_same(loaded, {**state, "transposed": state["transposed"].contiguous()})


def test_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "ck"
    state = _state(1)
    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-5000])
    with pytest.raises(BaseException) as raised:  # DCP's CheckpointException is a BaseException
        dcp.load(_blank_like(state), checkpoint_id=str(path), storage_reader=DirectReader(str(path)), no_dist=True)
    assert "EOFError" in str(raised.value) and "bytes short of what the checkpoint metadata lists" in str(raised.value)


def test_device_destinations_go_through_a_host_staging_buffer(saved):
    """A GPU resume's path (finding 8 of #21), on CPU: a destination on another device (meta here) is read into the
    staging buffer and copied over, not decoded; forced for CPU destinations, that path loads bit for bit.
    (On CUDA, with a pinned buffer: make gpu-check's gpu-resume.)"""
    path, state = saved
    reader = DirectReader(str(path))
    on_device = torch.empty(1024, 600, device="meta")  # DCP's planner would materialise meta: ask the reader
    host, finish = reader._host_destination(on_device, on_device.numel() * 4)
    assert len(host) == 1024 * 600 * 4 and reader.staged_bytes == 0
    finish()
    assert reader.staged_bytes == 1024 * 600 * 4
    cpu = torch.zeros(8)
    host, _ = reader._host_destination(cpu, 32)
    host[:4] = b"\x00\x00\x80\x3f"  # the CPU destination's own memory: 1.0
    assert cpu[0] == 1.0
    staged, plain = _blank_like(state), _blank_like(state)
    reader = DirectReader(str(path), stage_cpu=True)
    dcp.load(staged, checkpoint_id=str(path), storage_reader=reader, no_dist=True)
    dcp.load(plain, checkpoint_id=str(path), storage_reader=DirectReader(str(path)), no_dist=True)
    _assert_same(staged, plain)
    assert reader.staged_bytes >= (1024 * 600 + 2000 * 600) * 4 + 800 * 1000 * 2
