"""The local dashboard's web server: one page, Plotly.js from the installed `plotly` package (never a CDN),
JSON under /api. Served by ddlc.monitor.server.WsgiServer (waitress: backlog 128, idle timeout, bounded
threads, HEAD, small error bodies); binds 127.0.0.1 unless told otherwise.

    GET /                      index.html          GET /static/dashboard.js, /static/plotly.min.js
    GET /api/definition        dashboards, runs (and which are unreadable, why)
    GET /api/dashboards/<slug>?run=NAME   panel data (PanelData: cached run store, downsampled series)
        NAME percent-encoded UTF-8; a byte that is not UTF-8 (%FF) is Python's surrogateescape, as the run's
        directory name is listed in /api/definition (the page's encodeRun sends it so)

    server = DashboardServer(PanelData(...), port=0).start()
    print(server.url)
    ...
    server.close()
"""

from __future__ import annotations

import json
import math
import urllib.parse
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ddlc.dashboards.definition import DASHBOARDS, GPU_UTILIZATION_TARGET_PERCENT, definition_as_json
from ddlc.dashboards.panel_data import PanelData
from ddlc.errors import UserError
from ddlc.monitor.server import WsgiServer, bounded

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def plotly_js_path() -> Path:
    """plotly.min.js shipped inside the `plotly` Python package (pip install 'ddlc[dashboards]')."""
    try:
        import plotly
    except ModuleNotFoundError:
        raise UserError("the local dashboard needs plotly: pip install 'ddlc[dashboards]'") from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise UserError(f"plotly is installed but {path} is missing; reinstall plotly")
    return path


def _static(name: str) -> bytes:
    return resources.files("ddlc.dashboards").joinpath("static", name).read_bytes()


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(payload: Any) -> bytes:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(payload), default=_json_default).encode()


class DashboardServer:
    def __init__(self, data: PanelData, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, refresh_ms: int = 2000) -> None:
        self.data = data
        self.refresh_ms = refresh_ms
        self._plotly = plotly_js_path()
        self._files = {
            "/": ("text/html; charset=utf-8", _static("index.html"), False),
            "/static/dashboard.js": ("text/javascript; charset=utf-8", _static("dashboard.js"), False),
            "/static/plotly.min.js": ("text/javascript; charset=utf-8", self._plotly.read_bytes(), True),
        }
        try:
            self._server = WsgiServer(self.app, host, port, what="dashboard", name="ddlc-dashboard")
        except UserError as error:
            raise UserError(f"--port {port}: cannot listen on {host}:{port}: {error}") from None
        self._host = host
        self._started = False

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self._server.url_host}:{self.port}/"

    def start(self) -> "DashboardServer":
        self._server.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._server.close()

    def definition(self) -> dict[str, Any]:
        return {
            "dashboards": definition_as_json(),
            "runs": self.data.run_names(),
            "unreadable": self.data.run_errors(),  # run name -> one-line reason
            "default_run": self.data.default_run(),
            "refresh_ms": self.refresh_ms,
            "gpu_target_percent": GPU_UTILIZATION_TARGET_PERCENT,
            "prometheus": self.data.prometheus.url if self.data.prometheus else None,
        }

    # -- the WSGI app ---------------------------------------------------------------------------------------

    def app(self, environ: dict, start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        # surrogateescape: a run directory named in bytes that are not UTF-8 is listed as Python names it
        # (os.fsdecode) and asked for as those bytes (%FF): decoded the same way, the name finds it again
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING") or "", max_num_fields=20, errors="surrogateescape")

        def send(status: int, content_type: str, body: bytes, cache: bool = False) -> list[bytes]:
            start_response(f"{status} {HTTPStatus(status).phrase}", [
                ("Content-Type", content_type), ("Content-Length", str(len(body))),
                ("Cache-Control", "max-age=3600" if cache else "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ])
            return [body]

        def reply(payload: Any, status: int = HTTPStatus.OK) -> list[bytes]:
            return send(status, "application/json", _dumps(payload))

        try:
            if path in self._files:
                content_type, body, cache = self._files[path]
                return send(HTTPStatus.OK, content_type, body, cache)
            if path == "/api/definition":
                return reply(self.definition())
            if path.startswith("/api/dashboards/"):
                slug = path.rsplit("/", 1)[-1]
                run = (query.get("run") or [""])[0] or None
                return reply(self.data.dashboard_data(slug, run))
            if path == "/healthz":
                return send(HTTPStatus.OK, "text/plain", b"ok")
            return reply({"error": bounded(f"no such page: {path}")}, HTTPStatus.NOT_FOUND)
        except UserError as error:
            return reply({"error": bounded(str(error))}, HTTPStatus.BAD_REQUEST)
        except ValueError as error:  # a query string past its limits
            return reply({"error": bounded(f"bad request: {error}")}, HTTPStatus.BAD_REQUEST)
        except Exception as error:  # never an empty reply: say what failed, in one line
            return reply({"error": bounded(f"internal error: {type(error).__name__}: {error}")},
                         HTTPStatus.INTERNAL_SERVER_ERROR)


__all__ = ["DashboardServer", "DEFAULT_HOST", "DEFAULT_PORT", "DASHBOARDS", "plotly_js_path"]
