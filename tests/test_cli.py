"""The ``gateway`` command: config checking, tool listing, start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )


def test_check_config_prints_resolved_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        "upstreams:\n"
        "  - name: up\n"
        "    base_url: ${UP_URL:-http://localhost:9/v1}\n"
        "    api_key: ${UP_KEY}\n"
        "    headers: {X-Secret: hush}\n"
        "auth: {api_keys: [sk-client]}\n"
    )
    result = gateway_cli("check-config", "--config", str(config), env={"UP_KEY": "sk-upstream", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "http://localhost:9/v1" in result.stdout
    assert "***" in result.stdout
    for secret in ("sk-upstream", "sk-client", "hush"):
        assert secret not in result.stdout


def test_check_config_reports_each_problem_with_its_key_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "upstreams:\n  - name: up\n    base_url: localhost:8000\n    retries: {attempts: 0}\n    colour: blue\n"
    )
    result = gateway_cli("check-config", "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert f"{config}: upstreams.0.base_url: Value error, must start with http:// or https://" in lines
    assert any(line.startswith(f"{config}: upstreams.0.retries.attempts:") for line in lines)
    assert any(line.startswith(f"{config}: upstreams.0.colour: Extra inputs are not permitted") for line in lines)


def test_unset_variable_without_default_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("upstreams: [{name: a, base_url: '${NOPE}'}]", "inline.yaml", environ={})
    assert raised.value.problems == ["inline.yaml: upstreams.0.base_url: environment variable NOPE is not set"]


def test_fallback_to_unknown_upstream_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            "upstreams: [{name: a, base_url: 'http://x/v1', fallbacks: [{upstream: b}]}]", "f.yaml", environ={}
        )
    assert "falls back to unknown upstream 'b'" in raised.value.problems[0]


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "config").rglob("gateway*.yaml")) + sorted((ROOT / "config" / "examples").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_configs_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BASETEN_API_KEY", "BASETEN_MODEL_ID", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "placeholder")
    assert load_config(path).upstreams


def test_tools_list_prints_openai_definitions() -> None:
    result = gateway_cli("tools", "list")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    names = {entry["function"]["name"] for entry in listing}
    assert {"calculate", "current_time", "fetch_url", "get_weather"} <= names
    assert all(entry["type"] == "function" and entry["x_source"].startswith("python:") for entry in listing)


def test_broken_tool_module_is_a_start_up_error_naming_the_file(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "broken.py").write_text(
        "from gateway.tools import tool\n\n"
        "@tool\ndef oops(x: int) -> int:\n    return x\n\n"
        "raise ImportError('missing dependency')\n"
    )
    config = tmp_path / "g.yaml"
    config.write_text(f"upstreams: [{{name: a, base_url: 'http://127.0.0.1:9/v1'}}]\ntools: {{paths: ['{tools}']}}\n")
    result = gateway_cli("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 1
    assert str(tools / "broken.py") in result.stderr
    assert "missing dependency" in result.stderr


def test_check_config_reports_key_patterns_that_match_nothing(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        "upstreams:\n"
        "  - {name: up, base_url: 'http://localhost:9/v1', models: [qwen-7b, llama-8b]}\n"
        "auth:\n"
        "  api_keys:\n"
        "    - {name: good, key: sk-good-0001, models: ['qwen-*'], tools: [calculate, 'current_*']}\n"
        "    - {name: typo, key: sk-typo-0001, models: ['gwen-*'], tools: [calculator]}\n"
    )
    result = gateway_cli("check-config", "--config", str(config))
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert problems == [
        "error: auth.api_keys.typo.models: 'gwen-*' matches no configured model",
        "error: auth.api_keys.typo.tools: 'calculator' matches no loaded tool",
    ]


def test_tools_list_for_a_key_shows_its_effective_tools(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        "upstreams: [{name: up, base_url: 'http://localhost:9/v1'}]\n"
        "auth: {api_keys: [{name: clock-only, key: sk-clock-001, tools: ['current_*']}]}\n"
    )
    result = gateway_cli("tools", "list", "--config", str(config), "--key", "clock-only")
    assert result.returncode == 0, result.stderr
    assert [entry["function"]["name"] for entry in json.loads(result.stdout)] == ["current_time"]
    unknown = gateway_cli("tools", "list", "--config", str(config), "--key", "nobody")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr
