"""The node package: this checkout's wheel plus exact pins of what ddlc[s3,cloudwatch] needs, built once."""

from __future__ import annotations

import json
import re
import zipfile

import pytest

from ddlc.errors import UserError
from ddlc.infra import package_asset


def test_pins_cover_the_node_extras_exactly_and_leave_the_amis_torch_alone():
    pins = package_asset.pinned_requirements()
    names = {line.split("==")[0] for line in pins}
    assert all(re.fullmatch(r"[a-z0-9-]+==[A-Za-z0-9.+!-]+", line) for line in pins), pins
    # s3:// checkpoints, CloudWatch/discovery, the CLI itself, and their own dependencies (transitively).
    assert {"s3fs", "aiobotocore", "fsspec", "boto3", "botocore", "s3transfer", "pydantic", "pydantic-core",
            "typer", "rich", "pyyaml", "prometheus-client", "psutil", "nvidia-ml-py"} <= names
    assert not names & {"torch", "numpy", "ddlc", "aws-cdk-lib", "cdk-nag", "pytest", "moto"}


def test_missing_dependency_in_the_synth_environment_is_one_line(monkeypatch):
    from importlib import metadata

    real = metadata.distribution

    def without_s3fs(name):
        if name == "s3fs":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(package_asset.metadata, "distribution", without_s3fs)
    with pytest.raises(UserError, match=r"^node package: dependency 's3fs' is not installed in the synth environment"):
        package_asset.pinned_requirements()


def test_package_is_built_once_reproducibly_from_source(tmp_path):
    first = package_asset.build_node_package(cache_dir=tmp_path / "a")
    again = package_asset.build_node_package(cache_dir=tmp_path / "a")
    assert again == first
    other = package_asset.build_node_package(cache_dir=tmp_path / "b")  # a fresh build, same bytes
    manifest = package_asset.read_manifest(first)
    wheel = first / manifest["wheel"]
    assert (other / manifest["wheel"]).read_bytes() == wheel.read_bytes()
    assert manifest["extras"] == ["s3", "cloudwatch"] and manifest["provided_by_ami"] == ["torch", "numpy"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "ddlc/infra/ssh_key.py" in names and "ddlc/monitor/prices.yaml" in names
        meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: s3" in meta and "Provides-Extra: cloudwatch" in meta
    assert not list(package_asset.source_root().glob("build")), "the build wrote into the checkout"
    assert (first / "requirements.txt").read_text().splitlines() == package_asset.pinned_requirements()
    json.loads((first / "manifest.json").read_text())


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    first = package_asset.build_node_package(cache_dir=tmp_path)
    wheel = first / package_asset.read_manifest(first)["wheel"]
    wheel.unlink()  # e.g. a cleaner removed it, or a copy was cut short
    again = package_asset.build_node_package(cache_dir=tmp_path)
    assert (again / wheel.name).is_file()
    (again / package_asset.MANIFEST_FILE).write_text("{not json")
    assert package_asset.read_manifest(package_asset.build_node_package(cache_dir=tmp_path))["wheel"] == wheel.name
