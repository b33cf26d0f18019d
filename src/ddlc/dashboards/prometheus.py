"""A small Prometheus HTTP API client (query_range) for the local dashboard and the utilization report."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ddlc.errors import UserError

_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render_legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's `{{label}}` legend syntax."""
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def substitute_grafana_variables(promql: str, range_seconds: float, step_seconds: float,
                                 variables: dict[str, str] | None = None) -> str:
    """What Grafana would put in place of `$__rate_interval` and `$__range`, and of the dashboards' `$node` and
    `$run` variables (`.*`, Grafana's "All", unless `variables` says otherwise: a regex each)."""
    rate_interval = max(int(4 * step_seconds), 60)
    expr = promql.replace("$__rate_interval", f"{rate_interval}s").replace("$__range", f"{max(int(range_seconds), 60)}s")
    for name in ("node", "run"):
        expr = expr.replace(f"${name}", (variables or {}).get(name, ".*"))
    return expr


class PrometheusClient:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--prometheus: {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise UserError(f"Prometheus at {self.url} rejected {params.get('query')!r}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise UserError(f"--prometheus: cannot reach {self.url}: {getattr(error, 'reason', error)}") from None
        if body.get("status") != "success":
            raise UserError(f"Prometheus at {self.url}: {body.get('error', body)}")
        return body["data"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], list[float], list[float]]]:
        """(labels, times, values) per series; NaN samples kept as NaN."""
        expr = substitute_grafana_variables(promql, end - start, step)
        data = self._get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        result = []
        for series in data.get("result", []):
            times = [float(t) for t, _ in series["values"]]
            values = [_float(v) for _, v in series["values"]]
            result.append((series.get("metric", {}), times, values))
        return result

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        return [(s.get("metric", {}), _float(s["value"][1])) for s in data.get("result", [])]


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
