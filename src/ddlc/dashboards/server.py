"""The local dashboard's web server: one page, Plotly.js from the installed `plotly` package (never a CDN),
JSON under /api. Standard library HTTP server; binds 127.0.0.1 unless told otherwise.

    server = DashboardServer(PanelData(...), port=0).start()
    print(server.url)
    ...
    server.close()
"""

from __future__ import annotations

import json
import math
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ddlc.dashboards.definition import DASHBOARDS, GPU_UTILIZATION_TARGET_PERCENT, definition_as_json
from ddlc.dashboards.panel_data import PanelData
from ddlc.errors import UserError

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
            "/": ("text/html; charset=utf-8", _static("index.html")),
            "/static/dashboard.js": ("text/javascript; charset=utf-8", _static("dashboard.js")),
        }
        handler = self._handler()
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except (OSError, OverflowError) as error:  # in use, no such address, or not a port number at all
            reason = getattr(error, "strerror", None) or error
            raise UserError(f"--port {port}: cannot listen on {host}:{port}: {reason}") from None
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ddlc-dashboard", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the CLI prints the URL
                pass

            def _send(self, status: int, content_type: str, body: bytes, cache: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, payload: Any, status: int = HTTPStatus.OK) -> None:
                self._send(status, "application/json", _dumps(payload))

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                path = parsed.path
                try:
                    if path in server._files:
                        content_type, body = server._files[path]
                        self._send(HTTPStatus.OK, content_type, body)
                    elif path == "/static/plotly.min.js":
                        self._send(HTTPStatus.OK, "text/javascript; charset=utf-8", server._plotly.read_bytes(), cache=True)
                    elif path == "/api/definition":
                        self._json(server.definition())
                    elif path.startswith("/api/dashboards/"):
                        slug = path.rsplit("/", 1)[-1]
                        run = (query.get("run") or [""])[0] or None
                        self._json(server.data.dashboard_data(slug, run))
                    elif path == "/healthz":
                        self._send(HTTPStatus.OK, "text/plain", b"ok")
                    else:
                        self._json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)
                except UserError as error:
                    self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)

        return Handler


__all__ = ["DashboardServer", "DEFAULT_HOST", "DEFAULT_PORT", "DASHBOARDS", "plotly_js_path"]
