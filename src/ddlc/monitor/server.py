"""HTTP serving for the node agent, the per-rank training endpoints and the local dashboard: one server, built
to hold up under many scrapers and hostile clients.

    clients --TCP--> listen backlog (128) --> waitress event loop (one thread: accepts, reads requests,
                                              writes replies; idle sockets cost no thread)
                                                 | a complete request
                                                 v
                                              `threads` workers --> WSGI app (HEAD: same headers, no body)

Why waitress and not http.server: the standard library's server listens with a backlog of 5 (kernel listen
overflows and 1-3 s SYN retransmits under 50 clients) and starts a thread per connection (800 idle sockets
were 569 threads). waitress is a maintained pure-Python WSGI server whose event loop holds idle and slow
connections without a thread each, closes connections idle past `idle_timeout_s`, and runs requests on a
fixed pool of threads. Limits on request size keep hostile requests cheap; error bodies stay small.

    server = WsgiServer(app, host="127.0.0.1", port=0, name="ddlc-metrics").start()
    server.url_host, server.port
    server.close()
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, make_wsgi_app

from ddlc.errors import UserError

BACKLOG = 1024  # pending connections the kernel keeps: the scrapers of a cluster, and bursts of many more
THREADS = 4  # request workers: requests are short; more threads only contend for the GIL
IDLE_TIMEOUT_S = 10  # a connection that sends nothing for this long is closed
CONNECTION_LIMIT = 1000  # open connections; beyond it the server stops accepting until some close
MAX_REQUEST_HEADER_BYTES = 16 * 1024  # request line + headers: a scrape needs ~200 bytes
MAX_REQUEST_BODY_BYTES = 4 * 1024  # nobody here takes a body
MAX_ERROR_BODY = 300  # characters of an error message sent back (never an echo of a whole request)
_POLL_INTERVAL_S = 0.05  # how often the event loop checks for close(): closing a rank's endpoint is quick

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

logging.getLogger("waitress").setLevel(logging.ERROR)  # no "queue depth" chatter in training logs


def bounded(text: str, limit: int = MAX_ERROR_BODY) -> str:
    """One line of at most `limit` characters, for error replies."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def head_support(app: WsgiApp) -> WsgiApp:
    """HEAD answered as GET with the body left out (Content-Length kept), for apps that only know GET."""

    def wrapped(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        environ = {**environ, "REQUEST_METHOD": "GET"}
        captured: list = []
        result = app(environ, lambda status, headers, exc_info=None: captured.append((status, list(headers))))
        try:
            length = sum(len(chunk) for chunk in result)  # generated and dropped: only its length is sent
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers = captured[-1]
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(length)))
        start_response(status, headers)
        return []

    return wrapped


def only_get(app: WsgiApp) -> WsgiApp:
    """405 for methods other than GET and HEAD, with a short body."""

    def wrapped(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            body = b"method not allowed: use GET or HEAD\n"
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD"),
                                                      ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


def _resolve(host: str, port: int, what: str) -> tuple[int, str]:
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise UserError(f"{what} host {host!r} does not resolve: {error}") from error
    except (OverflowError, UnicodeError) as error:
        raise UserError(f"{what} {host}:{port}: {error}") from error
    return family, str(sockaddr[0])


class WsgiServer:
    """A WSGI app on host:port in a daemon thread (waitress). port 0 picks a free port; `.port` is the bound one."""

    def __init__(self, app: WsgiApp, host: str = "127.0.0.1", port: int = 0, *, what: str = "metrics",
                 threads: int = THREADS, idle_timeout_s: int = IDLE_TIMEOUT_S, backlog: int = BACKLOG,
                 name: str = "ddlc-http") -> None:
        from waitress.server import create_server

        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise UserError(f"{what} port {port} is outside 0-65535")
        _, address = _resolve(host, port, what)
        self.host = host
        self._name = name
        try:
            self._server = create_server(
                head_support(only_get(app)), host=address, port=port, threads=threads, backlog=backlog,
                channel_timeout=idle_timeout_s, cleanup_interval=max(1, min(idle_timeout_s // 2, 5)),
                connection_limit=CONNECTION_LIMIT, asyncore_use_poll=True, clear_untrusted_proxy_headers=True,
                max_request_header_size=MAX_REQUEST_HEADER_BYTES, max_request_body_size=MAX_REQUEST_BODY_BYTES,
                ident="ddlc", expose_tracebacks=False,
            )
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"{what} port {host}:{port} is already in use") from error
            if error.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"{what} host {host!r} is not an address of this machine") from error
            raise UserError(f"{what} {host}:{port}: cannot listen: {error.strerror or error}") from error
        self.port: int = self._server.socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def start(self) -> "WsgiServer":
        self._thread = threading.Thread(target=self.serve_forever, name=f"{self._name}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        from waitress import wasyncore

        server = self._server
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=_POLL_INTERVAL_S, use_poll=True, map=server._map, count=1)
        finally:
            server.task_dispatcher.shutdown(timeout=2)
            wasyncore.close_all(server._map)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        else:  # never started, or served by the caller's thread that has returned
            from waitress import wasyncore

            self._server.task_dispatcher.shutdown(timeout=2)
            wasyncore.close_all(self._server._map)


class MetricsServer:
    """`GET /metrics` of a prometheus_client registry (or of a `render()` function returning the exposition bytes)
    on host:port in a daemon thread. port 0 picks a free port; `.port` is the bound one."""

    def __init__(self, registry: CollectorRegistry | None, host: str = "127.0.0.1", port: int = 0,
                 render: Optional[Callable[[], bytes]] = None) -> None:
        app = make_wsgi_app(registry) if render is None else _render_app(render)
        self._server = WsgiServer(app, host, port, what="metrics", name="ddlc-metrics").start()
        self.host = host
        self.port: int = self._server.port

    @property
    def url(self) -> str:
        return f"http://{self._server.url_host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.close()


CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


class CachedExposition:
    """`render()`: the registry's exposition text, collected at most once per `max_age_s`. Scrapes that arrive
    while a collection runs wait for it instead of starting their own (50 scrapers cost one collection, not 50).

    The values are then up to `max_age_s` old, far below any scrape interval (Prometheus: 15 s)."""

    def __init__(self, registry: CollectorRegistry, max_age_s: float = 0.5) -> None:
        from prometheus_client import generate_latest

        self._generate = lambda: generate_latest(registry)
        self.max_age_s = max_age_s
        self._body = b""
        self._at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        import time

        if time.monotonic() - self._at <= self.max_age_s:
            return self._body
        with self._lock:  # one collection at a time; the others find it fresh when they get the lock
            if time.monotonic() - self._at > self.max_age_s:
                self._body = self._generate()
                self._at = time.monotonic()
            return self._body


def _render_app(render: Callable[[], bytes]) -> WsgiApp:
    """Serve whatever `render()` returns (already-built exposition text) on every path but /favicon.ico."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
            return [b""]
        body = render()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return app


__all__ = ["BACKLOG", "CachedExposition", "MetricsServer", "WsgiServer", "bounded", "head_support"]
