"""Launching jobs: locally under torchrun (`local`), and on every node of a hostfile (`multinode`, `env`).

Names are imported on first use so `ddlc launch` does not pay for torch on the head node.
"""

from importlib import import_module

_EXPORTS = {
    "LocalJob": "local", "default_nproc": "local", "plan_local_job": "local", "read_summary": "local",
    "run_local_job": "local", "Host": "multinode", "LaunchPlan": "multinode", "SSH": "multinode",
    "parse_hostfile": "multinode", "plan_launch": "multinode", "preflight": "multinode", "run_plan": "supervise",
    "ElasticRun": "supervise", "Elastic": "multinode",
    "node_environment": "env",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"ddlc.launch.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ddlc.launch' has no attribute {name!r}")
