"""The benchmark harness still runs end to end: ``python -m bench --smoke`` (no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_smoke_run_exits_cleanly_and_reports_every_scenario() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--litellm=off"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for scenario in SCENARIOS:
        for target in ("direct", "gateway"):
            assert any(row.startswith(f"| {scenario.name} | {target} |") for row in rows), (scenario.name, target)
    assert "## Budget" in done.stdout
