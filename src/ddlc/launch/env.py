"""The one place that decides which environment variables every node's launcher gets.

Order (later wins):
  1. the profile's defaults (`aws-efa`: NCCL over AWS EFA via libfabric; `none`: nothing), trimmed to the
     instance type when it is known (`--instance-type`, else $DDLC_INSTANCE_TYPE; see `instance_profile`)
  2. variables already set in the shell that runs `ddlc launch`, for names under FORWARDED_PREFIXES
     (so `export NCCL_SOCKET_IFNAME=ens5` overrides the profile)
  3. `--env KEY=VALUE` options (`--env KEY=` removes KEY)

A value ending in `:$NAME` for its own NAME (LD_LIBRARY_PATH) is prepended on the node to what the node already
has there (`shell_assignment`). docs/launch.md has the table; keep it in sync with PROFILES.
"""

from __future__ import annotations

import shlex
from typing import Mapping, Optional, Sequence

from ddlc.errors import UserError

# Where the aws-ofi-nccl plugin (libnccl-net.so) and libfabric live on the Deep Learning AMI / EFA installer.
OFI_NCCL_LIBS = ("/opt/amazon/ofi-nccl/lib", "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu", "/opt/amazon/efa/lib")

# NCCL over EFA on p4d/p5 (aws-ofi-nccl plugin); harmless on CPU nodes, where gloo ignores them.
AWS_EFA = {
    "FI_PROVIDER": "efa",  # libfabric: use the EFA provider, never fall back to TCP sockets
    "FI_EFA_USE_HUGE_PAGE": "0",  # huge pages for EFA buffers break fork() in data-loader workers
    "FI_EFA_USE_DEVICE_RDMA": "1",  # GPUDirect RDMA on p4d/p5 (dropped for p3dn, which has none)
    # NCCL loads its network plugin (libnccl-net.so) through the dynamic loader: put aws-ofi-nccl first.
    "LD_LIBRARY_PATH": ":".join(OFI_NCCL_LIBS) + ":$LD_LIBRARY_PATH",
    "NCCL_SOCKET_IFNAME": "^lo,docker",  # bootstrap over the VPC interface, not loopback/docker bridges
    # INFO for the INIT and NET subsystems only: one "NET/OFI ..." (EFA) or "Using network Socket" (TCP fallback)
    # line per rank in the job log, instead of WARN hiding a silent fallback to sockets.
    "NCCL_DEBUG": "INFO",
    "NCCL_DEBUG_SUBSYS": "INIT,NET",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a dead peer aborts the collective instead of hanging
}

PROFILES: dict[str, dict[str, str]] = {"aws-efa": AWS_EFA, "none": {}}

FORWARDED_PREFIXES = ("NCCL_", "FI_", "GLOO_", "TORCH_", "DDLC_", "DS_", "HOROVOD_", "OMP_NUM_THREADS", "PYTHONPATH")


def parse_env_overrides(items: Sequence[str]) -> dict[str, str | None]:
    """`KEY=VALUE` -> set, `KEY=` -> unset (None)."""
    parsed: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum() or key[0].isdigit():
            raise UserError(f"--env {item!r}: expected KEY=VALUE (KEY= removes a default)")
        parsed[key] = value if value != "" else None
    return parsed


def instance_profile(env: dict[str, str], instance_type: Optional[str]) -> dict[str, str]:
    """The profile trimmed to what the instance type has (from the instance table): no GPUDirect RDMA setting
    where there is none (p3dn), no EFA settings where there is no EFA (p3, g5). Unknown or no type: unchanged."""
    if not instance_type:
        return env
    from ddlc.infra.instance_types import GPU_INSTANCE_TYPES

    spec = GPU_INSTANCE_TYPES.get(instance_type)
    if spec is None:
        return env
    env = dict(env)
    if not spec.gpudirect_rdma:
        env.pop("FI_EFA_USE_DEVICE_RDMA", None)
    if not spec.has_efa:
        for key in [k for k in env if k.startswith("FI_")] + ["LD_LIBRARY_PATH"]:
            env.pop(key, None)
    return env


def node_environment(
    profile: str = "aws-efa",
    overrides: Mapping[str, str | None] | None = None,
    local_env: Mapping[str, str] | None = None,
    instance_type: Optional[str] = None,
) -> dict[str, str]:
    """The variables every node's launcher is started with."""
    if profile not in PROFILES:
        raise UserError(f"--env-profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if instance_type:
        from ddlc.infra.instance_types import gpu_instance_type

        gpu_instance_type(instance_type, "--instance-type")  # an unknown type is an error, not silently ignored
    env = instance_profile(dict(PROFILES[profile]), instance_type)
    for key, value in (local_env or {}).items():
        if key.startswith(FORWARDED_PREFIXES):
            env[key] = value
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return dict(sorted(env.items()))


def shell_assignment(key: str, value: str) -> str:
    """`KEY=VALUE` for a shell command line; a trailing `:$KEY` keeps what the node already has, after VALUE."""
    own = f":${key}"
    if value.endswith(own):
        return f"{key}={shlex.quote(value[: -len(own)])}\"${{{key}:+:${key}}}\""
    return f"{key}={shlex.quote(value)}"
