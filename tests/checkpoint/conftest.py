"""Shared by the in-process checkpoint tests: a 1-rank gloo group (idempotent: one per process)."""

import pytest

from ddlc.runtime.distributed import init_distributed


@pytest.fixture(scope="module")
def ctx():
    return init_distributed("cpu", "gloo")
