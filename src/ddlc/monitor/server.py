"""Serving a prometheus_client registry over HTTP, with a bound port that can be asked for and a clean stop."""

from __future__ import annotations

import errno
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ddlc.errors import UserError

# How often the serving thread checks for close(); small so that closing a rank's endpoint is quick.
_POLL_INTERVAL_S = 0.05


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no access log line per scrape
        pass


def _server_class(host: str, port: int) -> tuple[type[ThreadingWSGIServer], str]:
    """A server class of the address family `host` resolves to (IPv4 or IPv6), and the address to bind."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server, str(sockaddr[0])


class MetricsServer:
    """`GET /metrics` on host:port in a daemon thread. port 0 picks a free port; `.port` is the bound one."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise UserError(f"metrics port {port} is outside 0-65535")
        try:
            server_class, address = _server_class(host, port)
            self._httpd = make_server(address, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
        except socket.gaierror as error:
            raise UserError(f"metrics host {host!r} does not resolve: {error}") from error
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"metrics port {host}:{port} is already in use") from error
            if error.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"metrics host {host!r} is not an address of this machine") from error
            raise
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(_POLL_INTERVAL_S,), name=f"ddlc-metrics-{port}", daemon=True
        )
        self._thread.start()
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
