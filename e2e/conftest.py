"""The end-to-end suite's servers: a real model server and ``gateway serve`` in front of it, once per session.

By default the model server is llama.cpp's ``llama-server`` with SmolLM2-135M (``e2e.local_model``), started on
a free loopback port. ``E2E_BASE_URL`` (with ``E2E_MODEL`` and ``E2E_API_KEY``) points the suite at any other
OpenAI-compatible server instead, and nothing is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e.local_model import MODEL_ALIAS, LlamaServer, free_port

ROOT = Path(__file__).resolve().parent.parent
# Context of the local llama-server per slot; the overflow test sends more than this.
LOCAL_CONTEXT_TOKENS = 4096
LOCAL_PARALLEL = 4


@dataclass
class Upstream:
    """The model server behind the gateway."""

    base_url: str
    api_key: str
    model: str
    # Tokens one request may use, when known: the overflow test needs it.
    context_tokens: int | None
    # llama.cpp's own endpoints (/slots, /metrics) are there to check that cancelled work stopped.
    llama_cpp_root: str | None

    def slots(self) -> list[dict[str, Any]] | None:
        """llama.cpp's ``/slots``, or None when the server does not say."""
        if self.llama_cpp_root is None:
            return None
        response = httpx.get(f"{self.llama_cpp_root}/slots", timeout=5)
        if response.status_code != 200:
            return None
        slots: list[dict[str, Any]] = response.json()
        return slots

    def busy_slots(self) -> int | None:
        """Slots llama.cpp is still generating on, or None when the server does not say."""
        slots = self.slots()
        return None if slots is None else sum(1 for slot in slots if slot.get("is_processing"))


def _llama_cpp_root(base_url: str) -> str | None:
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(f"{root}/props", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200 or "default_generation_settings" not in response.text:
        return None
    return root


def _llama_cpp_context(root: str | None) -> int | None:
    if root is None:
        return None
    settings = httpx.get(f"{root}/props", timeout=5).json().get("default_generation_settings", {})
    n_ctx = settings.get("n_ctx")
    return int(n_ctx) if isinstance(n_ctx, int) else None


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    base_url = os.environ.get("E2E_BASE_URL")
    if base_url:
        api_key = os.environ.get("E2E_API_KEY", "")
        model = os.environ.get("E2E_MODEL") or _first_model(base_url, api_key)
        root = _llama_cpp_root(base_url)
        context = int(os.environ["E2E_CONTEXT_TOKENS"]) if os.environ.get("E2E_CONTEXT_TOKENS") else None
        yield Upstream(base_url, api_key, model, context or _llama_cpp_context(root), root)
        return
    server = LlamaServer(
        ctx_size=LOCAL_CONTEXT_TOKENS * LOCAL_PARALLEL,
        parallel=LOCAL_PARALLEL,
        log_path=tmp_path_factory.mktemp("llama-server") / "llama-server.log",
        extra=["--seed", "7"],
    )
    server.start()
    try:
        yield Upstream(server.base_url, "", MODEL_ALIAS, _llama_cpp_context(server.root_url), server.root_url)
    finally:
        server.stop()
        print(f"\nllama-server log: {server.log_path}", file=sys.stderr)


def _first_model(base_url: str, api_key: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0) as client:
        models = client.models.list().data
    if not models:
        pytest.fail(f"{base_url} lists no models; set E2E_MODEL")
    return models[0].id


class GatewayProcess:
    """``gateway serve`` as a child process with a config written for the suite."""

    def __init__(self, upstream: Upstream, workdir: Path, overrides: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.config_path = workdir / "gateway.yaml"
        self.log_path = workdir / "gateway.log"
        config = {
            "server": {"host": "127.0.0.1", "port": self.port, "keepalive_interval_s": 5},
            "upstreams": [
                {
                    "name": "e2e",
                    "base_url": upstream.base_url,
                    "api_key": upstream.api_key,
                    "models": ["*"],
                    "timeout_s": {"connect": 5, "read": 300},
                    "retries": {"attempts": 2, "initial_wait_s": 0.1, "max_wait_s": 1, "max_total_s": 5},
                }
            ],
            # Only the tools that need no network: fetch_url and get_weather would wait on the internet.
            "tools": {"paths": [str(ROOT / "tools")], "enabled": ["calculate", "current_time"]},
            "loop": {"max_rounds": 4},
            "logging": {"level": "info", "format": "text"},
            **(overrides or {}),
        }
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("gateway")), "serve", "--config", str(self.config_path)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        pytest.fail(f"gateway not up within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of ``/metrics``, keyed by name and labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(upstream, tmp_path_factory.mktemp("gateway"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
        print(f"\ngateway log: {process.log_path}", file=sys.stderr)


@pytest.fixture(scope="session")
def model(upstream: Upstream) -> str:
    return upstream.model


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="e2e", max_retries=0, timeout=300) as sdk:
        yield sdk


@pytest.fixture
def async_client(gateway: GatewayProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="e2e", max_retries=0, timeout=300)
