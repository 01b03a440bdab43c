"""Real servers on loopback ports for tests: any ASGI app under uvicorn in a thread."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from gateway.connections import ConnectionLimits, GatewayServerConfig


class ServerThread:
    """Runs an ASGI app on 127.0.0.1 at a free port until ``stop()``."""

    def __init__(
        self, app: Any, port: int = 0, limits: ConnectionLimits | None = None, proto: int = socket.IPPROTO_TCP
    ) -> None:
        """``limits`` serves with the gateway's guarded protocol, as ``gateway serve`` does.

        With IPPROTO_TCP asyncio turns on TCP_NODELAY itself (keep-alive requests would
        otherwise wait for delayed ACKs); ``proto=0`` is how uvicorn's worker sockets are made.
        """
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port: int = self.sock.getsockname()[1]
        options: dict[str, Any] = {
            "log_config": None,
            "lifespan": "on",
            "loop": "asyncio",
            "timeout_graceful_shutdown": 2,
        }
        config = (
            GatewayServerConfig(app, limits, **options)
            if limits is not None
            else uvicorn.Config(app, http="h11", **options)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 15 s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve_process(config: dict[str, Any], path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``gateway serve`` as a real process with ``config`` written to ``path``; waits for /healthz."""
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{config['server']['port']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, f"gateway for {path.name} did not start"
        time.sleep(0.05)
