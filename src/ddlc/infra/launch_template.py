"""Launch template for one kind of node: EFA interfaces per network card, IMDSv2, encrypted gp3 root.

No interface sets AssociatePublicIpAddress: EC2 rejects it on launches with several network interfaces, and
the node subnet never maps public addresses anyway. Placement (group, reservation) is the worker group's.
"""

from __future__ import annotations

from typing import Optional

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from ddlc.infra.instance_types import GpuInstanceType

ROOT_DEVICE = "/dev/sda1"  # Ubuntu-based Deep Learning AMIs


def network_interfaces(gpu_type: Optional[GpuInstanceType], subnet_id: str, security_group_id: str) -> list[dict]:
    """One EFA per network card: card 0 carries the primary interface (device 0, EFA with ENA); every further
    card gets its EFA at device index 1 (`efa-only` where the type uses that layout, saving an IP address
    each). Types without EFA (and the head node) get one plain ENI."""
    def interface(card: int, device: int, kind: Optional[str]) -> dict:
        spec = {
            "NetworkCardIndex": card,
            "DeviceIndex": device,
            "SubnetId": subnet_id,
            "Groups": [security_group_id],
            "DeleteOnTermination": True,
        }
        if kind:
            spec["InterfaceType"] = kind
        return spec

    if gpu_type is None or not gpu_type.has_efa:
        return [interface(0, 0, None)]
    secondary = "efa-only" if gpu_type.efa_only_secondary else "efa"
    return [interface(0, 0, "efa")] + [interface(card, 1, secondary) for card in range(1, gpu_type.efa_interfaces)]


class NodeLaunchTemplate(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        instance_type: str,
        gpu_type: Optional[GpuInstanceType],
        machine_image: ec2.IMachineImage,
        user_data: ec2.UserData,
        instance_profile: iam.IInstanceProfile,
        subnet_id: str,
        security_group_id: str,
        root_volume_gib: int,
        capacity_reservation_id: Optional[str] = None,
        capacity_block: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            instance_type=ec2.InstanceType(instance_type),
            machine_image=machine_image,
            user_data=user_data,
            instance_profile=instance_profile,
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            detailed_monitoring=True,
            ebs_optimized=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name=ROOT_DEVICE,
                    volume=ec2.BlockDeviceVolume.ebs(
                        root_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        template = self.launch_template.node.default_child
        template.add_property_override(
            "LaunchTemplateData.NetworkInterfaces",
            network_interfaces(gpu_type, subnet_id, security_group_id),
        )
        if capacity_reservation_id:
            template.add_property_override(
                "LaunchTemplateData.CapacityReservationSpecification",
                {"CapacityReservationTarget": {"CapacityReservationId": capacity_reservation_id}},
            )
        if capacity_block:
            template.add_property_override(
                "LaunchTemplateData.InstanceMarketOptions", {"MarketType": "capacity-block"}
            )
