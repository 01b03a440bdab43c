"""The benchmark harnesses still run end to end: ``python -m bench --smoke`` and
``python -m bench.tool_selection --smoke`` (no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent

# Every line of the performance budget, by the start of its label.
BUDGET_LINES = (
    "passthrough throughput, non-streamed, c=1",
    "passthrough throughput, c=4 vs c=1",
    "gateway CPU per request, every concurrency",
    "open-loop overhead p50",
    "open-loop overhead p99",
    "first-content overhead p50, sequential, no tools",
    "first-content overhead p50, sequential, tools offered",
    "gateway CPU per forwarded chunk, no tools",
    "gateway CPU per forwarded chunk, tools offered",
    "20 streams x 10 chunks 20 ms apart: errors",
    "added inter-chunk delay p99",
    "gateway RSS during the long streams",
    "one server-tool round beyond tool + upstream time, p50 @ c=1",
    "idle RSS, one worker",
    "launch to first proxied completion",
    "2 workers vs 1, throughput, non-streamed, c=4",
    "gateway_requests_total across workers = requests sent",
    "gateway with 2 workers not pinned to one core",
)
SECTIONS = (
    "## Budget",
    "## Sequential probe (c=1)",
    "## Closed loop",
    "## Open loop",
    "## Long streams",
    "## Two workers",
    "## Processes",
)


@pytest.fixture(scope="module")
def report() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--litellm=off"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _rows(report: str, section: str) -> list[list[str]]:
    body = report.split(section, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.timeout(180)
def test_smoke_run_reports_every_section_and_scenario(report: str) -> None:
    for section in SECTIONS:
        assert f"\n{section}\n" in report, section
    closed = _rows(report, "## Closed loop")  # c=1 for every scenario; the smoke run skips the rest
    for scenario in SCENARIOS:
        for target in ("direct", "gateway"):
            assert any(row[:2] == [scenario.name, target] for row in closed), (scenario.name, target)
    probe = _rows(report, "## Sequential probe (c=1)")
    assert {row[0] for row in probe if row[1] == "gateway"} == {s.name for s in SCENARIOS}
    open_loop = _rows(report, "## Open loop")
    assert {row[0] for row in open_loop} >= {"direct", "gateway", "overhead"}


@pytest.mark.timeout(180)
def test_smoke_run_gives_every_budget_line_a_verdict(report: str) -> None:
    rows = _rows(report, "## Budget")[1:]  # after the header row
    labels = [row[1] for row in rows]
    for line in BUDGET_LINES:
        matching = [row for row in rows if row[1].startswith(line)]
        assert len(matching) == 1, (line, labels)
        assert matching[0][4] in ("met", "**not met**"), matching[0]
    assert len(rows) == len(BUDGET_LINES), labels
    # The metrics check is exact, whatever the machine's speed.
    metrics = next(row for row in rows if row[1].startswith("gateway_requests_total"))
    assert metrics[4] == "met", metrics


TOOL_SELECTION_GOALS = ("recall at 8 >= 95%", "schema tokens at 8 cut by >= 90%", "rank p99 for 1000 tools < 1,000 µs")


def test_tool_selection_smoke_reports_recall_tokens_cost_and_every_goal(tmp_path: Path) -> None:
    """``python -m bench.tool_selection --smoke``: the built-in sample, no download."""
    output = tmp_path / "tool_selection.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.tool_selection", "--smoke", "--rounds=2", f"--output={output}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert output.read_text() == done.stdout
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in done.stdout.splitlines() if line[:1] == "|"
    ]
    recall = {row[0]: row[1:] for row in rows if row[0].startswith("k = ")}
    assert set(recall) == {"k = 3", "k = 5", "k = 8"}
    assert all(cell.endswith("%") for cells in recall.values() for cell in cells)
    assert any(row[0].startswith("top 8") for row in rows)
    assert any(row[0].startswith("1000 (padded") and row[3].endswith("µs") for row in rows)
    verdicts = {row[0]: row[2] for row in rows if row[0] in TOOL_SELECTION_GOALS}
    assert set(verdicts) == set(TOOL_SELECTION_GOALS)
    assert set(verdicts.values()) <= {"met", "**not met**"}
    assert verdicts["recall at 8 >= 95%"] == "met"  # every sample question names its tool plainly
