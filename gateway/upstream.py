"""One OpenAI-compatible upstream server: a pooled HTTP client, retries, error mapping.

Retries cover only the call that failed (never a tool that already ran) and only
while nothing has reached the client: a stream is retried until its response
headers arrive, never after.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter
from yarl import URL

from gateway import jsoncodec, metrics
from gateway.config import UpstreamConfig
from gateway.errors import (
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
    as_openai_error,
)
from gateway.redaction import Redactor
from gateway.sse import SSEBatch, read_sse

T = TypeVar("T")

# What a failed exchange with an upstream raises: aiohttp's errors and its timeouts.
_CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError)

MODELS_CACHE_S = 30.0
# An error status's body says what went wrong in its first bytes; a models list is names. Both bounded.
MAX_ERROR_BYTES = 1024 * 1024
MAX_MODELS_BYTES = 16 * 1024 * 1024

# Client headers that describe the client's own connection or credentials, not the request.
DROPPED_REQUEST_HEADERS = frozenset(
    {
        b"authorization",
        b"api-key",
        b"x-api-key",
        b"cookie",
        b"host",
        b"content-length",
        b"content-type",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"accept-encoding",
        b"expect",
        b"x-gateway-trace",
    }
)

UpstreamHeaders = dict[str, str]

# Control characters other than tab: some clients send them, no HTTP client may send them on.
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def forwardable_headers(raw: list[tuple[bytes, bytes]]) -> UpstreamHeaders:
    """The client's headers worth passing upstream: end-to-end and credential-free.

    A value travels as the client's bytes: UTF-8 (ASCII included) is decoded and
    re-encoded unchanged; a value in any other encoding, or with control
    characters, cannot be sent on exactly and is dropped rather than altered.
    """
    kept: UpstreamHeaders = {}
    for name, value in raw:
        lower = name.lower()
        if lower in DROPPED_REQUEST_HEADERS or _CONTROL_BYTES.search(value) is not None:
            continue
        try:
            kept[lower.decode("latin-1")] = value.decode()
        except UnicodeDecodeError:
            continue
    return kept


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return jsoncodec.dumps(body)
    except jsoncodec.JsonEncodeError as exc:
        raise UpstreamUnavailable("the request could not be encoded for the upstream", retryable=False) from exc


class Upstream:
    """An upstream server and the one pooled ``aiohttp`` session that talks to it.

    aiohttp rather than httpx: httpcore's pool walks every pooled connection on every
    request, so its cost per request grows with concurrency (bench/RESULTS.md).
    """

    def __init__(self, config: UpstreamConfig, redactor: Redactor) -> None:
        self.config = config
        self.name = config.name
        self.redactor = redactor
        headers = dict(config.headers)
        if config.api_key:
            scheme = "Api-Key" if config.auth_scheme == "api-key" else "Bearer"
            headers["Authorization"] = f"{scheme} {config.api_key}"
        headers["Content-Type"] = "application/json"
        self._headers = headers
        self._chat_url = URL(f"{config.base_url}/chat/completions")
        self._models_url = URL(f"{config.base_url}/models")
        self._endpoints: dict[str, URL] = {}
        # ``connect`` bounds waiting for a pooled connection as well as opening one.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=config.timeout_s.connect, sock_read=config.timeout_s.read
        )
        self._session: aiohttp.ClientSession | None = None
        self._backoff = wait_exponential_jitter(multiplier=config.retries.initial_wait_s, max=config.retries.max_wait_s)
        self._ok = metrics.UPSTREAM_REQUESTS.labels(self.name, "ok")
        self._duration = metrics.UPSTREAM_DURATION.labels(self.name)
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Created on first use, inside the event loop that serves requests."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0),
                headers=self._headers,
                timeout=self._timeout,
                auto_decompress=True,
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        retries = self.config.retries
        counted = self._counted(attempt)
        # Nearly every call succeeds first time: the retry machinery is only built after a failure.
        try:
            return await counted()
        except UpstreamError as exc:
            if not exc.retryable or retries.attempts <= 1:
                raise
            first = exc
        first_backoff = min(retries.max_wait_s, retries.initial_wait_s * (1 + random.random()))
        await asyncio.sleep(self._pause(first, first_backoff))

        def wait(state: RetryCallState) -> float:
            return self._pause(state.outcome.exception() if state.outcome else None, float(self._backoff(state)))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries.attempts - 1) | stop_after_delay(retries.max_total_s),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, UpstreamError) and e.retryable),
            reraise=True,
        )
        return await retrying(counted)

    def _pause(self, error: BaseException | None, backoff_s: float) -> float:
        """The wait before the next try: the server's Retry-After when it sent one, capped."""
        if isinstance(error, UpstreamStatus) and error.retry_after is not None:
            return min(error.retry_after, self.config.retries.max_wait_s)
        return backoff_s

    def _counted(self, attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        """Count and time every attempt, retries included, by outcome."""

        async def counted() -> T:
            started = time.perf_counter()
            try:
                result = await attempt()
            except UpstreamError as exc:
                metrics.UPSTREAM_REQUESTS.labels(self.name, type(exc).__name__).inc()
                raise
            finally:
                self._duration.observe(time.perf_counter() - started)
            self._ok.inc()
            return result

        return counted

    async def _read(self, response: aiohttp.ClientResponse, limit: int = 0, *, truncate: bool = False) -> bytes:
        """A whole answer body, at most ``limit`` bytes (``max_answer_bytes`` by default) once decompressed: past
        it, the first ``limit`` bytes when ``truncate``, else a 502. A model's answer is untrusted: neither a
        runaway body nor a compressed bomb may take the worker's memory."""
        limit = limit or self.config.max_answer_bytes
        length = response.content_length
        if length is not None and length <= limit and "Content-Encoding" not in response.headers:
            return await response.read()  # the common case: declared, plain and within bounds
        pieces: list[bytes] = []
        size = 0
        async for piece in response.content.iter_any():
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                if truncate:
                    return b"".join(pieces)[:limit]
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} answered with more than {limit} bytes", retryable=False
                )
        return b"".join(pieces)

    def error_payload(self, payload: Any, status: int) -> dict[str, Any]:
        """Any error this upstream sent (a status body, an error event), in OpenAI's shape, secrets redacted."""
        return self.redactor.payload(as_openai_error(payload, status))  # type: ignore[no-any-return]

    def _status_error(self, status: int, headers: Mapping[str, str], content: bytes) -> UpstreamStatus:
        try:
            payload: Any = orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            payload = content.decode("utf-8", "replace").strip()
        return UpstreamStatus(status, self.error_payload(payload, status), _retry_after(headers))

    def _translate(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamUnavailable(f"upstream {self.name!r} did not accept the connection in time")
        if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
            return UpstreamTimeout(f"upstream {self.name!r} did not answer in time")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamUnavailable(f"upstream {self.name!r} is unreachable")
        return UpstreamUnavailable(
            f"upstream {self.name!r} connection failed: {type(exc).__name__}",
            # A connection the server dropped is worth another try; a broken answer is not.
            retryable=isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError),
        )

    async def complete(self, body: dict[str, Any], headers: UpstreamHeaders) -> dict[str, Any]:
        """POST a non-streaming chat completion; return the parsed JSON object."""
        content = _encode(body)

        async def attempt() -> dict[str, Any]:
            try:
                async with self.session.post(self._chat_url, data=content, headers=headers) as response:
                    status = response.status
                    if status >= 400:
                        error = await self._read(response, MAX_ERROR_BYTES, truncate=True)
                        raise self._status_error(status, response.headers, error)
                    received = await self._read(response)
            except _CLIENT_ERRORS as exc:
                raise self._translate(exc) from exc
            parsed = self.parse_answer(received)
            if not isinstance(parsed, dict):
                raise UpstreamUnavailable(f"upstream {self.name!r} answered with a non-object", retryable=False)
            return parsed

        return await self._with_retries(attempt)

    def parse_answer(self, content: bytes) -> Any:
        """An answer's JSON; one that is not JSON is this upstream's fault (502, not retried)."""
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamUnavailable(
                f"upstream {self.name!r} answered with a body that is not JSON", retryable=False
            ) from exc

    @asynccontextmanager
    async def stream(self, body: dict[str, Any], headers: UpstreamHeaders) -> AsyncIterator[AsyncIterator[SSEBatch]]:
        """Open a streaming chat completion; yield its SSE payloads in batches (``None`` for ``[DONE]``).

        Opening is retried; once the headers are in, failures surface as UpstreamError
        from the iterator, for the caller to report in-stream.
        """
        content = _encode(body)
        response = await self._with_retries(lambda: self._open(self._chat_url, content, headers))
        try:
            yield self._payloads(response)
        finally:
            # Read to the end: the connection goes back to the pool. Cut short: it is closed.
            response.release()

    async def _open(self, url: URL, content: bytes, headers: UpstreamHeaders) -> aiohttp.ClientResponse:
        """One POST, up to its response headers; an error status is read and raised as UpstreamStatus."""
        try:
            response = await self.session.post(url, data=content, headers=headers)
            if response.status >= 400:
                try:
                    error_content = await self._read(response, MAX_ERROR_BYTES, truncate=True)
                finally:
                    response.release()
                raise self._status_error(response.status, response.headers, error_content)
        except _CLIENT_ERRORS as exc:
            raise self._translate(exc) from exc
        return response

    async def _payloads(self, response: aiohttp.ClientResponse) -> AsyncIterator[SSEBatch]:
        try:
            async for item in read_sse(response.content.iter_any()):
                yield item
        except _CLIENT_ERRORS as exc:
            raise self._translate(exc) from exc

    def endpoint(self, path: str) -> URL:
        """The upstream URL of a client-facing path: ``/v1/x`` is ``x`` under ``base_url``; any other path
        (vLLM's ``/tokenize``) is beside ``base_url``'s ``/v1``, or under ``base_url`` when it has none."""
        url = self._endpoints.get(path)
        if url is None:
            base = self.config.base_url
            url = URL(base + path[3:] if path.startswith("/v1/") else base.removesuffix("/v1") + path)
            self._endpoints[path] = url
        return url

    async def forward(self, path: str, content: bytes, headers: UpstreamHeaders) -> tuple[int, bytes]:
        """POST a client's body to ``path``; the answer's status and bytes, retried like ``complete``."""
        url = self.endpoint(path)

        async def attempt() -> tuple[int, bytes]:
            response = await self._open(url, content, headers)
            try:
                return response.status, await self._read(response)
            except _CLIENT_ERRORS as exc:
                raise self._translate(exc) from exc
            finally:
                response.release()

        return await self._with_retries(attempt)

    @asynccontextmanager
    async def forward_stream(
        self, path: str, content: bytes, headers: UpstreamHeaders
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a client's body to ``path`` and yield the response once its headers are in (opening is
        retried); the caller reads it through ``pieces``."""
        url = self.endpoint(path)
        response = await self._with_retries(lambda: self._open(url, content, headers))
        try:
            yield response
        finally:
            response.release()

    async def pieces(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """A response's body as it arrives, failures as UpstreamError."""
        try:
            async for piece in response.content.iter_any():
                yield piece
        except _CLIENT_ERRORS as exc:
            raise self._translate(exc) from exc

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """Whether the server answers HTTP at all (any status counts as reachable)."""
        try:
            async with self.session.get(self._models_url, timeout=aiohttp.ClientTimeout(total=timeout_s)):
                return True
        except _CLIENT_ERRORS:
            return False

    async def list_models(self) -> list[dict[str, Any]]:
        """The upstream's own ``/models`` list, cached briefly; empty when it has none."""
        now = time.monotonic()
        if self._models_cache and now - self._models_cache[0] < MODELS_CACHE_S:
            return self._models_cache[1]
        models = await self.fetch_models()
        self._models_cache = (now, models)
        return models

    async def fetch_models(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The upstream's own ``/models`` list, uncached; empty when it has none or does not answer."""
        try:
            async with self.session.get(self._models_url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                content = await self._read(response, MAX_MODELS_BYTES, truncate=True)  # cut: not JSON, so []
                ok = response.status == 200
            data = orjson.loads(content).get("data") if ok else None
        except (*_CLIENT_ERRORS, orjson.JSONDecodeError, AttributeError):
            return []
        if not isinstance(data, list):
            return []
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def close_all(upstreams: dict[str, Upstream]) -> None:
    await asyncio.gather(*(u.aclose() for u in upstreams.values()))
