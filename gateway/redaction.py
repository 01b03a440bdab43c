"""Keeping the gateway's own secrets out of what it relays and logs.

Upstreams sometimes echo the credentials they were sent ("Incorrect API key
provided: sk-abc…"). Every configured secret (upstream keys and header values,
MCP server headers and environment, gateway keys, the Redis password) is replaced before upstream
error text reaches a client or a log line.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from gateway.config import GatewayConfig

REDACTED = "[redacted]"

# Shorter values ("1", "true") are settings, not secrets, and would mangle text.
_MIN_SECRET_CHARS = 8


class Redactor:
    """Replaces known secrets in strings and in JSON-like payloads."""

    def __init__(self, secrets: list[str]) -> None:
        found = sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in found)) if found else None

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Redactor:
        secrets: list[str] = [k.key for k in config.auth.api_keys if k.key]
        for upstream in config.upstreams:
            secrets.append(upstream.api_key)
            secrets.extend(upstream.headers.values())
        for server in config.tools.mcp_servers:
            secrets.extend(server.headers.values())
            secrets.extend(server.env.values())
        password = urllib.parse.urlsplit(config.state.redis_url).password
        if password:
            secrets.append(urllib.parse.unquote(password))
        # "Bearer sk-…" is a header value; the bare key inside it is what gets echoed.
        secrets.extend(value.partition(" ")[2] for value in list(secrets) if " " in value)
        return cls(secrets)

    def text(self, value: str) -> str:
        if self._pattern is None:
            return value
        return self._pattern.sub(REDACTED, value)

    def payload(self, value: Any) -> Any:
        """A copy of ``value`` with every string redacted (error payloads: small, rare)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.payload(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.payload(v) for v in value]
        return value
