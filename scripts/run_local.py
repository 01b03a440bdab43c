"""``make run``: the gateway with its default config, in front of a small local model when nothing else is set.

With no upstream of the user's own (no ``VLLM_BASE_URL``, no ``GATEWAY_CONFIG``, and the default config's
``local`` upstream on a loopback address), this starts llama.cpp's ``llama-server`` with SmolLM2-135M there
(built and fetched once, see ``e2e/local_model.py``), then ``gateway serve``, and prints examples to try.
Otherwise it is plain ``gateway serve``. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from e2e.local_model import MODEL_ALIAS, LlamaServer, LocalModelError, cache_dir
from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def _serve_only() -> None:
    os.execv(GATEWAY, [GATEWAY, "serve", *sys.argv[1:]])


def _local_upstream(config: GatewayConfig) -> tuple[str, int] | None:
    """Where the default config expects the local model, if it does."""
    for upstream in config.upstreams:
        if upstream.name != "local":
            continue
        address = urlsplit(str(upstream.base_url))
        if address.hostname in LOOPBACK and address.port:
            return address.hostname, address.port
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(url):
            return True
        time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C reached the gateway too (same process group): let it finish, then make sure it does."""
    for stop, wait_s in ((None, 5.0), (process.terminate, 30.0), (process.kill, None)):
        if process.poll() is not None:
            return
        if stop is not None:
            stop()
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def _examples(port: int) -> str:
    base = f"http://localhost:{port}/v1"
    return f"""
The gateway is ready on {base}, in front of {MODEL_ALIAS} on llama.cpp: a tiny model, there to try the
gateway with, not for answers. Try:

  curl -si {base}/chat/completions -H 'content-type: application/json' -d '{{
    "model": "{MODEL_ALIAS}", "messages": [{{"role": "user", "content": "Calculate 1234 * 5678."}}]}}'

  .venv/bin/python - <<'EOF'
  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="anything")
  raw = client.chat.completions.with_raw_response.create(
      model="{MODEL_ALIAS}", messages=[{{"role": "user", "content": "Calculate 1234 * 5678."}}])
  print("tool rounds:", raw.headers["x-gateway-tool-rounds"], "answer:", raw.parse().choices[0].message.content)
  EOF

Ctrl-C stops the gateway and the model server.
"""


def main() -> int:
    if os.environ.get("GATEWAY_CONFIG") or os.environ.get("VLLM_BASE_URL") or len(sys.argv) > 1:
        _serve_only()
    try:
        config = load_config(DEFAULT_CONFIG_PATH)
    except ConfigError:
        _serve_only()  # gateway serve reports the problems
    local = _local_upstream(config)
    if local is None:
        _serve_only()
    host, port = local or ("127.0.0.1", 0)
    server: LlamaServer | None = None
    gateway: subprocess.Popen[bytes] | None = None
    try:
        if _answers(f"http://{host}:{port}/health"):
            print(f"[local-model] using the model server already on {host}:{port}", file=sys.stderr)
        else:
            server = LlamaServer(host=host, port=port, log_path=cache_dir() / "logs" / "llama-server.log")
            print(f"[local-model] starting llama-server on {host}:{port} (log: {server.log_path})", file=sys.stderr)
            server.start()
        gateway = subprocess.Popen([GATEWAY, "serve"])
        if _wait_for(f"http://127.0.0.1:{config.server.port}/healthz", gateway):
            print(_examples(config.server.port), file=sys.stderr, flush=True)
        return gateway.wait()
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if gateway is not None:
            _stop(gateway)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
