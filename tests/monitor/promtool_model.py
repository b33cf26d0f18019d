"""promtool rule tests whose input series are what ddlc's own exporters wrote, scrape by scrape.

`Recording.scrape(minute, *collectors)` renders the real collectors (node agent parts, TrainingMetrics) the way
an HTTP scrape does and keeps every sample at that minute; `input_series()` turns the recording into promtool's
`input_series`, with `_` where a series was not exported (before it exists, after its endpoint went away).
So a rule test cannot seed a zero that the agent never writes: the first sample of a series is the exporter's.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any, Iterable

import yaml

from ddlc.monitor.alert_rules import RULES_FILE_NAME
from tests.monitor.helpers import collected


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if value != int(value) else str(int(value))


class Recording:
    def __init__(self) -> None:
        self._values: dict[tuple[str, frozenset], dict[int, float]] = {}
        self.last_minute = 0

    def scrape(self, minute: int, *collectors: Any, **target_labels: str) -> None:
        """One scrape at `minute` of collectors served by one target; `target_labels` are what Prometheus adds
        (job, instance)."""
        for (name, labels), value in collected(*collectors).items():
            if name.endswith("_created"):
                continue
            key = (name, frozenset(labels | set(target_labels.items())))
            self._values.setdefault(key, {})[minute] = value
        self.last_minute = max(self.last_minute, minute)

    def add(self, minute: int, name: str, value: float, **labels: str) -> None:
        """A series Prometheus writes itself (`up`)."""
        self._values.setdefault((name, frozenset(labels.items())), {})[minute] = value
        self.last_minute = max(self.last_minute, minute)

    def names(self) -> set[str]:
        return {name for name, _ in self._values}

    def input_series(self) -> list[dict[str, str]]:
        result = []
        for (name, labels), by_minute in sorted(self._values.items(), key=lambda item: (item[0][0], sorted(item[0][1]))):
            selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels))
            values = " ".join(_format(by_minute[m]) if m in by_minute else "_" for m in range(self.last_minute + 1))
            result.append({"series": f"{name}{{{selector}}}", "values": values})
        return result


def run_rule_test(
    promtool: str,
    workdir: Path,
    rules: str,
    recording: Recording,
    alert_tests: Iterable[dict[str, Any]] = (),
    expr_tests: Iterable[dict[str, Any]] = (),
) -> subprocess.CompletedProcess:
    """`promtool test rules` with the recording as input (1-minute scrapes and evaluations)."""
    (workdir / RULES_FILE_NAME).write_text(rules)
    test = {
        "rule_files": [RULES_FILE_NAME],
        "evaluation_interval": "1m",
        "tests": [{
            "name": "recorded from the exporters",
            "interval": "1m",
            "input_series": recording.input_series(),
            "alert_rule_test": list(alert_tests),
            "promql_expr_test": list(expr_tests),
        }],
    }
    path = workdir / "recorded.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run([promtool, "test", "rules", path.name], cwd=workdir, capture_output=True, text=True,
                          timeout=60)
