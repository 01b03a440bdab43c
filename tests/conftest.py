"""Shared fixtures: a scripted fake upstream and the gateway, both real servers on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.connections import limits_from
from gateway.tools import FunctionTool
from tests.fake_upstream import FakeUpstream
from tests.servers import ServerThread

TOOL_FIXTURES = Path(__file__).parent / "tool_fixtures"


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self.server = ServerThread(self.app, limits=limits_from(config.server))
        self._clients: list[openai.OpenAI] = []

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, api_key: str = "sk-test", **kwargs: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)
        self._clients.append(client)
        return client

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.server.stop()

    def async_client(self, api_key: str = "sk-test", **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def tool_state(self, name: str = "add") -> dict[str, Any]:
        """Module globals of the loaded test tools (the registry imports its own copy of the file)."""
        tool = self.app.state.gateway.registry.get(name)
        assert isinstance(tool, FunctionTool)
        return tool.fn.__globals__

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(upstream: FakeUpstream) -> Iterator[GatewayFactory]:
    """Start a gateway whose default upstream is the fake; ``overrides`` deep-merge into the config.

    ``upstream_overrides`` merge into the first upstream entry.
    """
    started: list[Gateway] = []

    def factory(overrides: dict[str, Any] | None = None, upstream_overrides: dict[str, Any] | None = None) -> Gateway:
        first = deep_merge(
            {
                "name": "fake",
                "base_url": upstream.base_url,
                "api_key": "upstream-secret",
                "models": ["*"],
                "timeout_s": {"connect": 2, "read": 10},
                "retries": {"attempts": 3, "initial_wait_s": 0.01, "max_wait_s": 0.05},
            },
            upstream_overrides or {},
        )
        raw = deep_merge(
            {
                "upstreams": [first],
                "tools": {"paths": [str(TOOL_FIXTURES)]},
                "loop": {"default_timeout_s": 5},
                "server": {"keepalive_interval_s": 15},
            },
            overrides or {},
        )
        gateway = Gateway(GatewayConfig.model_validate(raw))
        gateway.server.start()
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()
