"""The EFA security group: nodes talk to each other on every port; nothing else gets in.

EFA's OS-bypass traffic needs all protocols between members in both directions. There is no SSH rule:
operators come in through SSM Session Manager, which needs only outbound HTTPS.

With Slurm (scheduler=slurm), its ports get their own rules, again from members only: slurmctld, slurmd, and
the range srun listens on for its steps' I/O (SrunPortRange in slurm.conf). The all-traffic rule already
covers them; the named rules keep Slurm working, and readable in the console, if that rule is ever narrowed.
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from constructs import Construct


class EfaSecurityGroup(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc) -> None:
        super().__init__(scope, construct_id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="ddlc cluster nodes: all traffic among members only (EFA), no inbound from elsewhere",
            allow_all_outbound=False,
        )
        self.security_group.add_ingress_rule(
            self.security_group, ec2.Port.all_traffic(), "EFA and NCCL traffic between cluster members"
        )
        self.security_group.add_egress_rule(
            self.security_group, ec2.Port.all_traffic(), "EFA and NCCL traffic between cluster members"
        )
        # Outbound HTTPS for AWS APIs (endpoints, S3 gateway) and package installs through the NAT.
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs and package mirrors")
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(80), "HTTP to OS package mirrors (apt)")

    def allow_slurm(self, slurmctld_port: int, slurmd_port: int, srun_ports: tuple[int, int]) -> None:
        group = self.security_group
        for port, purpose in ((ec2.Port.tcp(slurmctld_port), "Slurm: slurmctld (controller, head node)"),
                              (ec2.Port.tcp(slurmd_port), "Slurm: slurmd (compute nodes)"),
                              (ec2.Port.tcp_range(*srun_ports), "Slurm: srun step I/O (SrunPortRange)")):
            group.add_ingress_rule(group, port, f"{purpose}, from cluster members only")
