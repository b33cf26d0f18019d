"""The one place that decides which environment variables every node's launcher gets.

Order (later wins):
  1. the profile's defaults (`aws-efa`: NCCL over AWS EFA via libfabric; `none`: nothing)
  2. variables already set in the shell that runs `ddlc launch`, for names under FORWARDED_PREFIXES
     (so `export NCCL_SOCKET_IFNAME=ens5` overrides the profile)
  3. `--env KEY=VALUE` options (`--env KEY=` removes KEY)

docs/launch.md has the table; keep it in sync with PROFILES.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ddlc.errors import UserError

# NCCL over EFA on p4d/p5 (aws-ofi-nccl plugin); harmless on CPU nodes, where gloo ignores them.
AWS_EFA = {
    "FI_PROVIDER": "efa",  # libfabric: use the EFA provider, never fall back to TCP sockets
    "FI_EFA_USE_HUGE_PAGE": "0",  # huge pages for EFA buffers break fork() in data-loader workers
    "FI_EFA_USE_DEVICE_RDMA": "1",  # GPUDirect RDMA on p4d/p5
    "NCCL_SOCKET_IFNAME": "^lo,docker",  # bootstrap over the VPC interface, not loopback/docker bridges
    "NCCL_DEBUG": "WARN",
    "NCCL_ASYNC_ERROR_HANDLING": "1",  # a dead peer aborts the collective instead of hanging
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


def node_environment(
    profile: str = "aws-efa",
    overrides: Mapping[str, str | None] | None = None,
    local_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables every node's launcher is started with."""
    if profile not in PROFILES:
        raise UserError(f"--env-profile {profile!r}: choose one of {', '.join(PROFILES)}")
    env = dict(PROFILES[profile])
    for key, value in (local_env or {}).items():
        if key.startswith(FORWARDED_PREFIXES):
            env[key] = value
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return dict(sorted(env.items()))
