"""The session's moto server (tests/conftest.py `moto`) with the bucket every ops test that needs S3 uses."""

from __future__ import annotations

import pytest

BUCKET = "ddlc-doctor"


@pytest.fixture(scope="session")
def moto(moto):
    moto.create_bucket(BUCKET)
    return moto
