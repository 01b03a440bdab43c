"""Running one load generator while watching the proxy, and the small probes the harness makes over HTTP."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.processes import Child, pin_to
from bench.scenarios import API_KEY, scenario_named

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.1
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass(slots=True)
class Sampled:
    """A load generator's JSON result and what the proxy did meanwhile."""

    result: dict[str, Any]
    proxy_cpu_s: float | None = None
    elapsed_s: float = 0.0
    rss_peak: int = 0
    ran_on: dict[int, set[int]] = field(default_factory=dict)
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def busy(self, share: float = 0.1) -> set[int]:
        """The proxy's processes that did at least ``share`` of its work: its workers, not helpers."""
        total = sum(self.cpu_by_pid.values())
        return {pid for pid, used in self.cpu_by_pid.items() if total and used >= share * total}


def run_load(
    module: str, options: list[str], cores: frozenset[int] | None, proxy: Child | None, timeout_s: float
) -> Sampled:
    """Run ``python -m module options`` pinned to ``cores``; sample the proxy's RSS, CPU and cores until it ends.

    The generator prints ``go`` when its set-up is over, so the proxy's CPU time
    is taken over the load alone.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        preexec_fn=pin_to(cores),
    )
    sampled = Sampled(result={})
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "go": start-up is over, the load begins
        cpu_before = proxy.cpu_by_pid() if proxy else {}
        started = time.perf_counter()
        while process.poll() is None:
            if proxy is not None:
                sampled.rss_peak = max(sampled.rss_peak, proxy.rss_bytes())
                for pid, core in proxy.processors().items():
                    sampled.ran_on.setdefault(pid, set()).add(core)
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"the load generator ({module} {' '.join(options)}) did not finish in time")
            time.sleep(SAMPLE_S)
        sampled.elapsed_s = time.perf_counter() - started
        if proxy is not None:
            cpu_after = proxy.cpu_by_pid()
            sampled.cpu_by_pid = {pid: used - cpu_before.get(pid, 0.0) for pid, used in cpu_after.items()}
            sampled.proxy_cpu_s = sum(sampled.cpu_by_pid.values())
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{stderr.decode(errors='replace')}")
    sampled.result = orjson.loads(stdout)
    return sampled


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes] | None:
    """One request on a fresh connection; None when nothing answers."""
    headers = {**AUTH, "Content-Type": "application/json"} if body is not None else dict(AUTH)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
    except OSError:
        return None


def wait_first_completion(child: Child, port: int, timeout_s: float) -> tuple[float, float]:
    """Poll until the gateway answers ``/readyz`` and proxies a chat completion correctly.

    Returns the seconds from the process's start to each; polling starts at once,
    so the second is launch to first proxied completion.
    """
    step = scenario_named("chat").steps("gateway")[0]
    payload = orjson.dumps(step.body)
    deadline = time.perf_counter() + timeout_s
    ready_s: float | None = None
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start-up:\n{child.log_tail()}")
        if ready_s is None:
            answer = _request(port, "GET", "/readyz")
            if answer is not None and answer[0] == 200:
                ready_s = time.perf_counter() - child.started_at
        answer = _request(port, "POST", "/v1/chat/completions", payload)
        if answer is not None and answer[0] == 200 and step.expect in answer[1]:
            completed_s = time.perf_counter() - child.started_at
            return (completed_s if ready_s is None else ready_s), completed_s
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{child.name} proxied no completion within {timeout_s:.0f} s:\n{child.log_tail()}")
        time.sleep(0.005)


def wait_redis(child: Child, port: int, timeout_s: float) -> None:
    """Poll ``PING`` until the Redis server answers."""
    deadline = time.perf_counter() + timeout_s
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start-up:\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{child.name} was not ready within {timeout_s:.0f} s")
        time.sleep(0.02)


def requests_counted(port: int) -> float:
    """``gateway_requests_total`` summed over its labels, as ``/metrics`` reports it."""
    answer = _request(port, "GET", "/metrics")
    if answer is None or answer[0] != 200:
        raise RuntimeError(f"GET /metrics failed: {answer!r}")
    total = 0.0
    for line in answer[1].decode().splitlines():
        if line.startswith("gateway_requests_total{") or line.startswith("gateway_requests_total "):
            total += float(line.rsplit(" ", 1)[1])
    return total
