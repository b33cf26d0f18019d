"""Shared synth fixtures: each (environment, overrides) is synthesized once per test session, with cdk-nag on."""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[2]


def cdk_context() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


@dataclass
class Synthesized:
    stack: Any
    template: Any  # aws_cdk.assertions.Template
    template_json: dict
    template_path: Path


_CACHE: dict[str, Synthesized] = {}
_OUTDIR = Path(tempfile.mkdtemp(prefix="ddlc-cdk-test-"))
atexit.register(shutil.rmtree, _OUTDIR, ignore_errors=True)


def synth(environment: str, dashboards: tuple = (), **overrides: Any) -> Synthesized:
    """Synthesize `environment` from cdk.json with some settings overridden; app.synth() runs cdk-nag."""
    from aws_cdk.assertions import Template

    from ddlc.infra.app import build_app

    key = json.dumps([environment, overrides, [d.name for d in dashboards]], sort_keys=True)
    if key not in _CACHE:
        context = copy.deepcopy(cdk_context())
        context["environments"][environment].update(overrides)
        context["environment"] = environment
        outdir = _OUTDIR / f"out{len(_CACHE)}"
        app, stack = build_app(context, outdir=str(outdir), dashboards=dashboards)
        assembly = app.synth()
        artifact = assembly.get_stack_by_name(stack.stack_name)
        template_json = artifact.template
        _CACHE[key] = Synthesized(
            stack=stack,
            template=Template.from_json(template_json),
            template_json=template_json,
            template_path=Path(assembly.directory) / artifact.template_file,
        )
    return _CACHE[key]


@pytest.fixture(params=["dev", "prod"])
def env_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def synthesized(env_name: str) -> Synthesized:
    return synth(env_name)


def resources(template_json: dict, resource_type: str) -> dict[str, dict]:
    return {k: v for k, v in template_json["Resources"].items() if v["Type"] == resource_type}
