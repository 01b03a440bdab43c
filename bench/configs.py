"""The machine a run is on, and the configuration files of the proxies it starts."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from bench.scenarios import API_KEY, PLAIN_MODEL, TOOLS_MODEL

BENCH_DIR = Path(__file__).resolve().parent
# Room in the gateway's upstream pool for every long stream at once (the default pool is 256).
UPSTREAM_POOL = 1024


def machine() -> list[tuple[str, str]]:
    """CPU model and count, Python and OS: what a reader needs to compare runs."""
    model = platform.processor() or "unknown"
    lscpu = shutil.which("lscpu")
    if lscpu:
        listing = subprocess.run([lscpu], capture_output=True, text=True, check=False).stdout
        for line in listing.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        ("CPU", f"{model}, {os.cpu_count()} cores"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OS", f"{platform.system()} {platform.release()}"),
    ]


def gateway_config(port: int, upstream_port: int, workers: int = 1, redis_url: str = "") -> dict[str, object]:
    """The gateway as deployed: defaults elsewhere, auth on, the bench tool loaded.

    Two upstream entries reach the same fake server: ``bench-plain`` with server
    tools off (a pure proxy, comparable to LiteLLM) and ``bench-tools`` with them on.
    Several workers share their state through Redis, as the gateway requires.
    """
    base_url = f"http://127.0.0.1:{upstream_port}/v1"
    config: dict[str, object] = {
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "upstreams": [
            {
                "name": "plain",
                "base_url": base_url,
                "models": [PLAIN_MODEL],
                "server_tools": False,
                "max_connections": UPSTREAM_POOL,
            },
            {"name": "tools", "base_url": base_url, "models": [TOOLS_MODEL], "max_connections": UPSTREAM_POOL},
        ],
        "auth": {"api_keys": [API_KEY]},
        "tools": {"paths": [str(BENCH_DIR / "tools")]},
    }
    if redis_url:
        config["state"] = {"backend": "redis", "redis_url": redis_url}
    return config


def redis_command(port: int, data_dir: Path) -> list[str] | None:
    """``redis-server`` on ``port`` with no persistence, or None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data_dir)]
    return [binary, *options]


GATEWAY_SETTINGS = (
    "python -m gateway serve, default settings (JSON request log at info) but an upstream pool of "
    f"{UPSTREAM_POOL} connections, one API key"
)


def litellm_config(upstream_port: int) -> dict[str, object]:
    """LiteLLM's proxy with the settings its production guide recommends that apply without a database."""
    return {
        "model_list": [
            {
                "model_name": PLAIN_MODEL,
                "litellm_params": {
                    "model": f"openai/{PLAIN_MODEL}",
                    "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                    "api_key": "sk-upstream",
                },
            }
        ],
        "general_settings": {"master_key": API_KEY, "disable_spend_logs": True, "disable_error_logs": True},
        "litellm_settings": {"request_timeout": 600, "set_verbose": False, "json_logs": True},
    }


def find_litellm(choice: str) -> str | None:
    """The ``litellm`` executable: a given path, $BENCH_LITELLM, this venv's, or one on PATH."""
    if choice == "off":
        return None
    if choice != "auto":
        return choice
    candidates = [
        os.environ.get("BENCH_LITELLM"),
        str(Path(sys.executable).parent / "litellm"),
        shutil.which("litellm"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


LITELLM_SETTINGS = (
    "1 worker (--num_workers 1, alone on the proxy core), master key, no database, "
    "LITELLM_LOG=ERROR, LITELLM_MODE=PRODUCTION, set_verbose off, json_logs, request_timeout 600"
)


def litellm_env() -> dict[str, str]:
    return {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        # No network here: use the bundled model price map instead of fetching it.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def litellm_version(executable: str) -> str:
    """The installed litellm's version, asked of the interpreter beside the executable."""
    python = Path(executable).parent / "python"
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "litellm (version unknown)"
    return f"litellm {done.stdout.strip()}"
