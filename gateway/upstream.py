"""One OpenAI-compatible upstream server: a pooled HTTP client, retries, error mapping.

Retries cover only the call that failed (never a tool that already ran) and only
while nothing has reached the client: a stream is retried until its response
headers arrive, never after.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter

from gateway import metrics
from gateway.config import UpstreamConfig
from gateway.errors import (
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
    as_openai_error,
)
from gateway.sse import SSEData, read_sse

T = TypeVar("T")

MODELS_CACHE_S = 30.0

# Client headers that describe the client's own connection or credentials, not the request.
DROPPED_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "accept-encoding",
        "expect",
        "x-gateway-trace",
    }
)


def forwardable_headers(headers: Any) -> dict[str, str]:
    """The client's headers worth passing upstream: end-to-end and credential-free."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower not in DROPPED_REQUEST_HEADERS:
            kept[lower] = value
    return kept


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _status_error(response: httpx.Response, content: bytes) -> UpstreamStatus:
    try:
        payload: Any = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        payload = content.decode("utf-8", "replace").strip()
    return UpstreamStatus(
        response.status_code,
        as_openai_error(payload, response.status_code),
        _retry_after(response),
    )


class Upstream:
    """An upstream server and the one pooled ``httpx.AsyncClient`` that talks to it."""

    def __init__(self, config: UpstreamConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.name
        headers = dict(config.headers)
        if config.api_key:
            scheme = "Api-Key" if config.auth_scheme == "api-key" else "Bearer"
            headers["Authorization"] = f"{scheme} {config.api_key}"
        headers["Content-Type"] = "application/json"
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=config.timeout_s.connect,
                read=config.timeout_s.read,
                write=config.timeout_s.read,
                pool=config.timeout_s.connect,
            ),
            limits=httpx.Limits(
                max_connections=config.max_connections, max_keepalive_connections=config.max_connections
            ),
            transport=transport,
        )
        self._backoff = wait_exponential_jitter(multiplier=config.retries.initial_wait_s, max=config.retries.max_wait_s)
        self._ok = metrics.UPSTREAM_REQUESTS.labels(self.name, "ok")
        self._duration = metrics.UPSTREAM_DURATION.labels(self.name)
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

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

    def _translate(self, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return UpstreamUnavailable(f"upstream {self.name!r} did not accept the connection in time")
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"upstream {self.name!r} did not answer in time")
        if isinstance(exc, httpx.ConnectError):
            return UpstreamUnavailable(f"upstream {self.name!r} is unreachable")
        return UpstreamUnavailable(
            f"upstream {self.name!r} connection failed: {type(exc).__name__}",
            retryable=isinstance(exc, httpx.RemoteProtocolError),
        )

    async def complete(self, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """POST a non-streaming chat completion; return the parsed JSON object."""
        content = orjson.dumps(body)

        async def attempt() -> dict[str, Any]:
            try:
                response = await self._client.post("/chat/completions", content=content, headers=headers)
            except httpx.HTTPError as exc:
                raise self._translate(exc) from exc
            if response.status_code >= 400:
                raise _status_error(response, response.content)
            try:
                parsed = orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} answered with a body that is not JSON", retryable=False
                ) from exc
            if not isinstance(parsed, dict):
                raise UpstreamUnavailable(f"upstream {self.name!r} answered with a non-object", retryable=False)
            return parsed

        return await self._with_retries(attempt)

    @asynccontextmanager
    async def stream(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[AsyncIterator[SSEData | None]]:
        """Open a streaming chat completion; yield its SSE payloads (``None`` for ``[DONE]``).

        Opening is retried; once the headers are in, failures surface as UpstreamError
        from the iterator, for the caller to report in-stream.
        """
        content = orjson.dumps(body)

        async def attempt() -> httpx.Response:
            request = self._client.build_request("POST", "/chat/completions", content=content, headers=headers)
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise self._translate(exc) from exc
            if response.status_code >= 400:
                try:
                    error_content = await response.aread()
                except httpx.HTTPError as exc:
                    raise self._translate(exc) from exc
                finally:
                    await response.aclose()
                raise _status_error(response, error_content)
            return response

        response = await self._with_retries(attempt)
        try:
            yield self._payloads(response)
        finally:
            await response.aclose()

    async def _payloads(self, response: httpx.Response) -> AsyncIterator[SSEData | None]:
        try:
            async for item in read_sse(response.aiter_raw()):
                yield item
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """Whether the server answers HTTP at all (any status counts as reachable)."""
        try:
            await self._client.get("/models", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return True

    async def list_models(self) -> list[dict[str, Any]]:
        """The upstream's own ``/models`` list, cached briefly; empty when it has none."""
        now = time.monotonic()
        if self._models_cache and now - self._models_cache[0] < MODELS_CACHE_S:
            return self._models_cache[1]
        models: list[dict[str, Any]] = []
        try:
            response = await self._client.get("/models", timeout=5.0)
            data = orjson.loads(response.content).get("data") if response.status_code == 200 else None
            if isinstance(data, list):
                models = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
            models = []
        self._models_cache = (now, models)
        return models


async def close_all(upstreams: dict[str, Upstream]) -> None:
    await asyncio.gather(*(u.aclose() for u in upstreams.values()))
