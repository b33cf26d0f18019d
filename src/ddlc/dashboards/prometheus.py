"""A small Prometheus HTTP API client (query_range) for the local dashboard and the utilization report.

    check_url(url)                       at start (`ddlc report`, `ddlc dashboard`): a URL urllib can use, or a
                                         one-line UserError naming --prometheus
    PrometheusClient(url).query_range()  GET /api/v1/query_range -> [(labels, times, values)]

Every way the server can answer that is not Prometheus' (not JSON, another JSON shape, nesting past the recursion
limit, a body over MAX_BODY_BYTES, a broken HTTP response) is a UserError "--prometheus: ..." of one line, as an
unreachable server is: the report stops with exit 2, and a dashboard panel shows the line as its reason.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ddlc.errors import UserError
from ddlc.run_format import MAX_TIME

MAX_BODY_BYTES = 256 << 20  # a week of 500-point series for thousands of nodes is tens of MB
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")  # whitespace and control characters: never part of a URL

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


def check_url(url: str) -> str:
    """`url` without its trailing slash, when urllib can send a request to it; else a one-line UserError."""
    shown = repr(url if len(url) <= 80 else url[:60] + "...")

    def bad(why: str) -> UserError:
        return UserError(f"--prometheus: {shown} is not a usable URL ({why})")

    if not url.startswith(("http://", "https://")):
        raise UserError(f"--prometheus: {shown} is not an http(s) URL")
    if _UNSAFE.search(url):
        raise bad("it holds a space or a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # a bracketed host that is no IPv6 address; a port out of range
    except ValueError as error:
        raise bad(str(error)[:100]) from None
    if not host:
        raise bad("no host")
    if "@" in parts.netloc:
        raise bad("user:password@ in the URL is not supported")
    if parts.query or parts.fragment:
        raise bad("a query or fragment; give the server's base URL, e.g. http://head:9090")
    try:
        host.encode("idna")  # how the resolver will spell it: a label over 63 characters fails here
        http.client.HTTPConnection(parts.netloc)  # http.client's own checks of host and port (no connection)
    except (UnicodeError, ValueError, http.client.HTTPException) as error:
        raise bad(str(error)[:100] or type(error).__name__) from None
    return url.rstrip("/")


class NotPrometheus(Exception):
    """The server answered, but not as the Prometheus HTTP API does."""


class PrometheusClient:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = check_url(url)
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout_s) as response:
                raw = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as error:
            try:
                detail = " ".join(error.read(2000).decode(errors="replace").split())[:300]
            except (OSError, http.client.HTTPException):
                detail = ""
            raise UserError(f"Prometheus at {self.url} rejected {params.get('query')!r}: "
                            f"HTTP {error.code} {detail}".rstrip()) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
            # ValueError: what urllib/http.client raise for a URL they cannot send (check_url catches those first)
            reason = getattr(error, "reason", None) or error or type(error).__name__
            raise UserError(f"--prometheus: cannot reach {self.url}: {str(reason)[:200]}") from None
        try:
            if len(raw) > MAX_BODY_BYTES:
                raise NotPrometheus(f"an answer over {MAX_BODY_BYTES >> 20} MB")
            try:
                body = json.loads(raw)
            except RecursionError:
                raise NotPrometheus("JSON nested too deeply") from None
            except ValueError as error:  # JSONDecodeError, or bytes that are no UTF-8/16/32
                raise NotPrometheus(f"not JSON: {error}") from None
            if not isinstance(body, dict):
                raise NotPrometheus(f"a JSON {type(body).__name__}, not an object")
            if body.get("status") != "success":
                raise UserError(f"Prometheus at {self.url}: {' '.join(str(body.get('error', body)).split())[:300]}")
            if "data" not in body:
                raise NotPrometheus("no 'data' in the answer")
            return body["data"]
        except NotPrometheus as error:
            raise _not_prometheus(self.url, path, error) from None

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], list[float], list[float]]]:
        """(labels, times, values) per series; NaN samples kept as NaN."""
        expr = substitute_grafana_variables(promql, end - start, step)
        path = "/api/v1/query_range"
        data = self._get(path, {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        try:
            result = []
            for series in _results(data):
                samples = series.get("values")
                if not isinstance(samples, list):
                    raise NotPrometheus("a series without a 'values' list")
                pairs = [_sample(sample) for sample in samples]
                result.append((_labels(series), [t for t, _ in pairs], [v for _, v in pairs]))
            return result
        except NotPrometheus as error:
            raise _not_prometheus(self.url, path, error) from None

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        path = "/api/v1/query"
        data = self._get(path, params)
        try:
            return [(_labels(series), _sample(series.get("value"))[1]) for series in _results(data)]
        except NotPrometheus as error:
            raise _not_prometheus(self.url, path, error) from None


def _not_prometheus(url: str, path: str, error: NotPrometheus) -> UserError:
    return UserError(f"--prometheus: {url} does not answer {path} as Prometheus does ({str(error)[:150]})")


def _results(data: Any) -> list:
    if not isinstance(data, dict) or not isinstance(data.get("result", []), list):
        raise NotPrometheus("'data' is not an object with a 'result' list")
    results = data.get("result", [])
    if not all(isinstance(series, dict) for series in results):
        raise NotPrometheus("a series that is not an object")
    return results


def _labels(series: dict) -> dict[str, str]:
    labels = series.get("metric", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise NotPrometheus("a series whose 'metric' is not an object of strings")
    return labels


def _sample(sample: Any) -> tuple[float, float]:
    """[unix time, "value"] -> (time, value); the time must be a date (Prometheus' own never is anything else)."""
    if not isinstance(sample, list) or len(sample) != 2:
        raise NotPrometheus(f"a sample that is not [time, value]: {str(sample)[:40]}")
    stamp = sample[0]
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not 0 <= stamp <= MAX_TIME:
        raise NotPrometheus(f"a sample time that is not a date: {str(stamp)[:40]}")
    return float(stamp), _float(sample[1])


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
