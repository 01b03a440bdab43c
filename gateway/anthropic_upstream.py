"""An upstream that speaks Anthropic's Messages API, beneath a loop that speaks chat completions.

The loop, the server tools and every client protocol stay as they are: this adapter
sends each chat-completions request as a Messages request (``anthropic_request``)
and hands back Messages answers and streams as chat completions and chunks
(``anthropic_answer``). Pooling, retries, timeouts and error mapping are the
OpenAI-compatible upstream's own; only the wire differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from yarl import URL

from gateway.anthropic_answer import ChunkTranslator, chat_completion
from gateway.anthropic_request import messages_request
from gateway.config import UpstreamConfig
from gateway.redaction import Redactor
from gateway.sse import SSEBatch
from gateway.upstream import Upstream, UpstreamHeaders


class AnthropicUpstream(Upstream):
    """``api: anthropic``: the key as ``x-api-key`` with ``anthropic-version``, requests to ``/messages``."""

    def __init__(self, config: UpstreamConfig, redactor: Redactor) -> None:
        super().__init__(config, redactor)
        headers = dict(config.headers)
        if config.api_key:
            headers["x-api-key"] = config.api_key
        headers["anthropic-version"] = config.anthropic_version
        headers["Content-Type"] = "application/json"
        self._headers = headers
        self._chat_url = URL(f"{config.base_url}/messages")

    def _messages_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return messages_request(body, default_max_tokens=self.config.default_max_tokens)

    async def complete(self, body: dict[str, Any], headers: UpstreamHeaders) -> dict[str, Any]:
        return chat_completion(await super().complete(self._messages_body(body), headers))

    @asynccontextmanager
    async def stream(self, body: dict[str, Any], headers: UpstreamHeaders) -> AsyncIterator[AsyncIterator[SSEBatch]]:
        async with super().stream(self._messages_body(body), headers) as events:
            yield _as_chunks(events)


async def _as_chunks(events: AsyncIterator[SSEBatch]) -> AsyncIterator[SSEBatch]:
    """The stream's Messages events, read in batches, as chat-completion chunks in the same batches."""
    translator = ChunkTranslator()
    feed = translator.feed
    async for batch in events:
        chunks: SSEBatch = []
        for event in batch:
            if event is not None:  # Messages streams end with message_stop, not [DONE]
                chunks.extend(feed(event.data))
        if chunks:
            yield chunks


def upstream_for(config: UpstreamConfig, redactor: Redactor) -> Upstream:
    """The client for an upstream entry, by its ``api``."""
    if config.api == "anthropic":
        return AnthropicUpstream(config, redactor)
    return Upstream(config, redactor)
