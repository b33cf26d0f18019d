"""Environment selection and validation: bad input fails the synth with one line listing valid choices."""

from __future__ import annotations

import copy

import pytest

from ddlc.errors import UserError
from ddlc.infra.instance_types import GPU_INSTANCE_TYPES
from ddlc.infra.settings import load_environment
from tests.infra.conftest import cdk_context


def _environments(**changes):
    environments = copy.deepcopy(cdk_context()["environments"])
    environments["prod"].update(changes)
    return environments


def test_cdk_json_environments_are_valid():
    environments = cdk_context()["environments"]
    assert {"dev", "prod"} <= set(environments)
    prod = load_environment(environments, "prod")
    assert (prod.instance_type, prod.node_count, prod.gpu_type.gpus) == ("p4d.24xlarge", 4, 8)
    assert prod.retain_data and not load_environment(environments, "dev").retain_data


def test_unknown_environment_lists_choices():
    from ddlc.infra.app import build_app

    context = copy.deepcopy(cdk_context())
    context["environment"] = "staging"
    with pytest.raises(UserError, match=r"unknown environment 'staging'; valid choices: dev, prod"):
        build_app(context)


def test_missing_environment_says_how_to_pass_it():
    with pytest.raises(UserError, match=r"--context environment=<name>; valid choices: dev, prod"):
        load_environment(cdk_context()["environments"], None)


def test_unsupported_instance_type_lists_valid_choices():
    with pytest.raises(UserError) as caught:
        load_environment(_environments(instance_type="p2.xlarge"), "prod")
    message = str(caught.value)
    assert message.startswith("environments.prod.instance_type: unsupported instance type 'p2.xlarge'")
    assert all(name in message for name in GPU_INSTANCE_TYPES)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"availability_zone": "us-west-2a"}, "not in region 'us-east-1'"),
        ({"capacity_block": True}, "capacity_block needs capacity_reservation_id"),
        ({"capacity_reservation_id": "reservation-1"}, "environments.prod.capacity_reservation_id"),
        ({"node_count": 0}, "environments.prod.node_count"),
        ({"alert_email": "nobody"}, "environments.prod.alert_email"),
        ({"log_retention_days": 10}, "environments.prod.log_retention_days: must be one of"),
        ({"head_instance_type": "p4d.24xlarge"}, "unsupported head instance type"),
        ({"fsx_lustre": {"storage_capacity_gib": 1300}}, "environments.prod.fsx_lustre.storage_capacity_gib"),
        ({"fsx_lustre": {"deployment_type": "PERSISTENT_1"}}, "per_unit_storage_throughput is required"),
        ({"typo_field": 1}, "environments.prod.typo_field"),
        # Installing "whatever the index has" is gone: the package is always this checkout's own wheel.
        ({"ddlc_package": "ddlc==0.1.0"}, "environments.prod.ddlc_package: Extra inputs are not permitted"),
        ({"placement_group_name": "bad name;"}, "environments.prod.placement_group_name"),
        ({"ssh_users": ["root; rm"]}, "ssh_users: 'root; rm' is not a user name"),
        ({"ssh_users": []}, "environments.prod.ssh_users"),
        # A trailing newline passed the `^...$` checks (into the boot script, fstab, the topic subscription).
        ({"ssh_users": ["ubuntu\n"]}, "is not a user name"),
        ({"alert_email": "ops@example.com\n"}, "environments.prod.alert_email"),
        ({"fsx_lustre": {"storage_capacity_gib": 1200, "mount_path": "/fsx\n"}}, "fsx_lustre.mount_path"),
    ],
)
def test_bad_settings_name_the_field(changes, expected):
    with pytest.raises(UserError, match=expected):
        load_environment(_environments(**changes), "prod")


def test_scheduler_is_slurm_by_default_and_can_be_turned_off():
    environments = cdk_context()["environments"]
    assert load_environment(environments, "prod").scheduler == "slurm"
    assert load_environment(environments, "dev").scheduler == "slurm"  # dev tries what prod runs
    assert load_environment(environments, "prod", scheduler="none").scheduler == "none"
    assert load_environment(_environments(scheduler="none"), "prod").scheduler == "none"
    assert load_environment(_environments(scheduler="none"), "prod", scheduler="slurm").scheduler == "slurm"
    with pytest.raises(UserError, match=r"^environments\.prod\.scheduler: Input should be 'slurm' or 'none'$"):
        load_environment(_environments(scheduler="pbs"), "prod")
    with pytest.raises(UserError, match=r"^context 'scheduler': 'SLURM' is not one of slurm, none$"):
        load_environment(environments, "prod", scheduler="SLURM")
