"""Which tests share a pytest-xdist worker, and a scheduler that honours it under pytest 9.

    worker (collects) -- group_of(item) --> xdist_group marker --> <DDLC_XDIST_GROUPS_DIR>/<worker>.json
    controller        -- GroupScheduling._split_scope(nodeid) --> that file's group: one work unit per group

pytest-xdist 3.8's own `--dist loadgroup` marks a test's group by appending `@group` to `item._nodeid`; pytest 9
builds node ids from `item._id`, so the suffix is lost and every test is scheduled alone: two workers then start
two sets of namespace hosts, two Slurm clusters, and split files whose module fixtures are then made twice. The
workers write each test's group to a file the controller reads instead (scheduling starts only after every worker
has finished collecting). Where the suffix does arrive (an older pytest), xdist's own rule is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

GROUPS_DIR_ENV = "DDLC_XDIST_GROUPS_DIR"
HOSTS_GROUP = "namespace-hosts"


def group_of(item: pytest.Item, repo: Path) -> str:
    """tests using `hosts`/`slurm` --> "namespace-hosts"  (one set of namespaces, one Slurm cluster)
    tests/infra, CDK synth users --> "cdk-synth"        (tests.infra.conftest caches each synth per process)
    every other test             --> its own file        (module fixtures: one shared run per file)"""
    if {"hosts", "slurm"} & set(item.fixturenames):
        return HOSTS_GROUP
    from tests.infra.conftest import synth

    path = Path(str(item.path)).resolve()
    if path.is_relative_to(repo / "tests" / "infra") or getattr(getattr(item, "module", None), "synth", None) is synth:
        return "cdk-synth"
    return str(path.relative_to(repo))


def marked_group(item: pytest.Item) -> str | None:
    names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                    for mark in item.iter_markers("xdist_group")})
    return "_".join(names) or None


def write_groups(worker_id: str, items: list[pytest.Item]) -> None:
    directory = os.environ.get(GROUPS_DIR_ENV)
    if not directory:
        return
    groups = {item.nodeid: group for item in items if (group := marked_group(item)) is not None}
    tmp = Path(directory) / f".{worker_id}.json.tmp"
    tmp.write_text(json.dumps(groups))
    tmp.replace(Path(directory) / f"{worker_id}.json")


def make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadGroupScheduling

    class GroupScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for file in sorted(Path(os.environ[GROUPS_DIR_ENV]).glob("*.json")):
                    self.groups.update(json.loads(file.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return GroupScheduling(config, log)
