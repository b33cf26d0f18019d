"""`make mutate`: the mutmut configuration names files that exist, and scripts/mutate_rules.py plants one change at
a time in an alert's threshold, comparison, `for:` or range window, which the promtool tests catch."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

spec = importlib.util.spec_from_file_location("mutate_rules", REPO / "scripts" / "mutate_rules.py")
mutate_rules = importlib.util.module_from_spec(spec)
sys.modules["mutate_rules"] = mutate_rules  # dataclasses look their module up there
spec.loader.exec_module(mutate_rules)

RULE = """groups:
  - name: g
    rules:
      - record: r:x
        expr: rate(x[5m]) > 1
      - alert: A
        expr: increase(e_total{type="uncorrected"}[10m]) > 0 or y / z < 0.8
        for: 30m
      - alert: B
        # a multi-line expression (YAML block scalar): its `>-` is YAML, the PromQL is on the lines below
        expr: >-
          up{job="a"} == 0
            unless q > 3
        labels:
          severity: warning
"""


def test_mutmut_targets_and_test_files_exist():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    for path in config["only_mutate"]:
        assert (REPO / path).is_file(), path
    for argument in config["pytest_add_cli_args_test_selection"]:
        if argument.startswith("tests/"):
            assert (REPO / argument.split("::")[0]).is_file(), argument


def test_each_rule_mutant_changes_one_alert_line():
    mutants = mutate_rules.find_mutants(RULE)
    assert sorted(re.sub(r"^col \d+: ", "", m.what) for m in mutants) == sorted([
        "> -> >=", "> -> <", "< -> <=", "< -> >", "[10m] -> [5m]", "[10m] -> [20m]",
        "0 -> 0.5", "0 -> -0.5", "0.8 -> 0.88", "0.8 -> 0.72",
        "for: 30m -> 15m", "for: 30m -> 60m", "for: 30m removed",
        "== -> !=", "0 -> 0.5", "0 -> -0.5", "> -> >=", "> -> <", "3 -> 3.3", "3 -> 2.7"])
    assert {m.line for m in mutants if m.alert == "B"} == {12, 13}  # never the `expr: >-` line (11)
    assert {m.alert for m in mutants} == {"A", "B"}
    original = RULE.splitlines()
    for mutant in mutants:
        lines = mutant.text.splitlines()
        assert lines[:6] == original[:6], mutant.what  # the recording rule and the label matcher are untouched
        assert "uncorrected" in mutant.text and 'job="a"' in mutant.text and lines != original
        assert "        expr: >-" in lines


def test_a_mutant_is_tried_only_against_the_cases_of_its_alert():
    tests = mutate_rules.TESTS.read_text()
    spec = yaml.safe_load(mutate_rules.tests_for("DDLCTrainingRankDown", tests))
    assert spec["rule_files"] == ["ddlc-alerts.yml"] and spec["tests"]
    assert all(any(check["alertname"] == "DDLCTrainingRankDown" for check in case["alert_rule_test"])
               for case in spec["tests"])
    assert yaml.safe_load(mutate_rules.tests_for("NoSuchAlert", tests))["tests"] == []


def test_the_shipped_rules_have_mutants_and_the_promtool_tests_kill_one(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make sysdeps)")
    text = mutate_rules.RULES.read_text()
    mutants = mutate_rules.find_mutants(text)
    assert len(mutants) > 50
    shutil.copy(mutate_rules.TESTS, tmp_path / mutate_rules.TESTS.name)
    assert not mutate_rules.killed(promtool, text, tmp_path)
    removed = next(m for m in mutants if m.what == "for: 30m removed")
    assert mutate_rules.killed(promtool, removed.text, tmp_path)
    # a multi-line rule is mutated too, and its promtool cases catch it
    rank_down = next(m for m in mutants if m.alert == "DDLCTrainingRankDown" and m.what.endswith("== -> !="))
    (tmp_path / "rank.test.yml").write_text(mutate_rules.tests_for(rank_down.alert, mutate_rules.TESTS.read_text()))
    assert mutate_rules.verdict(promtool, rank_down.text, tmp_path, tests="rank.test.yml") == "killed"
