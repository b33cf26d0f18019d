"""A cluster placement group for the GPU nodes, unless reserved capacity already decides placement."""

from __future__ import annotations

from typing import Optional

from aws_cdk import aws_ec2 as ec2
from constructs import Construct


class ClusterPlacement(Construct):
    """`placement_group` is None when a capacity reservation or capacity block is set: those fix the
    hardware already, and asking for a placement group on top makes launches fail."""

    def __init__(self, scope: Construct, construct_id: str, *, enabled: bool) -> None:
        super().__init__(scope, construct_id)
        self.placement_group: Optional[ec2.PlacementGroup] = None
        if enabled:
            self.placement_group = ec2.PlacementGroup(
                self, "PlacementGroup", strategy=ec2.PlacementGroupStrategy.CLUSTER
            )
