"""GPU instance types the cluster supports, with what the launch template needs to know about each.

`efa_interfaces` is the number of EFA devices to attach: one per network card. Zero means the type has no
EFA, and the node gets a single plain ENI instead. Keep this table the one place that knows these numbers.

The GPU columns drive the runtime profile (`ddlc.runtime.precision`, `ddlc.launch.env`, `ddlc doctor`):
`bf16` (Ampere and newer; V100 has none), `gpudirect_rdma` (EFA straight to GPU memory: p4d/p5, not p3dn) and
`nvswitch` (NVSwitch fabric: nvidia-fabricmanager must run, else CUDA error 802).

The CPU columns drive Slurm's node lines (ddlc.scheduler.cluster_spec): `sockets` x `cores_per_socket` x
`threads_per_core` is the type's vCPU count as the instance's `lscpu` shows it, and `memory_gib` is the nominal
memory from the EC2 instance type table (the OS sees a little less: Slurm gets a margin below it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ddlc.errors import UserError


@dataclass(frozen=True)
class GpuInstanceType:
    name: str
    gpus: int
    efa_interfaces: int
    # AWS's current layout (P5 family): EFA with ENA on card 0, EFA-only (no IP address) on the other cards.
    efa_only_secondary: bool = False
    gpu: str = ""  # model, e.g. "A100"
    bf16: bool = True
    gpudirect_rdma: bool = False
    nvswitch: bool = False
    sockets: int = 1
    cores_per_socket: int = 1
    threads_per_core: int = 2
    memory_gib: int = 0

    @property
    def has_efa(self) -> bool:
        return self.efa_interfaces > 0

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads_per_core


GPU_INSTANCE_TYPES: dict[str, GpuInstanceType] = {
    spec.name: spec
    for spec in (
        GpuInstanceType("p4d.24xlarge", gpus=8, efa_interfaces=4, gpu="A100", gpudirect_rdma=True, nvswitch=True,
                        sockets=2, cores_per_socket=24, memory_gib=1152),
        GpuInstanceType("p4de.24xlarge", gpus=8, efa_interfaces=4, gpu="A100", gpudirect_rdma=True, nvswitch=True,
                        sockets=2, cores_per_socket=24, memory_gib=1152),
        GpuInstanceType("p5.48xlarge", gpus=8, efa_interfaces=32, efa_only_secondary=True, gpu="H100",
                        gpudirect_rdma=True, nvswitch=True,
                        sockets=2, cores_per_socket=48, memory_gib=2048),
        GpuInstanceType("p5e.48xlarge", gpus=8, efa_interfaces=32, efa_only_secondary=True, gpu="H200",
                        gpudirect_rdma=True, nvswitch=True,
                        sockets=2, cores_per_socket=48, memory_gib=2048),
        GpuInstanceType("p5en.48xlarge", gpus=8, efa_interfaces=16, efa_only_secondary=True, gpu="H200",
                        gpudirect_rdma=True, nvswitch=True,
                        sockets=2, cores_per_socket=48, memory_gib=2048),
        GpuInstanceType("p3dn.24xlarge", gpus=8, efa_interfaces=1, gpu="V100", bf16=False,
                        sockets=2, cores_per_socket=24, memory_gib=768),
        GpuInstanceType("p3.2xlarge", gpus=1, efa_interfaces=0, gpu="V100", bf16=False,
                        cores_per_socket=4, memory_gib=61),
        GpuInstanceType("p3.8xlarge", gpus=4, efa_interfaces=0, gpu="V100", bf16=False,
                        cores_per_socket=16, memory_gib=244),
        GpuInstanceType("p3.16xlarge", gpus=8, efa_interfaces=0, gpu="V100", bf16=False,
                        sockets=2, cores_per_socket=16, memory_gib=488),
        GpuInstanceType("g5.xlarge", gpus=1, efa_interfaces=0, gpu="A10G",
                        cores_per_socket=2, memory_gib=16),
        GpuInstanceType("g5.2xlarge", gpus=1, efa_interfaces=0, gpu="A10G",
                        cores_per_socket=4, memory_gib=32),
        GpuInstanceType("g5.4xlarge", gpus=1, efa_interfaces=0, gpu="A10G",
                        cores_per_socket=8, memory_gib=64),
    )
}

# The head node only launches jobs and holds the login session: small general-purpose types.
HEAD_INSTANCE_TYPES: tuple[str, ...] = (
    "t3.large",
    "t3.xlarge",
    "m6i.large",
    "m6i.xlarge",
    "m6i.2xlarge",
    "m7i.large",
    "m7i.xlarge",
    "m7i.2xlarge",
    "c6i.2xlarge",
    "c7i.2xlarge",
)


def gpu_instance_type(name: str, field: str = "instance_type") -> GpuInstanceType:
    """Look up a GPU instance type, or fail with the list of valid choices."""
    try:
        return GPU_INSTANCE_TYPES[name]
    except KeyError:
        choices = ", ".join(GPU_INSTANCE_TYPES)
        raise UserError(f"{field}: unsupported instance type '{name}'; valid choices: {choices}") from None
