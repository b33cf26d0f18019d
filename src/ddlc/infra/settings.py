"""Per-environment cluster settings, read from the `environments` block of cdk.json's context.

Adding an environment is adding one more key there; every field below is validated at synth time, and a
bad value fails the synth with one line naming `environments.<env>.<field>`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ddlc.errors import UserError
from ddlc.infra.instance_types import HEAD_INSTANCE_TYPES, GPU_INSTANCE_TYPES, GpuInstanceType, gpu_instance_type

PROJECT = "ddlc"
# Deep Learning AMI (Ubuntu, NVIDIA driver, PyTorch), resolved by CloudFormation at deploy time.
DEFAULT_AMI_SSM_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04/latest/ami-id"
)
# CloudWatch Logs only accepts these retention periods.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VPC_SPACES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
_MOUNT_PATH = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9._-]*)+/?$")
_SYSTEM_DIRS = {"", "/home", "/mnt", "/opt", "/srv", "/var", "/tmp", "/root", "/run"}
_SYSTEM_TREES = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "proc", "sbin", "sys", "usr"}
# `scheduler`: Slurm (slurmctld on the head, slurmd on the workers: ddlc.infra.slurm_boot) or none (nodes only;
# jobs start with per-node torchrun/deepspeed/horovodrun). The same default everywhere: dev exists to try
# what prod runs, so it boots Slurm too; `--context scheduler=none` turns it off for one synth/deploy.
SCHEDULERS = ("slurm", "none")
# `grafana`: none (Prometheus and Alertmanager only), or Grafana on the head node with the exported dashboards.
GRAFANA_CHOICES = ("none", "head")


class LustreSettings(BaseModel):
    """FSx for Lustre scratch space linked to the checkpoint bucket (import and export)."""

    model_config = ConfigDict(extra="forbid")

    storage_capacity_gib: int = Field(1200, ge=1200)
    deployment_type: Literal["SCRATCH_2", "PERSISTENT_1"] = "SCRATCH_2"
    per_unit_storage_throughput: Optional[Literal[50, 100, 200]] = None
    mount_path: str = "/fsx"

    @field_validator("storage_capacity_gib")
    @classmethod
    def _capacity_steps(cls, value: int) -> int:
        if value != 1200 and value % 2400 != 0:
            raise ValueError("must be 1200 or a multiple of 2400")
        return value

    @field_validator("mount_path")
    @classmethod
    def _safe_mount_path(cls, value: str) -> str:
        # It is written unquoted into the root boot script and /etc/fstab: plain absolute paths only, and not a
        # directory the node itself lives on.
        if not _MOUNT_PATH.fullmatch(value) or ".." in value.split("/"):
            raise ValueError(f"{value!r} is not an absolute path of letters, digits, '.', '_', '-' and '/'")
        if value.rstrip("/") in _SYSTEM_DIRS or value.split("/")[1] in _SYSTEM_TREES:
            raise ValueError(f"{value!r} is a system directory of the node; use e.g. /fsx")
        return value

    @model_validator(mode="after")
    def _throughput_for_persistent(self) -> "LustreSettings":
        if self.deployment_type == "PERSISTENT_1" and self.per_unit_storage_throughput is None:
            raise ValueError("per_unit_storage_throughput is required for PERSISTENT_1 (50, 100 or 200)")
        if self.deployment_type == "SCRATCH_2" and self.per_unit_storage_throughput is not None:
            raise ValueError("per_unit_storage_throughput applies to PERSISTENT_1 only")
        return self


class ClusterEnvironment(BaseModel):
    """One deployable cluster: its size, placement, money and who gets told when something is wrong."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,19}$")
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    availability_zone: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
    instance_type: str
    node_count: int = Field(ge=1, le=64)
    head_instance_type: str = "m6i.xlarge"
    capacity_reservation_id: Optional[str] = Field(None, pattern=r"^cr-[0-9a-f]{8,17}$")
    capacity_block: bool = False
    # An ODCR created in a cluster placement group: that group's name (the workers launch into it).
    placement_group_name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9._-]{1,255}$")
    budget_usd: float = Field(gt=0)
    alert_email: str
    retain_data: bool = True
    recovery_point_objective_minutes: int = Field(60, ge=5, le=1440)
    checkpoint_noncurrent_days: int = Field(14, ge=1)
    log_retention_days: int = 30
    root_volume_gib: int = Field(200, ge=100, le=16384)
    vpc_cidr: str = "10.42.0.0/16"
    ami_ssm_parameter: str = Field(DEFAULT_AMI_SSM_PARAMETER, pattern=r"^/aws/service/.+")
    # Pin the AMI (ami-...) so routine deploys never replace GPU nodes; see the quarterly rollover in docs.
    ami_id: Optional[str] = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$")
    # Accounts on the nodes that get the cluster ssh key (passwordless ssh between nodes).
    ssh_users: list[str] = Field(default_factory=lambda: ["ubuntu"], min_length=1)
    fsx_lustre: Optional[LustreSettings] = None
    scheduler: Literal["slurm", "none"] = "slurm"
    # Jobs with distributed.strategy=horovod: build Horovod on every node at boot (NCCL on the GPU workers, so
    # gradients never go device -> host -> TCP; scripts/build_horovod.sh). Off: nodes have no Horovod.
    horovod: bool = False
    grafana: Literal["none", "head"] = "none"
    # The head node's Prometheus keeps at most this much (GiB, on its root volume); default a quarter of it.
    monitoring_retention_gib: Optional[int] = Field(None, ge=1)

    @field_validator("instance_type")
    @classmethod
    def _known_gpu_type(cls, value: str) -> str:
        if value not in GPU_INSTANCE_TYPES:
            raise ValueError(f"unsupported instance type '{value}'; valid choices: {', '.join(GPU_INSTANCE_TYPES)}")
        return value

    @field_validator("head_instance_type")
    @classmethod
    def _known_head_type(cls, value: str) -> str:
        if value not in HEAD_INSTANCE_TYPES:
            raise ValueError(f"unsupported head instance type '{value}'; valid choices: {', '.join(HEAD_INSTANCE_TYPES)}")
        return value

    @field_validator("vpc_cidr")
    @classmethod
    def _network_address(cls, value: str) -> str:
        # Host bits set ("10.42.0.1/16") would make CDK place the VPC elsewhere (10.43.0.0/16) while the endpoint
        # security group and the ssh trust patterns use the range as written. /19 is the smallest VPC that holds
        # the /20 node subnet and the /28 NAT subnet.
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError as error:
            raise ValueError(f"'{value}' is not an IPv4 network ({error})") from None
        if not 16 <= network.prefixlen <= 19:
            raise ValueError(f"'{value}': the prefix must be /16 to /19")
        if not any(network.subnet_of(ipaddress.IPv4Network(space)) for space in _VPC_SPACES):
            raise ValueError(f"'{value}' is not in a private range ({', '.join(_VPC_SPACES)})")
        return value

    @field_validator("alert_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.fullmatch(value):  # whole value: `$` let a trailing newline through
            raise ValueError(f"'{value}' is not an e-mail address")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"must be one of {', '.join(map(str, LOG_RETENTION_DAYS))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterEnvironment":
        if not self.availability_zone.startswith(self.region):
            raise ValueError(f"availability_zone '{self.availability_zone}' is not in region '{self.region}'")
        if self.capacity_block and not self.capacity_reservation_id:
            raise ValueError("capacity_block needs capacity_reservation_id (the capacity block's cr-... id)")
        if self.placement_group_name and (self.capacity_block or not self.capacity_reservation_id):
            raise ValueError("placement_group_name is for an On-Demand Capacity Reservation created in a cluster "
                             "placement group (set capacity_reservation_id; capacity blocks take none)")
        if self.monitoring_retention_gib and self.monitoring_retention_gib > self.root_volume_gib // 2:
            raise ValueError(f"monitoring_retention_gib {self.monitoring_retention_gib} is more than half of "
                             f"root_volume_gib ({self.root_volume_gib}): the head node's disk would fill up")
        for user in self.ssh_users:
            if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):  # whole: no trailing newline
                raise ValueError(f"ssh_users: '{user}' is not a user name")
        return self

    @property
    def prometheus_retention_gib(self) -> int:
        return self.monitoring_retention_gib or self.root_volume_gib // 4

    @property
    def gpu_type(self) -> GpuInstanceType:
        return gpu_instance_type(self.instance_type)

    @property
    def stack_name(self) -> str:
        return stack_name_for(self.name)

    @property
    def uses_reserved_capacity(self) -> bool:
        return self.capacity_reservation_id is not None

    @property
    def placement(self) -> str:
        """Where the workers go: 'own' (a cluster placement group of this stack), 'existing' (the group an
        ODCR was created in), or 'none' (capacity block, or an ODCR outside any placement group)."""
        if not self.capacity_reservation_id:
            return "own"
        return "existing" if self.placement_group_name else "none"


def stack_name_for(environment: str) -> str:
    return f"{PROJECT}-{environment}"


def load_environment(environments: Any, name: Optional[str], scheduler: Any = None,
                     grafana: Any = None) -> ClusterEnvironment:
    """Pick and validate one environment from the context's `environments` mapping.

    `scheduler`, `grafana`: the `--context scheduler=...`, `--context grafana=...` overrides (None: the
    environment's own setting)."""
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise UserError(f"context 'scheduler': '{scheduler}' is not one of {', '.join(SCHEDULERS)}")
    if grafana is not None and grafana not in GRAFANA_CHOICES:
        raise UserError(f"context 'grafana': '{grafana}' is not one of {', '.join(GRAFANA_CHOICES)}")
    if isinstance(environments, str):  # `--context environments='{...}'` arrives as a JSON string
        try:
            environments = json.loads(environments)
        except json.JSONDecodeError as error:
            raise UserError(f"context 'environments': invalid JSON ({error.msg})") from None
    if not isinstance(environments, Mapping) or not environments:
        raise UserError("cdk.json context 'environments': missing or empty; define at least one environment")
    choices = ", ".join(sorted(environments))
    if not name:
        raise UserError(f"no environment given: pass --context environment=<name>; valid choices: {choices}")
    if name not in environments:
        raise UserError(f"unknown environment '{name}'; valid choices: {choices}")
    raw = environments[name]
    if not isinstance(raw, Mapping):
        raise UserError(f"environments.{name}: expected a mapping of settings")
    try:
        overrides = {key: value for key, value in (("scheduler", scheduler), ("grafana", grafana))
                     if value is not None}
        return ClusterEnvironment.model_validate({"name": name, **raw, **overrides})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        location = f"environments.{name}" + (f".{where}" if where else "")
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{location}: {message}") from None


def read_cdk_context(cdk_json: str | Path) -> dict:
    """The `context` block of a cdk.json file (used by the CLI to find an environment's region)."""
    path = Path(cdk_json)
    try:
        return json.loads(path.read_text()).get("context", {})
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
