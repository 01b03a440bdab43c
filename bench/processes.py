"""The processes a benchmark run starts: pinned to cores, watched through /proc, always stopped.

Each child gets a session of its own, so a Ctrl-C in the terminal reaches only
the harness (which then stops them in order) and stopping a child also stops
anything it forked, such as uvicorn workers.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class CpuLayout:
    """Which cores the proxy under test, the fake upstream and the load generator may use."""

    proxy: frozenset[int] | None
    upstream: frozenset[int] | None
    load: frozenset[int] | None

    @classmethod
    def plan(cls) -> CpuLayout:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None, None)
        if len(cores) == 2:
            return cls(frozenset(cores[:1]), frozenset(cores[1:]), frozenset(cores[1:]))
        return cls(frozenset(cores[:1]), frozenset(cores[1:2]), frozenset(cores[2:]))

    def describe(self) -> str:
        if self.proxy is None:
            return "not pinned (fewer than 2 usable cores): all processes share the CPU"

        def cores(group: frozenset[int] | None) -> str:
            return ",".join(str(c) for c in sorted(group or ()))

        return (
            f"proxy under test (gateway or LiteLLM, one worker) on core {cores(self.proxy)}; "
            f"fake upstream on core {cores(self.upstream)}; load generator on core {cores(self.load)}; "
            "the gateway with several workers is not pinned"
        )


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process and its reaped descendants have used."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pin_to(cores: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cores``; None when nothing is pinned."""
    if cores is None:
        return None

    def pin() -> None:
        # Runs in the child before exec, so every thread the program starts inherits it.
        os.sched_setaffinity(0, cores)

    return pin


class Child:
    """One started process (and its session), its log file, and its footprint."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        cores: frozenset[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started_at = time.perf_counter()
        self.popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            # preexec_fn is unsafe only in a threaded parent; the harness starts no threads.
            preexec_fn=pin_to(cores),
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def members(self) -> list[int]:
        """Pids in this child's session (the child, and any workers it forked)."""
        members = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == self.pid:
                members.append(int(entry))
        return members

    def rss_bytes(self) -> int:
        """Resident memory of the whole session, from each process's VmRSS."""
        total = 0
        for pid in self.members():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            except OSError:
                continue
        return total

    def cpu_by_pid(self) -> dict[int, float]:
        """User plus system CPU seconds each process of the session has used so far."""
        used = {}
        for pid in self.members():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return used

    def cpu_seconds(self) -> float:
        """User plus system CPU time the whole session has used so far."""
        return sum(self.cpu_by_pid().values())

    def processors(self) -> dict[int, int]:
        """The core each process of the session last ran on (``processor`` in /proc/PID/stat)."""
        seen = {}
        for pid in self.members():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seen[pid] = int(fields[36])
        return seen

    def affinity(self) -> dict[int, frozenset[int]]:
        """The cores each process of the session may run on."""
        allowed = {}
        for pid in self.members():
            with contextlib.suppress(OSError):
                allowed[pid] = frozenset(os.sched_getaffinity(pid))
        return allowed

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the session, then SIGKILL what is left after a grace period."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        # Forked workers may outlive their parent; the session id still finds them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()
        self._log.close()


def wait_ready(child: Child, port: int, path: str, timeout_s: float, headers: dict[str, str] | None = None) -> float:
    """Poll ``GET path`` until it answers 200; return seconds since the child started."""
    deadline = time.perf_counter() + timeout_s
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited during start-up:\n{child.log_tail()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                connection.request("GET", path, headers=headers or {})
                if connection.getresponse().status == 200:
                    return time.perf_counter() - child.started_at
            finally:
                connection.close()
        except OSError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{child.name} was not ready within {timeout_s:.0f} s:\n{child.log_tail()}")
        time.sleep(0.01)
