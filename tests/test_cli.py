"""The ``gateway`` command: config checking, tool listing, start-up errors."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.conftest import TOOL_FIXTURES
from tests.redis_server import _free_port
from tests.servers import serve_process

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = "upstreams: [{name: up, base_url: 'http://127.0.0.1:9/v1'}]\n"


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
    for name in ("BASETEN_API_KEY", "BASETEN_MODEL_ID", "OPENAI_API_KEY", "GATEWAY_KEY_BACKEND"):
        monkeypatch.setenv(name, f"sk-shipped-config-{name.lower()}")
    config = load_config(path)
    assert config.upstreams
    for tools in config.tools.paths:
        # Resolved from the file's folder; /app/... is a container's view (checked in test_deploy).
        assert tools.startswith("/app/") or Path(tools).is_dir(), tools


def test_example_without_its_gateway_key_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """No placeholder fallback: the example needs a real key from the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream-example")
    monkeypatch.delenv("GATEWAY_KEY_BACKEND", raising=False)
    with pytest.raises(ConfigError) as raised:
        load_config(ROOT / "config" / "examples" / "openai.yaml")
    (problem,) = raised.value.problems
    assert "auth.api_keys.0.key: environment variable GATEWAY_KEY_BACKEND is not set: set it to" in problem


@pytest.mark.parametrize(
    ("reference", "environ", "expected"),
    [
        ("${K:?set K to the key}", {}, "environment variable K is not set: set K to the key"),
        ("${K:?set K to the key}", {"K": ""}, "environment variable K is empty: set K to the key"),
        ("${K:?}", {}, "environment variable K is not set"),
    ],
)
def test_required_variable_fails_with_its_message(reference: str, environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"upstreams: [{{name: a, base_url: 'http://x/v1', api_key: '{reference}'}}]", "r.yaml", environ)
    assert raised.value.problems == [f"r.yaml: upstreams.0.api_key: {expected}"]


def test_required_variable_and_defaults_when_set_or_empty() -> None:
    text = "upstreams: [{name: a, base_url: '${URL:-http://default/v1}', api_key: '${K:?set K}'}]"
    # As in the shell and compose: an empty value takes the default, which `VAR=` in a .env file gives.
    config = parse_config(text, "r.yaml", {"URL": "", "K": "sk-from-env"})
    assert (config.upstreams[0].base_url, config.upstreams[0].api_key) == ("http://default/v1", "sk-from-env")
    assert parse_config(text, "r.yaml", {"URL": "http://set/v1", "K": "k"}).upstreams[0].base_url == "http://set/v1"


@pytest.mark.parametrize(
    "key", ["change-me", "CHANGEME", "sk-change-me", "your-key-here", "secret", "password", "<your key>", "", "  "]
)
def test_check_config_refuses_a_placeholder_gateway_key_naming_its_entry(tmp_path: Path, key: str) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(UPSTREAM + f"auth: {{api_keys: [sk-real-key-0001, {{name: backend, key: {json.dumps(key)}}}]}}\n")
    result = gateway_cli("check-config", "--config", str(config))
    assert result.returncode == 1
    (problem,) = result.stderr.strip().splitlines()
    assert problem.startswith(f"{config}: auth.api_keys.1.key: ") and "entry 'backend'" in problem, problem


def test_a_placeholder_fallback_is_refused_when_its_variable_is_unset(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(UPSTREAM + "auth: {api_keys: ['${GATEWAY_TEST_KEY:-change-me}']}\n")
    refused = gateway_cli("check-config", "--config", str(config), env={"PATH": ""})
    assert refused.returncode == 1 and "the key of entry 'key-1' is the placeholder 'change-me'" in refused.stderr
    accepted = gateway_cli("check-config", "--config", str(config), env={"PATH": "", "GATEWAY_TEST_KEY": "sk-r3al"})
    assert accepted.returncode == 0, accepted.stderr


def _listening_on(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port``, from the kernel's own table."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, port_hex = local.partition(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.parametrize(
    ("auth", "listening"), [({}, "127.0.0.1"), ({"api_keys": ["sk-bind-check-0001"]}, "0.0.0.0")], ids=["open", "keys"]
)
def test_serve_listens_on_every_interface_only_when_keys_guard_it(
    tmp_path: Path, auth: dict[str, Any], listening: str
) -> None:
    port = _free_port()
    config = {"server": {"port": port}, "upstreams": [{"name": "up", "base_url": "http://127.0.0.1:9/v1"}]}
    process, _ = serve_process({**config, "auth": auth, "tools": {"paths": []}}, tmp_path / "g.yaml")
    try:
        assert _listening_on(port) == {listening}
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_interface_without_keys_needs_saying_so(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(UPSTREAM + "server: {host: 0.0.0.0}\n")
    refused = gateway_cli("check-config", "--config", str(config))
    assert refused.returncode == 1
    assert "server.host is '0.0.0.0'" in refused.stderr and "allow_unauthenticated_public" in refused.stderr
    config.write_text(UPSTREAM + "server: {host: 0.0.0.0, allow_unauthenticated_public: true}\n")
    assert gateway_cli("check-config", "--config", str(config)).returncode == 0
    # --host is held to the same rule as the file, and refused before anything listens.
    config.write_text(UPSTREAM)
    flag = gateway_cli("serve", "--config", str(config), "--host", "0.0.0.0", "--port", "0")
    assert flag.returncode == 1 and "error: --host 0.0.0.0: " in flag.stderr and "allow_unauthenticated" in flag.stderr


def test_paths_in_the_config_are_relative_to_its_folder(tmp_path: Path) -> None:
    """The gateway runs from the repository (cwd), the config and its paths live elsewhere."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "my-tools").mkdir()
    (tmp_path / "mcp-home").mkdir()
    (tmp_path / "my-tools" / "shout.py").write_text(
        "from gateway.tools import tool\n\n@tool\ndef shout(text: str) -> str:\n"
        '    """Say it loud.\n\n    Args:\n        text: What to say.\n    """\n    return text.upper()\n'
    )
    config = tmp_path / "conf" / "g.yaml"
    config.write_text(
        UPSTREAM + "tools: {paths: [../my-tools], mcp_servers: [{name: m, url: 'http://127.0.0.1:9/mcp'}]}\n"
    )
    listed = gateway_cli("tools", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert [t["function"]["name"] for t in json.loads(listed.stdout)] == ["shout"]
    config.write_text(
        UPSTREAM + "tools: {paths: [../my-tools], mcp_servers: [{name: m, command: x, cwd: ../mcp-home}]}\n"
    )
    checked = gateway_cli("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert f"- {tmp_path / 'my-tools'}\n" in checked.stdout and f"cwd: {tmp_path / 'mcp-home'}\n" in checked.stdout


def test_check_config_fails_on_a_path_that_is_not_there(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(UPSTREAM + "tools: {paths: [], mcp_servers: [{name: m, command: x, cwd: gone}]}\n")
    result = gateway_cli("check-config", "--config", str(config))
    assert result.returncode == 1
    assert f"error: tools.mcp_servers.m.cwd: {tmp_path / 'gone'}: no such directory" in result.stderr.splitlines()
    config.write_text(UPSTREAM + "tools: {paths: [missing-tools]}\n")
    result = gateway_cli("check-config", "--config", str(config))
    assert result.returncode == 1 and f"error: {tmp_path / 'missing-tools'}: tool path does not exist" in result.stderr


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


def test_tools_list_shows_what_was_skipped_and_why(tmp_path: Path) -> None:
    """What `serve` logs as skipped, as `tools list` prints it: a clash, a missing allowed tool, the allowlist."""
    mcp = {
        "name": "files",
        "command": sys.executable,
        "args": ["-m", "tests.mcp_servers.stdio_server"],
        "cwd": str(ROOT),
        "prefix": "",
        "allow": ["echo", "fail", "not_there"],
        "timeout_s": 10,
    }
    config = tmp_path / "g.yaml"
    tools = {"paths": [str(TOOL_FIXTURES)], "enabled": ["echo", "add", "fail", "ghost"], "mcp_servers": [mcp]}
    config.write_text(UPSTREAM + "tools: " + json.dumps(tools) + "\n")
    result = gateway_cli("tools", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    listing = [(t["function"]["name"], t["x_source"].partition(":")[0]) for t in json.loads(result.stdout)]
    assert sorted(listing) == [("add", "python"), ("echo", "mcp"), ("fail", "python")]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert any(line.startswith("skipped: 'fail' from mcp:files: tool name 'fail' is defined twice") for line in skipped)
    absent = "in the server's allow list, but the server does not offer it"
    assert f"skipped: 'not_there' from mcp:files: {absent}" in skipped
    assert any(re.fullmatch(r"skipped: 'get_weather' from python:\S+: not in tools.enabled", line) for line in skipped)
    assert "skipped: 'ghost' from config: named in tools.enabled, but no loaded tool has that name" in skipped
