"""ddlc.monitor.server on its own: idle connections are closed, HEAD has headers and no body, other methods get
405, oversized requests are refused without an echo, a port in use is a one-line user error."""

from __future__ import annotations

import socket
import time

import pytest

from ddlc.errors import UserError
from ddlc.monitor.server import MetricsServer, WsgiServer

BODY = b"ddlc_up 1\n"


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])  # no Content-Length: HEAD must add it
    return [BODY]


def _exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def server():
    server = WsgiServer(_app, port=0, idle_timeout_s=1).start()
    yield server
    server.close()


def test_head_get_and_other_methods(server):
    head = _exchange(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    headers, _, body = head.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(BODY)}".encode() in headers and body == b""
    assert _exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").endswith(BODY)
    post = _exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405") and len(post) < 1000


def test_an_oversized_request_is_refused_without_an_echo(server):
    reply = _exchange(server.port, b"GET /?" + b"q" * 60_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"q" * 100 not in reply and len(reply) < 1000


def test_an_idle_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        began = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - began < 20


def test_port_in_use_and_bad_port_are_user_errors():
    first = MetricsServer(None, port=0, render=lambda: BODY)
    try:
        with pytest.raises(UserError, match="already in use"):
            MetricsServer(None, port=first.port, render=lambda: BODY)
    finally:
        first.close()
    with pytest.raises(UserError, match="outside 0-65535"):
        MetricsServer(None, port=70000, render=lambda: BODY)
