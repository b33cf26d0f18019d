"""strategy=deepspeed: `deepspeed.initialize` with ddlc's own AdamW (a client optimizer: no fused-op compile) and
schedule, ZeRO stage 0-3 from config, and checkpoints written by DeepSpeed into ddlc's committed layout.

Batch sizes, gradient clipping and precision are always taken from the ddlc config and written into the DeepSpeed
config, so a ds_config.json cannot silently train with different settings than `config.yaml` says.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from ddlc.checkpoint import deepspeed_files
from ddlc.checkpoint.checkpointer import Checkpointer, SaveStats, rng_file
from ddlc.checkpoint.manifest import COMMIT, LATEST, TRAINER_STATE, Manifest, hash_files, step_dir
from ddlc.checkpoint.storage import CheckpointStore
from ddlc.checkpoint.state import load_rng_bytes, rng_bytes, set_rng_state
from ddlc.errors import UserError
from ddlc.runtime.optim import build_optimizer, build_scheduler

DEFAULT_ZERO_STAGE = 2


def _import_deepspeed():
    try:
        import deepspeed
    except ModuleNotFoundError:
        raise UserError("distributed.strategy=deepspeed needs DeepSpeed: pip install 'ddlc[deepspeed]'") from None
    return deepspeed


def load_ds_config(path: Optional[str]) -> dict:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise UserError(f"distributed.deepspeed.config: {path} does not exist")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"distributed.deepspeed.config: {path} is not valid JSON ({error})") from None


def deepspeed_config(cfg, plan, device_type: str = "cpu") -> dict:
    """The DeepSpeed config for this job: the JSON (if any) with ddlc's batch, clipping, precision and ZeRO stage."""
    ds = load_ds_config(cfg.distributed.deepspeed.config)
    zero = dict(ds.get("zero_optimization") or {})
    stage = cfg.distributed.deepspeed.zero_stage
    zero["stage"] = stage if stage is not None else zero.get("stage", DEFAULT_ZERO_STAGE)
    # GPU runs overlap the gradient reduction with the backward pass (its own CUDA stream) unless the JSON says
    # otherwise; on CPU there is no stream to overlap on.
    zero["overlap_comm"] = device_type == "cuda" and bool(zero.get("overlap_comm", True))
    ds["zero_optimization"] = zero
    ds["train_batch_size"] = plan.global_batch_size
    ds["train_micro_batch_size_per_gpu"] = plan.micro_batch_size
    ds["gradient_accumulation_steps"] = plan.grad_accum_steps
    ds["gradient_clipping"] = cfg.training.grad_clip or 0.0
    ds["bf16"] = {"enabled": cfg.training.precision == "bf16"}
    ds.pop("fp16", None)
    ds.pop("optimizer", None)  # ddlc's AdamW is passed in; a JSON optimizer would be silently different
    ds.pop("scheduler", None)
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    return ds


def build_partitioned(deepspeed, build: Callable[[], torch.nn.Module], config: dict, ctx,
                      seed: int) -> torch.nn.Module:
    """ZeRO-3 without the whole model on any rank: build under `deepspeed.zero.Init`, which partitions each module's
    parameters as soon as that module is built (so the largest transient is one module's parameters, never the
    model), then draw the initial values (init_partitioned). Same dtype, device and partition layout as
    deepspeed.initialize gives a model built whole (its Init(module=...) reads the same config)."""
    import torch._dynamo  # noqa: F401  imported inside zero.Init it fails: it checks the Tensor.__new__ Init replaces

    deepspeed.init_distributed(dist_init_required=False)  # wraps ddlc's process group, as initialize does
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = build()
    init_partitioned(deepspeed, model, seed)
    return model


@torch.no_grad()
def init_partitioned(deepspeed, model: torch.nn.Module, seed: int) -> None:
    """model.init_weights for ZeRO-3 partitions: gather one parameter at a time, rank 0 writes its initial_value
    (drawn full-size on the CPU from the parameter's own seeded generator, exactly as a whole build does), and
    DeepSpeed hands each rank its partition of it on leaving the context."""
    rank = torch.distributed.get_rank()
    for name, param in model.named_parameters():  # the tied head is tok_emb.weight, listed once
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if rank == 0:
                param.copy_(model.initial_value(name, param.shape, seed).to(param.dtype))


SHM_DIR = Path("/dev/shm")


def release_shm_allreduce_name(rank: int) -> None:
    """Unlink this rank's DeepSpeed shared-memory all-reduce buffer from /dev/shm once every rank has mapped it.

    DeepSpeed's CPU backend, when all ranks share a host, gives each rank a ~69 MB buffer
    `/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>` that its peers map, and never
    unlinks it: every run (clean exit or kill -9) left that memory behind until reboot (18 GB after a day of
    runs here). The mappings outlive the name, so the run keeps working, and once it has started nothing is left
    however it ends (a crash during start-up is cleaned by the survivors or by the next job's sweep).
    """
    name = _shm_name(rank)
    # On every rank, whether or not it has such a buffer (GPU, or ranks on several hosts): a barrier some ranks
    # skipped would hang the others.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every peer has opened it (they spin until the name exists)
    (SHM_DIR / name).unlink(missing_ok=True)


SHM_PREFIX = "deepspeed_allreduce_buffer_"
# Only buffers at least this old are swept: a job still starting in a process namespace this one cannot see (a
# container sharing /dev/shm) may have peers that have not yet opened its name; after that, unlinking is harmless.
SHM_STALE_AFTER_S = 900


def _shm_name(rank: object) -> str:
    return f"{SHM_PREFIX}{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{rank}"


def _paths_in_use() -> set[str]:
    """/dev/shm paths some process of this user holds open or mapped (DeepSpeed's creator keeps its descriptor
    open from shm_open on, and every peer maps the file, so a live job's buffer is always listed here)."""
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(str(SHM_DIR)):
                    used.add(target)
            for line in (proc / "maps").read_text(errors="replace").splitlines():
                where = line.find(str(SHM_DIR) + "/")
                if where >= 0:
                    used.add(line[where:].removesuffix(" (deleted)"))
        except OSError:  # gone meanwhile, or another user's process
            continue
    return used


def sweep_stale_shm_buffers(stale_after_s: float = SHM_STALE_AFTER_S) -> list[str]:
    """Unlink this user's DeepSpeed all-reduce buffers that no process holds open or mapped and that are at least
    `stale_after_s` old: left by a job whose ranks were killed while it was starting (before
    release_shm_allreduce_name), they would stay until reboot. Local rank 0 of every DeepSpeed job runs this."""
    prefix = f"{SHM_PREFIX}{os.getuid()}_"
    try:
        candidates = [p for p in SHM_DIR.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    if not candidates:
        return []
    used = _paths_in_use()
    removed = []
    for path in candidates:
        try:
            info = path.stat()
            if info.st_uid == os.getuid() and time.time() - info.st_mtime >= stale_after_s and str(path) not in used:
                path.unlink()
                removed.append(path.name)
        except OSError:
            continue
    return removed


class DeepSpeedEngine:
    def __init__(self, cfg, ctx, build: Callable[[], torch.nn.Module], plan, total_steps: int):
        deepspeed = _import_deepspeed()
        self.cfg, self.ctx = cfg, ctx
        self.config = deepspeed_config(cfg, plan, ctx.device.type)
        self.zero_stage = self.config["zero_optimization"]["stage"]
        # ZeRO 1/2 skip a step whose gradient norm is not finite (their overflow check); stage 0 and 3 do so only
        # for fp16, which ddlc does not use: they apply the update, and ddlc's save guard keeps it out of checkpoints.
        self.skips_nonfinite = self.zero_stage in (1, 2)
        # distributed.deepspeed.zero_init: ZeRO-3 partitions from the start; otherwise built whole, partitioned by
        # deepspeed.initialize. Both start from the same weights.
        self.zero_init = self.zero_stage == 3 and cfg.distributed.deepspeed.zero_init
        # DeepSpeed's engine asserts LOCAL_RANK is set; plain `python train.py` (one process) has none.
        os.environ.setdefault("LOCAL_RANK", str(ctx.local_rank))
        if ctx.local_rank == 0:
            sweep_stale_shm_buffers()
        try:
            if self.zero_init:
                model = build_partitioned(deepspeed, build, self.config, ctx, torch.initial_seed())
            else:
                model = build().to(ctx.device)
            client_optimizer = build_optimizer(model, cfg.optimizer)
            # The schedule drives the client optimizer's param groups, which every ZeRO stage keeps using.
            self.scheduler = build_scheduler(client_optimizer, cfg.optimizer, total_steps)
            self.model, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=client_optimizer, config=self.config, dist_init_required=False
            )
            release_shm_allreduce_name(ctx.rank)
        except BaseException:
            # A peer died while the job was starting (its buffer never released): the job is over, so the
            # survivors remove every rank's buffer of this job rather than leave them to the next sweep.
            for path in SHM_DIR.glob(_shm_name("*")):
                path.unlink(missing_ok=True)
            raise

    def train_step(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   is_finite: Callable[[torch.Tensor, torch.Tensor], bool]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One optimizer step. DeepSpeed applies the update inside engine.step(); ZeRO 1-3 skip it themselves when
        the gradient norm is not finite (their overflow check), so ddlc only counts such steps here."""
        engine, device = self.model, self.ctx.device
        total = torch.zeros((), device=device)
        count = 0
        own_norm = None
        for inputs, targets in micro_batches:
            _, loss = engine(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))
            engine.backward(loss)  # scales by 1/accumulation steps itself
            if self.zero_stage == 0 and engine.is_gradient_accumulation_boundary():
                # Without ZeRO, DeepSpeed clips a client optimizer's gradients but keeps no norm: measure it here,
                # after the all-reduce (done in backward at the boundary) and before clipping.
                grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                own_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            engine.step()  # optimizer update (and ZeRO reduction) only at the accumulation boundary
            total += loss.detach().float()
            count += 1
        norm = engine.get_global_grad_norm()
        if norm is None and own_norm is not None:
            norm = own_norm
        # Kept a tensor (no float(): that would wait for the device every step).
        if norm is None:
            norm = torch.zeros((), device=device)
        elif not torch.is_tensor(norm):
            norm = torch.tensor(float(norm))  # already a Python number: nothing to wait for
        norm = norm.detach()
        loss = total / max(count, 1)
        return loss, norm, is_finite(loss, norm)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        module = self.model.module
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def checkpointer(self, uri: str, **kwargs) -> "DeepSpeedCheckpointer":
        return DeepSpeedCheckpointer(self, uri, **kwargs)


class DeepSpeedCheckpointer(Checkpointer):
    """DeepSpeed's own checkpoint files (`engine.save_checkpoint`, ZeRO shards included) in ddlc's layout.

    Each save goes to `<uri>/step-0000000N/` (DeepSpeed's tag = ddlc's step directory), plus ddlc's
    trainer_state.json and per-rank RNG files; rank 0 then writes COMMIT (every file's size and SHA-256) last and
    moves `latest` exactly as for DCP checkpoints, so `ddlc checkpoints list/verify/prune/export` and resume work
    unchanged. Saves are synchronous (DeepSpeed has no async path for client-side ZeRO shards).

    DeepSpeed reads and writes filesystem paths. A local or shared filesystem (FSx for Lustre) is written in
    place. For s3:// every rank saves into a local staging directory of its own, hashes and uploads the files it
    wrote and reports them to rank 0 (one gather on the checkpoint group), which commits once every rank has
    reported success. Resume downloads the chosen step into each rank's staging directory first.
    """

    def __init__(self, engine: DeepSpeedEngine, uri: str, **kwargs):
        super().__init__(uri, **kwargs)
        self.engine = engine
        self.staging: Optional[Path] = None
        if self.store.scheme == "file":
            self.root = self.store.path()
        else:
            self.staging = Path(tempfile.mkdtemp(prefix=f"ddlc-deepspeed-rank{self.rank}-"))
            self.root = str(self.staging)

    def save(self, step: int, model, optimizer, trainer_state: dict, blocking: bool = True) -> SaveStats:
        # Only the base class's public pieces (store, group, apply_retention, latest_valid) are used, so its
        # DCP save internals can change freely.
        directory = step_dir(step)
        started = time.perf_counter()
        if self.rank == 0 and self.store.exists(directory):
            self.store.remove_tree(directory)  # an older commit of this step, or debris of a save that died
        self._barrier()
        state = {**trainer_state, "world_size": self.world_size, "saved_at": time.time(),
                 "engine": "deepspeed", "zero_stage": self.engine.zero_stage}
        stats = SaveStats(step=step, blocking_s=0.0)
        self.history.append(stats)
        self.last_step = step
        report: dict = {"error": None, "files": {}}
        try:
            if self.staging is None:
                self._save_in_place(directory, state)
            else:
                report["files"] = self._save_staged(directory, state)
        except Exception as exc:  # this rank's files are incomplete: nobody commits this step
            report["error"] = f"rank {self.rank}: {type(exc).__name__}: {exc}"
            self.warn(f"checkpoint {self.store.display(directory)} could not be written: {report['error']}")
        reports = self._reports_on_rank0(report)  # a collective: every rank has finished writing
        if self.rank == 0:
            try:
                errors = [r["error"] for r in reports if r["error"]]
                if errors:
                    raise RuntimeError("; ".join(errors))
                self._commit_step(directory, state, stats, [r["files"] for r in reports])
            except Exception as exc:  # the previous commit still stands; training goes on
                stats.error = f"{type(exc).__name__}: {exc}"
                self.warn(f"checkpoint {self.store.display(directory)} was not committed: {stats.error}")
        stats.total_s = stats.blocking_s = time.perf_counter() - started
        if stats.committed and self.on_commit is not None:
            self.on_commit(stats)
        self._barrier()  # nobody races ahead to the next save while rank 0 prunes
        return stats

    def _save_in_place(self, directory: str, state: dict) -> None:
        self.engine.model.save_checkpoint(self.root, tag=directory, save_latest=False)
        self.store.write_bytes_atomic(f"{directory}/{rng_file(self.rank)}", rng_bytes())
        if self.rank == 0:
            self.store.write_text_atomic(f"{directory}/{TRAINER_STATE}", json.dumps(state, indent=2))

    def _save_staged(self, directory: str, state: dict) -> dict[str, dict]:
        """Save locally, upload; return {name: {size, sha256}} of the files this rank wrote."""
        local = self.staging / directory
        shutil.rmtree(local, ignore_errors=True)
        self.engine.model.save_checkpoint(self.root, tag=directory, save_latest=False)
        small = {rng_file(self.rank): rng_bytes()}
        if self.rank == 0:
            small[TRAINER_STATE] = json.dumps(state, indent=2).encode("utf-8")
        for name, data in small.items():
            (local / name).write_bytes(data)
        # Hashed here, from the local copy, so rank 0 never reads the shards back from S3 to commit them.
        names = deepspeed_files.upload(local, self.store, directory)
        digests = hash_files(CheckpointStore(str(self.staging)), directory, names)
        shutil.rmtree(local, ignore_errors=True)
        return digests

    def _reports_on_rank0(self, report: dict) -> list[dict]:
        """Every rank's report, on rank 0 (one small collective on the checkpoint group)."""
        if self.group is None or self.world_size == 1:
            return [report]
        import torch.distributed as dist

        gathered: Optional[list] = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(report, gathered, dst=0, group=self.group)
        return gathered if self.rank == 0 else []

    def _commit_step(self, directory: str, state: dict, stats: SaveStats, reported: list[dict[str, dict]]) -> None:
        if self.staging is None:  # written in place: hash what is there
            names = [f.name for f in self.store.list_files(directory) if f.name != COMMIT]
            files = hash_files(self.store, directory, names)
        else:
            files = {name: digest for rank_files in reported for name, digest in rank_files.items()}
        manifest = Manifest(step=stats.step, files=files, world_size=self.world_size, extra={"trainer_state": state})
        self.store.write_text_atomic(f"{directory}/{COMMIT}", manifest.to_json())  # COMMIT last
        self.store.write_text_atomic(LATEST, directory + "\n")
        stats.committed = True
        self.apply_retention()

    def resume(self, model, optimizer, check_hashes: bool = True) -> Optional[dict]:
        import torch.distributed as dist

        chosen = [self.latest_valid(check_hashes) if self.rank == 0 else None]
        if self.group is not None and self.world_size > 1:
            dist.broadcast_object_list(chosen, src=0, group=self.group)
        directory = chosen[0]
        if directory is None:
            return None
        trainer_state = json.loads(self.store.read_text(f"{directory}/{TRAINER_STATE}"))
        if trainer_state.get("engine") != "deepspeed":
            raise UserError(f"checkpoint {self.store.display(directory)} was not written by strategy=deepspeed; "
                            "resume it with the strategy that wrote it (or start a new checkpoint.uri)")
        if trainer_state.get("zero_stage") != self.engine.zero_stage:
            raise UserError(f"checkpoint {self.store.display(directory)} holds ZeRO stage "
                            f"{trainer_state.get('zero_stage')} shards but distributed.deepspeed.zero_stage is "
                            f"{self.engine.zero_stage}; resume with the same stage")
        if self.staging is not None:
            # ZeRO 1/2 ranks read every rank's optimizer file (DeepSpeed can re-partition them): fetch the lot.
            deepspeed_files.download(self.store, directory, self.staging)
        try:
            path, _ = self.engine.model.load_checkpoint(self.root, tag=directory, load_optimizer_states=True,
                                                        load_lr_scheduler_states=False)
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging / directory, ignore_errors=True)
        if path is None:
            raise UserError(f"checkpoint {self.store.display(directory)}: DeepSpeed could not load it")
        trainer_state["checkpoint"] = self.store.display(directory)
        if trainer_state.get("world_size") == self.world_size:
            set_rng_state(load_rng_bytes(self.store.open(f"{directory}/{rng_file(self.rank)}").read()))
        else:
            trainer_state["rng_restored"] = False
        return trainer_state

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
