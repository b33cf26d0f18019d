"""One moto S3 server (a real HTTP endpoint on 127.0.0.1) for every ops test that needs S3."""

from __future__ import annotations

import pytest

from tests.support import MotoServer

BUCKET = "ddlc-doctor"


@pytest.fixture(scope="session")
def moto():
    server = MotoServer()
    server.create_bucket(BUCKET)
    yield server
    server.stop()
