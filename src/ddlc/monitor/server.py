"""Serving a prometheus_client registry over HTTP, with a bound port that can be asked for and a clean stop."""

from __future__ import annotations

import errno
import socket

from prometheus_client import CollectorRegistry, start_http_server

from ddlc.errors import UserError


class MetricsServer:
    """`GET /metrics` on host:port in a daemon thread. port 0 picks a free port; `.port` is the bound one."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise UserError(f"metrics port {port} is outside 0-65535")
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except socket.gaierror as error:
            raise UserError(f"metrics host {host!r} does not resolve: {error}") from error
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"metrics port {host}:{port} is already in use") from error
            if error.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"metrics host {host!r} is not an address of this machine") from error
            raise
        self.host = host
        self.port: int = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
