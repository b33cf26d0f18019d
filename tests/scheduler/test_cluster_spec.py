"""Discovery -> ClusterSpec on a moto account: a head instance and GPU workers launched by an Auto Scaling group
with the stack's propagated tags (as `cdk deploy` leaves them), and a worker replaced by the group."""

from __future__ import annotations

import boto3
import pytest

from ddlc.errors import UserError
from ddlc.infra import discovery
from ddlc.scheduler.cluster_spec import SRUN_PORT_RANGE, cluster_spec, node_files, node_name, own_node
from ddlc.scheduler.slurm_conf import render_gres_conf, render_slurm_conf
from tests.infra.test_discovery import REGION, fake_account

IMAGE = "ami-12c6146b"  # one of moto's built-in images


def _ip_key(ip: str) -> tuple:
    return tuple(int(part) for part in ip.split("."))


def deploy(cluster: str, workers: int, instance_type: str = "p4d.24xlarge") -> dict:
    """The head instance and a worker group of `workers` like the stack's (tags propagate at launch)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    head_tags = [{"Key": "ddlc:cluster", "Value": cluster}, {"Key": "role", "Value": "head"}]
    head = ec2.run_instances(ImageId=IMAGE, InstanceType="m6i.xlarge", MinCount=1, MaxCount=1,
                             TagSpecifications=[{"ResourceType": "instance", "Tags": head_tags}])["Instances"][0]
    ec2.create_launch_template(LaunchTemplateName=f"{cluster}-worker",
                               LaunchTemplateData={"ImageId": IMAGE, "InstanceType": instance_type})
    group = f"{cluster}-workers"
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group, MinSize=workers, MaxSize=workers, DesiredCapacity=workers,
        LaunchTemplate={"LaunchTemplateName": f"{cluster}-worker", "Version": "$Latest"},
        AvailabilityZones=[f"{REGION}a"],
        Tags=[{"Key": key, "Value": value, "PropagateAtLaunch": True, "ResourceId": group,
               "ResourceType": "auto-scaling-group"}
              for key, value in (("ddlc:cluster", cluster), ("role", "worker"))],
    )
    return {"head": head, "group": group}


def workers_of(group: str) -> list[dict]:
    ids = [i["InstanceId"] for i in boto3.client("autoscaling", region_name=REGION).describe_auto_scaling_groups(
        AutoScalingGroupNames=[group])["AutoScalingGroups"][0]["Instances"]]
    reservations = boto3.client("ec2", region_name=REGION).describe_instances(InstanceIds=ids)["Reservations"]
    return sorted((i for r in reservations for i in r["Instances"]), key=lambda i: _ip_key(i["PrivateIpAddress"]))


@pytest.fixture(scope="module")
def aws():
    with fake_account():
        yield {"prod": deploy("ddlc-prod", 3), "dev": deploy("ddlc-dev", 2, "g5.xlarge")}


def test_head_controls_and_group_workers_compute_with_the_instance_table(aws):
    head, workers = aws["prod"]["head"], workers_of(aws["prod"]["group"])
    spec = cluster_spec("ddlc-prod", discovery.list_nodes("ddlc-prod", REGION))
    # Names are the EC2 hostnames (first label of the private DNS name), in discovery's (the hostfile's) order.
    assert spec.controller == head["PrivateDnsName"].split(".")[0] and spec.controller.startswith("ip-")
    assert spec.controller_address == head["PrivateIpAddress"]
    assert [n.name for n in spec.nodes] == [w["PrivateDnsName"].split(".")[0] for w in workers]
    assert [n.address for n in spec.nodes] == [w["PrivateIpAddress"] for w in workers]
    node = spec.nodes[0]
    assert (node.cpus, node.sockets, node.cores_per_socket, node.threads_per_core) == (96, 2, 24, 2)
    assert (node.gpus, node.gpu_type, node.gpu_files) == (8, "a100", "/dev/nvidia[0-7]")
    assert node.real_memory_mb == int(1152 * 1024 * 0.9)  # a margin below the nominal 1152 GiB
    conf = render_slurm_conf(spec)
    assert f"SrunPortRange={SRUN_PORT_RANGE[0]}-{SRUN_PORT_RANGE[1]}\n" in conf
    assert f"SlurmctldHost={spec.controller}({head['PrivateIpAddress']})\n" in conf
    assert (f"NodeName={node.name} NodeAddr={node.address} CPUs=96 Sockets=2 CoresPerSocket=24 ThreadsPerCore=2 "
            f"RealMemory={node.real_memory_mb} Gres=gpu:a100:8 State=UNKNOWN\n") in conf
    assert f"NodeName={node.name} Name=gpu Type=a100 File=/dev/nvidia[0-7]\n" in render_gres_conf(spec)


def test_single_gpu_type_and_own_name_for_slurmd(aws, tmp_path):
    nodes = discovery.list_nodes("ddlc-dev", REGION)
    spec = cluster_spec("ddlc-dev", nodes)
    assert {(n.cpus, n.gpus, n.gpu_type, n.gpu_files) for n in spec.nodes} == {(4, 1, "a10g", "/dev/nvidia0")}
    me = workers_of(aws["dev"]["group"])[1]
    name = node_name(own_node(nodes, me["InstanceId"], "ddlc-dev"))
    files = node_files(spec, tmp_path, slurmd_defaults=tmp_path / "slurmd", own_name=name)
    assert files[tmp_path / "slurmd"].endswith(f'SLURMD_OPTIONS="-N {name}"\n') and name == spec.nodes[1].name
    with pytest.raises(UserError, match=r"^--instance-id: i-0000 is not a running worker of cluster 'ddlc-dev'$"):
        own_node(nodes, "i-0000", "ddlc-dev")
    with pytest.raises(UserError, match="is not a running worker"):
        own_node(nodes, aws["dev"]["head"]["InstanceId"], "ddlc-dev")  # the head is no compute node


def test_a_replaced_worker_leaves_and_its_replacement_joins(aws):
    cluster = deploy("ddlc-repl", 2)
    before = cluster_spec("ddlc-repl", discovery.list_nodes("ddlc-repl", REGION))
    gone, kept = workers_of(cluster["group"])
    ec2 = boto3.client("ec2", region_name=REGION)
    ec2.terminate_instances(InstanceIds=[gone["InstanceId"]])
    # The group launches the replacement (moto does, as EC2 Auto Scaling would): its tags, a new address.
    (new,) = [i for i in workers_of(cluster["group"]) if i["InstanceId"] != kept["InstanceId"]]
    assert new["InstanceId"] != gone["InstanceId"]
    after = cluster_spec("ddlc-repl", discovery.list_nodes("ddlc-repl", REGION))
    gone_name, kept_name, new_name = (i["PrivateDnsName"].split(".")[0] for i in (gone, kept, new))
    assert {n.name for n in before.nodes} == {gone_name, kept_name}
    assert {n.name for n in after.nodes} == {kept_name, new_name}
    assert after.controller == before.controller


def test_no_head_no_workers_and_unknown_types_are_one_line_errors(aws):
    nodes = discovery.list_nodes("ddlc-prod", REGION)
    with pytest.raises(UserError, match=r"^cluster 'x': expected one running head node, found 0$"):
        cluster_spec("x", [n for n in nodes if n.role != "head"])
    with pytest.raises(UserError, match=r"^cluster 'x' has no running worker nodes \(yet\)$"):
        cluster_spec("x", [n for n in nodes if n.role == "head"])
    odd = [discovery.ClusterNode("i-1", "head", None, "m6i.xlarge", "running", "10.42.0.4"),
           discovery.ClusterNode("i-2", "worker", None, "c5.large", "running", "10.42.0.5")]
    with pytest.raises(UserError, match=r"^node i-2: instance type 'c5.large' is not in the instance table"):
        cluster_spec("x", odd)


def test_names_fall_back_to_the_address_form_of_the_hostname():
    bare = discovery.ClusterNode("i-1", "worker", None, "g5.xlarge", "running", "10.42.3.17")
    assert node_name(bare) == "ip-10-42-3-17"
    resource_named = discovery.ClusterNode("i-1", "worker", None, "g5.xlarge", "running", "10.42.3.17",
                                           private_dns_name="i-0123456789abcdef0.ec2.internal")
    assert node_name(resource_named) == "i-0123456789abcdef0"


def test_process_tracking_falls_back_to_linuxproc_where_slurm_cannot_use_cgroup_v2(tmp_path):
    """Ubuntu 22.04 (the DLAMI) mounts only cgroup v2 and ships Slurm 21.08, which has no cgroup/v2 plugin:
    proctrack/cgroup would keep slurmd from starting, so the whole cluster would not boot."""
    from ddlc.scheduler.cluster_spec import choose_process_tracking, installed_slurm_version

    v2_only, v1 = tmp_path / "v2", tmp_path / "v1"
    v2_only.mkdir(), v1.mkdir()
    (v2_only / "cgroup.controllers").write_text("cpu memory\n")
    assert choose_process_tracking((21, 8), v2_only) == "linuxproc"
    assert choose_process_tracking(None, v2_only) == "linuxproc"
    assert choose_process_tracking((22, 5), v2_only) == "cgroup"
    assert choose_process_tracking((21, 8), v1) == "cgroup"

    def fake_sinfo(argv, **_):
        import subprocess
        return subprocess.CompletedProcess(argv, 0, stdout="slurm 21.08.5\n")

    assert installed_slurm_version(fake_sinfo) == (21, 8)
