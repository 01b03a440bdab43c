"""``python -m bench``: start a fake upstream and the gateway (and LiteLLM if installed), load them, report.

Every scenario is measured against the fake upstream directly and through the
gateway in the same run, back to back at each concurrency, so the overhead is a
difference of two measurements taken seconds apart on the same machine. LiteLLM
runs afterwards, alone on the proxy core, once the gateway has stopped.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import orjson
import yaml

from bench.processes import Child, CpuLayout, free_port, pin_to, wait_ready
from bench.report import Point, ProxyFacts, Run, render
from bench.scenarios import API_KEY, PLAIN_MODEL, SCENARIOS, TOOLS_MODEL, Scenario, Target

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RSS_SAMPLE_S = 0.1
READY_TIMEOUT_S = 60.0
LITELLM_READY_TIMEOUT_S = 180.0


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


def gateway_config(port: int, upstream_port: int) -> dict[str, object]:
    """The gateway as deployed: defaults everywhere, one worker, auth on, the bench tool loaded.

    Two upstream entries reach the same fake server: ``bench-plain`` with server
    tools off (a pure proxy, comparable to LiteLLM) and ``bench-tools`` with them on.
    """
    base_url = f"http://127.0.0.1:{upstream_port}/v1"
    return {
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "upstreams": [
            {"name": "plain", "base_url": base_url, "models": [PLAIN_MODEL], "server_tools": False},
            {"name": "tools", "base_url": base_url, "models": [TOOLS_MODEL]},
        ],
        "auth": {"api_keys": [API_KEY]},
        "tools": {"paths": [str(BENCH_DIR / "tools")]},
    }


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


def litellm_version(executable: str) -> str:
    """The installed litellm's version, asked of the interpreter beside the executable."""
    python = Path(executable).parent / "python"
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "litellm (version unknown)"
    return f"litellm {done.stdout.strip()}"


class Bench:
    """One run: the children it started, the points it measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.layout = CpuLayout.plan()
        self.children: list[Child] = []
        self.scenarios = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
        warmup, duration = args.warmup, args.duration
        self.run = Run(
            machine=machine(),
            settings=[
                ("command", "python -m bench" + (" --smoke" if args.smoke else "")),
                ("CPU sharing", self.layout.describe()),
                ("each point", f"{warmup:g} s warm-up + {duration:g} s measured, closed loop, keep-alive connections"),
                ("load generator", "bench/load.py: asyncio on uvloop, prebuilt requests, httptools response parser"),
                (
                    "gateway",
                    "python -m gateway serve, 1 worker, default settings (JSON request log at info), one API key",
                ),
            ],
            concurrencies=args.concurrency,
            gateway=ProxyFacts("gateway"),
            litellm=ProxyFacts("LiteLLM proxy"),
        )

    def start(
        self, name: str, command: list[str], cores: frozenset[int] | None, env: dict[str, str] | None = None
    ) -> Child:
        child = Child(name, command, OUT_DIR / f"{name}.log", cores, env=env, cwd=BENCH_DIR.parent)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def load(self, scenario: Scenario, target: Target, port: int, concurrency: int, proxy: Child | None) -> Point:
        """One load run in its own process; samples the proxy's RSS and CPU while it runs."""
        command = [
            sys.executable,
            "-m",
            "bench.load",
            f"--scenario={scenario.name}",
            f"--target={target}",
            f"--port={port}",
            f"--concurrency={concurrency}",
            f"--warmup={self.args.warmup}",
            f"--duration={self.args.duration}",
        ]
        log(f"  {scenario.name:<18} {target:<8} c={concurrency:<3}", end="")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=BENCH_DIR.parent,
            preexec_fn=pin_to(self.layout.load),
        )
        try:
            assert process.stdout is not None
            process.stdout.readline()  # "go": start-up is over, the load begins
            cpu_before = proxy.cpu_seconds() if proxy else 0.0
            started = time.perf_counter()
            while process.poll() is None:
                if proxy is not None:
                    facts = self.run.gateway if proxy.name == "gateway" else self.run.litellm
                    facts.rss_peak = max(facts.rss_peak, proxy.rss_bytes())
                if time.perf_counter() - started > self.args.warmup + self.args.duration + 60:
                    raise RuntimeError("the load generator did not finish in time")
                time.sleep(RSS_SAMPLE_S)
            elapsed = time.perf_counter() - started
            proxy_cpu = (proxy.cpu_seconds() - cpu_before) / elapsed if proxy else None
            stdout, stderr = process.communicate()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{stderr.decode(errors='replace')}")
        result = orjson.loads(stdout)
        point = Point(
            scenario=scenario.name,
            target=target,
            concurrency=concurrency,
            rps=result["rps"],
            latency_ms={k: float("nan") if v is None else v for k, v in result["latency_ms"].items()},
            ttfb_ms={k: float("nan") if v is None else v for k, v in result["ttfb_ms"].items()},
            errors=result["errors"],
            first_error=result["first_error"],
            load_cpu=result["load_cpu"],
            proxy_cpu=proxy_cpu,
        )
        log(f" {point.rps:>8.0f} req/s  p50 {point.latency_ms['p50']:7.2f} ms  errors {point.errors}")
        return point

    def measure(self) -> Run:
        OUT_DIR.mkdir(exist_ok=True)
        python = sys.executable
        upstream_port = free_port()
        log(f"fake upstream on :{upstream_port}")
        upstream = self.start(
            "upstream", [python, "-m", "bench.upstream", f"--port={upstream_port}"], self.layout.upstream
        )
        wait_ready(upstream, upstream_port, "/v1/models", READY_TIMEOUT_S)

        port = free_port()
        config_path = OUT_DIR / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(gateway_config(port, upstream_port), sort_keys=False))
        log(f"gateway on :{port}")
        gateway = self.start(
            "gateway",
            [
                python,
                "-m",
                "gateway",
                "serve",
                f"--config={config_path}",
                "--host=127.0.0.1",
                f"--port={port}",
                "--workers=1",
            ],
            self.layout.proxy,
        )
        self.run.gateway.startup_s = wait_ready(gateway, port, "/readyz", READY_TIMEOUT_S)
        self.run.gateway.rss_idle = gateway.rss_bytes()
        for scenario in self.scenarios:
            for concurrency in self.args.concurrency:
                self.run.points.append(self.load(scenario, "direct", upstream_port, concurrency, None))
                self.run.points.append(self.load(scenario, "gateway", port, concurrency, gateway))
        self.stop(gateway)

        litellm_scenarios = [s for s in self.scenarios if s.litellm]
        executable = find_litellm(self.args.litellm)
        if executable is None:
            self.run.litellm.skipped = (
                "turned off" if self.args.litellm == "off" else "not installed (pip install -e '.[bench]')"
            )
        elif litellm_scenarios:
            self.measure_litellm(executable, upstream_port, litellm_scenarios)
        return self.run

    def measure_litellm(self, executable: str, upstream_port: int, scenarios: list[Scenario]) -> None:
        port = free_port()
        config_path = OUT_DIR / "litellm.yaml"
        config_path.write_text(yaml.safe_dump(litellm_config(upstream_port), sort_keys=False))
        env = {
            **os.environ,
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
            # No network here: use the bundled model price map instead of fetching it.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        self.run.settings.append(("LiteLLM", f"{litellm_version(executable)} proxy, {LITELLM_SETTINGS}"))
        log(f"LiteLLM proxy on :{port}")
        litellm = self.start(
            "litellm",
            [executable, f"--config={config_path}", "--host=127.0.0.1", f"--port={port}", "--num_workers=1"],
            self.layout.proxy,
            env=env,
        )
        try:
            self.run.litellm.startup_s = wait_ready(litellm, port, "/health/liveliness", LITELLM_READY_TIMEOUT_S)
        except RuntimeError as exc:
            self.run.litellm.skipped = "failed to start (see bench/out/litellm.log)"
            log(str(exc))
            self.stop(litellm)
            return
        self.run.litellm.rss_idle = litellm.rss_bytes()
        for scenario in scenarios:
            for concurrency in self.args.concurrency:
                self.run.points.append(self.load(scenario, "litellm", port, concurrency, litellm))
        self.stop(litellm)


def log(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, tiny request counts: checks it all works")
    parser.add_argument("--concurrency", type=lambda v: [int(c) for c in v.split(",")], help="e.g. 1,16,64")
    parser.add_argument("--warmup", type=float, help="seconds per point before measuring")
    parser.add_argument("--duration", type=float, help="measured seconds per point")
    parser.add_argument("--scenarios", type=lambda v: v.split(","), help="comma-separated subset")
    parser.add_argument("--litellm", help="auto (default; off with --smoke), off, or the litellm executable's path")
    parser.add_argument("--output", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.concurrency = args.concurrency or ([1, 4] if smoke else [1, 16, 64])
    args.warmup = args.warmup if args.warmup is not None else (0.1 if smoke else 0.5)
    args.duration = args.duration if args.duration is not None else (0.3 if smoke else 3.0)
    args.litellm = args.litellm or ("off" if smoke else "auto")
    known = {s.name for s in SCENARIOS}
    unknown = set(args.scenarios or ()) - known
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    bench = Bench(args)
    try:
        run = bench.measure()
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; stopping everything started")
        return 130
    finally:
        bench.stop_all()
    report = render(run)
    sys.stdout.write(report)
    if args.output:
        args.output.write_text(report)
    if run.errors:
        log(f"{run.errors} request(s) failed; see the Errors section")
        return 1
    return 0
