from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fake_remote import LoopbackServer, Reply

from gateway.tools import ToolContext
from gateway.tools.registry import load_module_tools

TOOL_FILE = Path(__file__).resolve().parents[2] / "tools" / "fetch_url.py"
(TOOL,) = load_module_tools(TOOL_FILE)
fetch_url = TOOL.fn
module = sys.modules[fetch_url.__module__]
FetchError: type[Exception] = module.FetchError


def context(**settings: Any) -> ToolContext:
    return ToolContext(request_id="t", key_name=None, deadline=time.monotonic() + 30, settings=settings)


def fetch(url: str, **settings: Any) -> str:
    result: str = asyncio.run(fetch_url(url, context(**settings)))
    return result


def text(body: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
    return Reply(200, body.encode(), {"Content-Type": content_type})


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.0.0.2:8080/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:10.1.2.3]/", "private"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://[fd00::1]/", "private"),
        # 6to4 and NAT64 reach the IPv4 address they embed: 192.168.1.1 and 127.0.0.1.
        ("http://[2002:c0a8:101::1]/", "private"),
        ("http://[64:ff9b::7f00:1]/", "loopback"),
        ("http://[fec0::1]/", "site-local"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.64.0.1/", "non-public"),
        # The resolver reads 2130706433 as 127.0.0.1; the check sees the resolved address.
        ("http://2130706433/", "loopback"),
    ],
)
def test_internal_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=f"refusing .* a {reason} address"):
        fetch(url)


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808"]
)
def test_public_addresses_pass_the_check(address: str) -> None:
    assert module.blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "gopher://example.com/", "example.com"])
def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(FetchError, match="only http:// and https://"):
        fetch(url)


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8"])
def test_allow_listed_address_is_fetched(remote: LoopbackServer, allowed: str) -> None:
    remote.routes["/hello"] = lambda _: text("hello from loopback")
    assert fetch(f"{remote.url}/hello", allow_hosts=[allowed]) == "hello from loopback"


def test_allow_listed_host_name_is_sent_as_host_header_while_connecting_to_the_checked_address(
    remote: LoopbackServer,
) -> None:
    remote.routes["/"] = lambda _: text("by name")
    assert fetch(f"http://LocalHost:{remote.port}/", allow_hosts=["localhost"]) == "by name"
    assert remote.received[-1].headers["host"] == f"localhost:{remote.port}"


def test_https_names_the_host_in_sni_while_connecting_to_the_checked_address() -> None:
    names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # No certificate: the handshake fails right after the ClientHello, which is all the test needs.
    server_context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve_one() -> None:
            connection, _ = listener.accept()
            with connection, contextlib.suppress(ssl.SSLError, OSError):
                server_context.wrap_socket(connection, server_side=True).close()

        thread = threading.Thread(target=serve_one)
        thread.start()
        with pytest.raises(FetchError, match="cannot connect to localhost"):
            fetch(f"https://localhost:{port}/", allow_hosts=["localhost"])
        thread.join()
    assert names == ["localhost"]


def test_html_is_reduced_to_visible_text(remote: LoopbackServer) -> None:
    page = """<!doctype html><html><head><title>Tide tables</title><style>p {color: red}</style>
    <script>var secret = 1;</script></head><body><h1>High  tide</h1><p>At 06:12 &amp; 18:40.</p>
    <ul><li>Low</li><li>High</li></ul></body></html>"""
    remote.routes["/page"] = lambda _: text(page, "text/html; charset=utf-8")
    result = fetch(f"{remote.url}/page", allow_hosts=["127.0.0.1"])
    assert result == "Tide tables\nHigh tide\nAt 06:12 & 18:40.\nLow\nHigh"


def test_body_is_decoded_with_the_declared_charset(remote: LoopbackServer) -> None:
    remote.routes["/latin"] = lambda _: Reply(
        200, "café".encode("latin-1"), {"Content-Type": "text/plain; charset=iso-8859-1"}
    )
    assert fetch(f"{remote.url}/latin", allow_hosts=["127.0.0.1"]) == "café"


def test_body_past_max_bytes_is_not_read_and_the_cut_is_announced(remote: LoopbackServer) -> None:
    remote.routes["/big"] = lambda _: text("x" * 200_000)
    result = fetch(f"{remote.url}/big", allow_hosts=["127.0.0.1"], max_bytes=1000)
    body, note = result.split("\n\n")
    assert body == "x" * 1000
    assert note == f"[truncated: only the first 1000 bytes of {remote.url}/big were read]"


def test_default_cap_is_one_megabyte(remote: LoopbackServer) -> None:
    remote.routes["/huge"] = lambda _: text("y" * 3_000_000)
    result = fetch(f"{remote.url}/huge", allow_hosts=["127.0.0.1"])
    assert result.startswith("y" * 1_000_000 + "\n\n[truncated")


def test_body_exactly_at_the_cap_is_not_marked_truncated(remote: LoopbackServer) -> None:
    remote.routes["/exact"] = lambda _: text("z" * 1000)
    assert fetch(f"{remote.url}/exact", allow_hosts=["127.0.0.1"], max_bytes=1000) == "z" * 1000


def test_redirects_are_followed(remote: LoopbackServer) -> None:
    remote.routes["/old"] = lambda _: Reply(301, headers={"Location": "/middle"})
    remote.routes["/middle"] = lambda _: Reply(302, headers={"Location": f"{remote.url}/new"})
    remote.routes["/new"] = lambda _: text("moved here")
    assert fetch(f"{remote.url}/old", allow_hosts=["127.0.0.1"]) == "moved here"


def test_redirect_to_a_private_address_is_refused(remote: LoopbackServer) -> None:
    remote.routes["/jump"] = lambda _: Reply(302, headers={"Location": "http://10.1.2.3/admin"})
    with pytest.raises(FetchError, match=r"refusing http://10\.1\.2\.3/admin: .* a private address"):
        fetch(f"{remote.url}/jump", allow_hosts=["127.0.0.1"])


def test_each_hop_is_checked_on_its_own(remote: LoopbackServer) -> None:
    # Only the name "localhost" is allowed; a redirect to the same server by IP must not ride on it.
    remote.routes["/start"] = lambda _: Reply(307, headers={"Location": f"{remote.url}/secret"})
    remote.routes["/secret"] = lambda _: text("internal")
    with pytest.raises(FetchError, match="a loopback address"):
        fetch(f"http://localhost:{remote.port}/start", allow_hosts=["localhost"])
    assert [r.path for r in remote.received] == ["/start"]


def test_redirect_loops_stop_after_five_hops(remote: LoopbackServer) -> None:
    remote.routes["/loop"] = lambda _: Reply(302, headers={"Location": "/loop"})
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(f"{remote.url}/loop", allow_hosts=["127.0.0.1"])
    assert len(remote.received) == 6


def test_redirect_to_another_scheme_is_refused(remote: LoopbackServer) -> None:
    remote.routes["/file"] = lambda _: Reply(302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(FetchError, match="only http:// and https://"):
        fetch(f"{remote.url}/file", allow_hosts=["127.0.0.1"])


def test_http_error_status_is_reported(remote: LoopbackServer) -> None:
    with pytest.raises(FetchError, match="answered HTTP 404 Not Found"):
        fetch(f"{remote.url}/missing", allow_hosts=["127.0.0.1"])


def test_binary_content_is_refused(remote: LoopbackServer) -> None:
    remote.routes["/logo.png"] = lambda _: Reply(200, b"\x89PNG\r\n", {"Content-Type": "image/png"})
    with pytest.raises(FetchError, match="is image/png, not text"):
        fetch(f"{remote.url}/logo.png", allow_hosts=["127.0.0.1"])


def test_silent_server_hits_the_timeout() -> None:
    # A listening socket that never accepts: the TCP handshake completes, no response ever comes.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(FetchError, match=r"fetching .* (took longer|failed: ReadTimeout)"):
            fetch(f"http://127.0.0.1:{port}/", allow_hosts=["127.0.0.1"], timeout_s=0.2)


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_byte"):
        fetch("http://example.com/", max_byte=10)


def test_unresolvable_host_is_reported() -> None:
    with pytest.raises(FetchError, match=re.escape("cannot resolve host 'no-such-host.invalid'")):
        fetch("http://no-such-host.invalid/")


def test_schema_offered_to_the_model() -> None:
    function = TOOL.definition()["function"]
    assert function["name"] == "fetch_url"
    parameters = function["parameters"]
    assert parameters["required"] == ["url"]
    assert list(parameters["properties"]) == ["url"]
    assert "context" not in str(parameters)
    assert parameters["properties"]["url"]["type"] == "string"
    assert "https://" in parameters["properties"]["url"]["description"]
