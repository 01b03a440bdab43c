"""Connection guards on a real socket: the cap, header and body deadlines, JSON refusals."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.connections import limits_from
from tests.conftest import Gateway, GatewayFactory
from tests.fake_upstream import MODEL, FakeUpstream, completion
from tests.servers import ServerThread

LIMITS = {"server": {"max_connections": 6, "header_timeout_s": 0.3, "body_timeout_s": 0.3}}


@pytest.fixture
def guarded(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway(LIMITS)


def _connect(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.server.port), timeout=5)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes: status, headers, body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _assert_openai_error(body: bytes, code: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]


@contextlib.contextmanager
def _idle_connections(gateway: Gateway, count: int) -> Iterator[list[socket.socket]]:
    socks = [_connect(gateway) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _refused(gateway: Gateway, reason: str) -> float:
    with gateway.http() as http:
        text = http.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith(f'gateway_connections_refused_total{{reason="{reason}"}}'))
    return float(line.rsplit(" ", 1)[1])


def test_connections_over_the_cap_get_a_json_503_and_the_gateway_recovers(
    upstream: FakeUpstream, make_gateway: GatewayFactory
) -> None:
    # A long header deadline: the idle sockets must hold their slots for the whole test.
    gateway = make_gateway({"server": {"max_connections": 6, "header_timeout_s": 30}})
    before = _refused(gateway, "too_many_connections")
    with _idle_connections(gateway, 6) as idle:
        extra = _connect(gateway)
        status, headers, body = _read_response(extra)
        extra.close()
        assert status == 503 and headers["content-type"] == "application/json"
        _assert_openai_error(body, "too_many_connections")
        assert len(idle) == 6
    assert _refused(gateway, "too_many_connections") == before + 1
    upstream.enqueue(completion("back"))
    answer = gateway.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "back"


def test_a_silent_connection_is_closed_at_the_header_deadline(guarded: Gateway) -> None:
    sock = _connect(guarded)
    status, _, body = _read_response(sock)
    sock.close()
    assert status == 408
    _assert_openai_error(body, "request_timeout")


def test_headers_trickled_past_the_deadline_get_408(guarded: Gateway) -> None:
    before = _refused(guarded, "header_timeout")
    sock = _connect(guarded)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
    status, _, body = _read_response(sock)
    sock.close()
    assert status == 408
    _assert_openai_error(body, "request_timeout")
    assert _refused(guarded, "header_timeout") == before + 1


def test_a_body_trickled_past_the_deadline_gets_408(upstream: FakeUpstream, guarded: Gateway) -> None:
    sock = _connect(guarded)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b'Content-Length: 200\r\n\r\n{"model": '
    )
    status, _, body = _read_first_response(sock)
    sock.close()
    assert status == 408
    _assert_openai_error(body, "request_timeout")
    assert upstream.requests == []


def _read_first_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length (the server may keep the connection open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost gateway\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: g\r\n\r\n",
    ],
)
def test_requests_uvicorn_cannot_parse_get_openai_shaped_400(guarded: Gateway, garbage: bytes) -> None:
    sock = _connect(guarded)
    sock.sendall(garbage)
    status, headers, body = _read_response(sock)
    sock.close()
    assert status == 400 and headers["content-type"] == "application/json"
    _assert_openai_error(body, "invalid_http_request")


def test_oversized_headers_get_431(guarded: Gateway) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: g\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n")
    status, _, body = _read_response(sock)
    sock.close()
    assert status == 431
    _assert_openai_error(body, "headers_too_large")


def test_keep_alive_requests_each_get_their_own_header_deadline(guarded: Gateway) -> None:
    sock = _connect(guarded)
    for _ in range(3):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: g\r\n\r\n")
        status, _, body = _read_first_response(sock)
        assert status == 200 and json.loads(body) == {"status": "ok"}
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: g\r\n")
    status, _, _ = _read_first_response(sock)
    sock.close()
    assert status == 408


def test_oversized_headers_in_one_write_get_431(guarded: Gateway) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: g\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    status, _, body = _read_response(sock)
    sock.close()
    assert status == 431
    _assert_openai_error(body, "headers_too_large")


def test_accepted_connections_have_nagle_off_even_on_worker_style_sockets(upstream: FakeUpstream) -> None:
    # uvicorn's worker sockets are created without IPPROTO_TCP, so asyncio leaves Nagle on
    # and a reused connection waits ~40 ms per request for a delayed ACK.
    config = GatewayConfig.model_validate({"upstreams": [{"name": "fake", "base_url": upstream.base_url}]})
    server = ServerThread(create_app(config), limits=limits_from(config.server), proto=0).start()
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: g\r\n\r\n")
        assert _read_first_response(client)[0] == 200
        [connection] = list(server.server.server_state.connections)
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.close()
    finally:
        server.stop()
