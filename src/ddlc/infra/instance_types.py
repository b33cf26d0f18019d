"""GPU instance types the cluster supports, with what the launch template needs to know about each.

`efa_interfaces` is the number of EFA devices to attach: one per network card. Zero means the type has no
EFA, and the node gets a single plain ENI instead. Keep this table the one place that knows these numbers.
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

    @property
    def has_efa(self) -> bool:
        return self.efa_interfaces > 0


GPU_INSTANCE_TYPES: dict[str, GpuInstanceType] = {
    spec.name: spec
    for spec in (
        GpuInstanceType("p4d.24xlarge", gpus=8, efa_interfaces=4),
        GpuInstanceType("p4de.24xlarge", gpus=8, efa_interfaces=4),
        GpuInstanceType("p5.48xlarge", gpus=8, efa_interfaces=32, efa_only_secondary=True),
        GpuInstanceType("p5e.48xlarge", gpus=8, efa_interfaces=32, efa_only_secondary=True),
        GpuInstanceType("p5en.48xlarge", gpus=8, efa_interfaces=16, efa_only_secondary=True),
        GpuInstanceType("p3dn.24xlarge", gpus=8, efa_interfaces=1),
        GpuInstanceType("p3.2xlarge", gpus=1, efa_interfaces=0),
        GpuInstanceType("p3.8xlarge", gpus=4, efa_interfaces=0),
        GpuInstanceType("p3.16xlarge", gpus=8, efa_interfaces=0),
        GpuInstanceType("g5.xlarge", gpus=1, efa_interfaces=0),
        GpuInstanceType("g5.2xlarge", gpus=1, efa_interfaces=0),
        GpuInstanceType("g5.4xlarge", gpus=1, efa_interfaces=0),
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
