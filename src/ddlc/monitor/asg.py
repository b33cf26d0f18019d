"""Hand a broken node to its Auto Scaling group: this instance's id from IMDS, then SetInstanceHealth(Unhealthy).

    IMDSv2 token (PUT) -> instance-id, region -> DescribeAutoScalingInstances (is it in a group?)
      -> SetInstanceHealth(Unhealthy, ShouldRespectGracePeriod=False) -> the group terminates and replaces it

Only an instance that is in a group is marked (the head node, a laptop, a fixed CfnInstance are left alone).
The IAM policy of the node role allows the call on this cluster's group only (helper infra, ddlc.infra).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)

IMDS_URL = "http://169.254.169.254"
IMDS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    region: str


def instance_identity(imds_url: str = IMDS_URL, timeout_s: float = IMDS_TIMEOUT_S) -> Optional[InstanceIdentity]:
    """This EC2 instance's id and region through IMDSv2; None off EC2 (nothing answers)."""
    try:
        token_request = urllib.request.Request(f"{imds_url}/latest/api/token", method="PUT",
                                               headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(token_request, timeout=timeout_s) as response:
            token = response.read().decode()
        headers = {"X-aws-ec2-metadata-token": token}
        document = urllib.request.Request(f"{imds_url}/latest/dynamic/instance-identity/document", headers=headers)
        with urllib.request.urlopen(document, timeout=timeout_s) as response:
            identity = json.loads(response.read())
        return InstanceIdentity(identity["instanceId"], identity["region"])
    except (OSError, ValueError, KeyError) as error:
        log.info("no EC2 instance identity from %s (%s)", imds_url, error)
        return None


def autoscaling_client(region: str, endpoint_url: Optional[str] = None) -> Any:
    import boto3

    return boto3.client("autoscaling", region_name=region, endpoint_url=endpoint_url)


def mark_unhealthy(client: Any, instance_id: str) -> Optional[str]:
    """Mark `instance_id` Unhealthy in its Auto Scaling group; the group's name, or None when it is in none."""
    found = client.describe_auto_scaling_instances(InstanceIds=[instance_id]).get("AutoScalingInstances", [])
    if not found:
        log.warning("instance %s is in no Auto Scaling group: not marking it (replace it by hand)", instance_id)
        return None
    group = found[0]["AutoScalingGroupName"]
    client.set_instance_health(InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False)
    log.warning("marked instance %s Unhealthy in Auto Scaling group %s: it will be replaced", instance_id, group)
    return group
