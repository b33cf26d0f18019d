"""Where the GPU workers are placed: a cluster placement group, unless reserved capacity decides.

- no reservation: this stack's own `cluster` placement group;
- an On-Demand Capacity Reservation created in a cluster placement group (`placement_group_name`): that group,
  which the launches must name to use the reservation;
- a Capacity Block, or an ODCR outside any placement group: none (the block already fixes the hardware;
  naming a group the reservation is not in makes launches miss it). The synth says so in a note.
"""

from __future__ import annotations

from typing import Optional

from aws_cdk import Annotations
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from ddlc.infra.settings import ClusterEnvironment


class ClusterPlacement(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: ClusterEnvironment) -> None:
        super().__init__(scope, construct_id)
        self.placement_group: Optional[ec2.IPlacementGroup] = None
        self.choice = settings.placement
        if self.choice == "own":
            self.placement_group = ec2.PlacementGroup(
                self, "PlacementGroup", strategy=ec2.PlacementGroupStrategy.CLUSTER
            )
            self.description = "cluster placement group of this stack"
        elif self.choice == "existing":
            self.placement_group = ec2.PlacementGroup.from_placement_group_name(
                self, "ReservationPlacementGroup", settings.placement_group_name
            )
            self.description = (f"placement group {settings.placement_group_name} of capacity reservation "
                                f"{settings.capacity_reservation_id}")
        else:
            kind = "capacity block" if settings.capacity_block else "capacity reservation"
            self.description = f"no placement group ({kind} {settings.capacity_reservation_id} places the workers)"
        Annotations.of(self).add_info(f"GPU workers: {self.description}")

    @property
    def group_name(self) -> Optional[str]:
        return self.placement_group.placement_group_name if self.placement_group else None
