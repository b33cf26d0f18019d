"""`ddlc health`: is this node fit to train right now? Fast enough to run every minute (well under 5 s).

    live node (NVML, /dev/kmsg, /sys, disk, clock)  --readings.collect()-->  NodeReadings  <--  recorded JSON
                                                                                 |
                          gpu checks (count, Xid, ECC, row remaps)  +  node checks (EFA, disk, clock)
                                                                                 |
                                   [HealthResult ...] -> exit 0 / 1 with one line per failed check, or --json

Readings and checks are separate so every check runs without a GPU on recorded readings (`--readings FILE`,
written on a GPU node with `--record FILE`). The node agent runs the same checks periodically
(ddlc.monitor.node_health), and `ddlc launch` runs `ddlc health` on every host before it starts a node.
"""

from ddlc.ops.health.model import HealthOptions, HealthResult, failures, report
from ddlc.ops.health.readings import NodeReadings, collect
from ddlc.ops.health.run import expectations, run_checks, run_health

__all__ = ["HealthOptions", "HealthResult", "NodeReadings", "collect", "expectations", "failures", "report",
           "run_checks", "run_health"]
