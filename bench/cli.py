"""The command line of ``python -m bench``: options, defaults (full or smoke), the run, the report."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from bench import harness
from bench.harness import PHASES, Bench, log
from bench.processes import machine_busy_seconds, own_cpu_seconds
from bench.report import render
from bench.scenarios import SCENARIOS

T = TypeVar("T")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _csv(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    return lambda value: [kind(item) for item in value.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(harness.__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="a few seconds, tiny request counts: checks it all works")
    add("--concurrency", type=_csv(int), help="closed-loop concurrencies, e.g. 1,16,64")
    add("--warmup", type=float, help="seconds per closed-loop point before measuring")
    add("--duration", type=float, help="measured seconds per closed-loop point")
    add("--scenarios", type=_csv(str), help="comma-separated subset of the closed-loop scenarios")
    add("--rate", type=float, help="open-loop arrival rate, req/s (default 1000)")
    add("--open-warmup", type=float, help="open-loop seconds sent before measuring")
    add("--open-duration", type=float, help="open-loop measured seconds")
    add("--long-streams", type=int, help="concurrent long streams (default 500)")
    add("--long-chunks", type=int, help="chunks per long stream (default 200)")
    add("--long-interval-ms", type=float, help="ms between a long stream's chunks (default 50)")
    add("--long-ramp", type=float, help="seconds over which the long streams start (default 1)")
    add("--phases", type=_csv(str), default=list(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    add("--litellm", help="auto (default; off with --smoke), off, or the litellm executable's path")
    add("--output", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    smoke = args.smoke

    def pick(name: str, normal: object, tiny: object) -> None:
        if getattr(args, name) is None:
            setattr(args, name, tiny if smoke else normal)

    pick("concurrency", [1, 16, 64], [1, 4])
    pick("warmup", 0.5, 0.05)
    pick("duration", 3.0, 0.2)
    pick("rate", 1000.0, 200.0)
    pick("open_warmup", 1.0, 0.05)
    pick("open_duration", 5.0, 0.3)
    pick("long_streams", 500, 20)
    pick("long_chunks", 200, 10)
    pick("long_interval_ms", 50.0, 20.0)
    pick("long_ramp", 1.0, 0.1)
    pick("litellm", "auto", "off")
    known = {s.name for s in SCENARIOS}
    unknown = set(args.scenarios or ()) - known
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if set(args.phases) - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(set(args.phases) - set(PHASES)))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    bench = Bench(args)
    started = time.perf_counter()
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
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
    elapsed = time.perf_counter() - started
    phases = ", ".join(f"{title} {seconds:.0f} s" for title, seconds in run.phase_seconds)
    run.settings.append(("run time", f"{elapsed:.0f} s ({phases})"))
    # Everything started here has been stopped and reaped, so its CPU time is in our children's usage.
    others = (machine_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    cores = len(os.sched_getaffinity(0))
    run.settings.append(
        (
            "other load",
            f"processes outside the benchmark used {max(others, 0.0) / elapsed:.2f} of {cores} cores on average "
            "during the run (from /proc/stat); figures are comparable only when this is near 0",
        )
    )
    report = render(run)
    sys.stdout.write(report)
    if args.output:
        args.output.write_text(report)
    if run.errors:
        log(f"{run.errors} request(s) failed; see the Errors section")
        return 1
    return 0
