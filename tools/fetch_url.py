"""The ``fetch_url`` tool: GET a public web page and return its text.

The URL comes from a model, so it is treated as hostile (SSRF). Every hop, the
first request and each redirect, resolves the host once, refuses it if any
address is private, loopback, link-local, site-local, multicast, reserved,
unspecified or otherwise not global (IPv6 addresses that embed an IPv4 one, as
mapped, 6to4 or NAT64 addresses do, are judged by the IPv4 address they reach),
and then connects to exactly the address that was checked: the URL is rewritten
to that IP, the original name goes in the ``Host`` header and, for https, in the
TLS SNI (which is also the name the certificate is checked against). A DNS
answer that changes between check and connect cannot redirect the request.
Hosts, IPs or CIDRs in ``allow_hosts`` skip the address check.

Settings (``tools.settings.fetch_url``): ``allow_hosts`` (list, default empty),
``max_bytes`` (default 1 000 000), ``timeout_s`` (whole fetch, default 10).
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import socket
from html.parser import HTMLParser
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.tools import ToolContext, tool

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TEXT_MEDIA = ("application/json", "application/xml", "application/javascript", "application/x-javascript")
_USER_AGENT = "llm-tool-gateway fetch_url"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """The URL was refused or could not be fetched; the message says which and why."""


class FetchSettings(BaseModel):
    """``tools.settings.fetch_url``."""

    model_config = ConfigDict(extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list)
    max_bytes: int = Field(1_000_000, gt=0)
    timeout_s: float = Field(10.0, gt=0)


class AllowList:
    """Hostnames, addresses and networks exempt from the private-address check."""

    def __init__(self, entries: list[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[IPNetwork] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(_normal_host(entry))

    def allows_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        embedded = _embedded_ipv4(address)
        candidates = [address] if embedded is None else [address, embedded]
        return any(candidate in network for candidate in candidates for network in self.networks)


def _normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through a translation, if it embeds one.

    ::ffff:a.b.c.d (mapped), 2002:AABB:CCDD::/48 (6to4) and 64:ff9b::a.b.c.d (NAT64)
    all lead to the IPv4 host; Python calls several of them global whatever they embed.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from, or None if it is a public address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1, yet some Pythons (3.11.7) do not call it loopback.
        return blocked_reason(embedded)
    checks = (
        ("unspecified", address.is_unspecified),
        # fec0::/10, deprecated but still routed inside some networks; Python calls it global.
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Catches the rest of the special-purpose registry, e.g. 100.64.0.0/10 (carrier-grade NAT).
        ("non-public", not address.is_global),
    )
    return next((f"a {label} address" for label, hit in checks if hit), None)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(f"host {host!r} has no addresses")
    return addresses


async def _checked_addresses(url: httpx.URL, allow: AllowList) -> list[IPAddress]:
    """The addresses ``url`` may be fetched from; refuses the URL if any is internal."""
    if url.scheme not in ("http", "https"):
        raise FetchError(f"refusing {url}: only http:// and https:// URLs can be fetched")
    host = url.raw_host.decode("ascii")
    if not host:
        raise FetchError(f"refusing {url}: the URL has no host")
    addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if allow.allows_host(url.host) or allow.allows_host(host):
        return addresses
    for address in addresses:
        reason = blocked_reason(address)
        if reason is not None and not allow.allows_address(address):
            # Any bad address refuses the host: a resolver could return public and private answers together.
            raise FetchError(f"refusing {url}: {url.host} resolves to {address}, {reason}")
    return addresses


async def _open(client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress]) -> httpx.Response:
    """Send the GET to the checked addresses in turn, never letting the client resolve the name again."""
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": _USER_AGENT,
        "Accept": "text/html, text/plain;q=0.9, */*;q=0.5",
        # Compressed bodies are decoded chunk by chunk and can expand a thousandfold past max_bytes.
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    failure: httpx.ConnectError | None = None
    for address in addresses:
        pinned = url.copy_with(host=str(address))
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
    raise FetchError(f"cannot connect to {url.host}: {failure}")


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower()


def _is_text(media: str) -> bool:
    return not media or media.startswith("text/") or media in _TEXT_MEDIA or media.endswith(("+json", "+xml"))


def _charset(response: httpx.Response) -> str:
    name = response.charset_encoding or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


async def _read_text(response: httpx.Response, url: httpx.URL, max_bytes: int) -> str:
    media = _media_type(response)
    if not _is_text(media):
        raise FetchError(f"{url} is {media}, not text")
    body = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        room = max_bytes - len(body)
        if len(chunk) > room:
            body += chunk[:room]
            truncated = True
            break
        body += chunk
    # A cut can split a multi-byte character; replace it rather than fail.
    text = bytes(body).decode(_charset(response), errors="replace")
    if "html" in media:
        text = html_to_text(text)
    if truncated:
        text += f"\n\n[truncated: only the first {max_bytes} bytes of {url} were read]"
    return text


async def _fetch(url: httpx.URL, allow: AllowList, settings: FetchSettings) -> str:
    for _ in range(MAX_REDIRECTS + 1):
        addresses = await _checked_addresses(url, allow)
        # A client per hop: a pooled connection is keyed by IP, and must not carry another host's TLS identity.
        # No environment proxies: a proxy would resolve the name again, behind the check.
        async with httpx.AsyncClient(timeout=settings.timeout_s, trust_env=False) as client:
            response = await _open(client, url, addresses)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    url = url.join(location)
                    continue
                if response.is_error:
                    raise FetchError(f"{url} answered HTTP {response.status_code} {response.reason_phrase}")
                return await _read_text(response, url, settings.max_bytes)
            finally:
                await response.aclose()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects, last to {url}")


@tool
async def fetch_url(url: Annotated[str, Field(min_length=1, max_length=2048)], context: ToolContext) -> str:
    """Fetch a public web page or text document and return its text (HTML reduced to visible text).

    Only public http:// and https:// addresses can be fetched; redirects are followed.
    Long documents are cut off, with a note saying so.

    Args:
        url: Absolute http:// or https:// URL to fetch, e.g. "https://example.com/page".
    """
    settings = FetchSettings.model_validate(context.settings)
    try:
        target = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from exc
    try:
        async with asyncio.timeout(settings.timeout_s):
            return await _fetch(target, AllowList(settings.allow_hosts), settings)
    except TimeoutError as exc:
        raise FetchError(f"fetching {url} took longer than {settings.timeout_s:g} s") from exc
    except httpx.InvalidURL as exc:
        raise FetchError(f"invalid redirect from {url}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    _BLOCK = frozenset(
        {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "footer",
         "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
         "section", "table", "td", "th", "title", "tr", "ul"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, one block per line."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
