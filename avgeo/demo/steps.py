"""Running the demo's steps in order: each is timed, and skipped when an earlier run finished it.

A step is finished when its marker `<markers_dir>/<name>.json` exists; the marker is written (atomically)
only after the step's action returned, and records how long it took. An interrupted step has no marker,
so the next run starts it again, and the job behind it resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Step:
    """One step of the demo: a name (its marker's) and what it does."""

    name: str
    """Unique among the steps; letters, digits, `-`, `_`, `.`."""
    action: Callable[[], Any]
    """Runs the step; its return value is ignored."""


@dataclass(frozen=True)
class StepRecord:
    """How one step went in this run."""

    name: str
    status: Literal["ran", "skipped"]
    """`skipped`: finished by an earlier run."""
    wall_s: float
    """Seconds this run spent on it (~0 when skipped)."""
    first_wall_s: float
    """Seconds the run that finished it spent on it."""


def run_steps(steps: list[Step], markers_dir: Path) -> list[StepRecord]:
    """Run `steps` in order, skipping finished ones; prints a header and the wall time of each."""
    names = [step.name for step in steps]
    if len(set(names)) != len(names) or not all(re.fullmatch(r"[\w.-]+", name) for name in names):
        raise ValueError(f"step names must be unique plain names, got {names}")
    markers_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, step in enumerate(steps, 1):
        marker = markers_dir / f"{step.name}.json"
        label = f"[{index}/{len(steps)}] {step.name}"
        if marker.is_file():
            first_wall_s = json.loads(marker.read_text())["wall_s"]
            print(f"{label}: finished by an earlier run ({first_wall_s:.1f} s then); skipped", flush=True)
            records.append(StepRecord(step.name, "skipped", 0.0, first_wall_s))
            continue
        print(f"\n{label} ...", flush=True)
        start_s = time.perf_counter()
        step.action()
        wall_s = time.perf_counter() - start_s
        temp = marker.with_name(f".{marker.name}.tmp")
        temp.write_text(json.dumps({"wall_s": wall_s, "finished_at": time.time()}) + "\n")
        os.replace(temp, marker)
        print(f"{label}: done in {wall_s:.1f} s", flush=True)
        records.append(StepRecord(step.name, "ran", wall_s, wall_s))
    return records


def time_table(records: list[StepRecord], total_wall_s: float) -> str:
    """The steps' wall times as a Markdown table, with this run's total (Ray start-up and report included)."""
    lines = ["| step | this run (s) | when it ran (s) |", "| --- | ---: | ---: |"]
    for record in records:
        this_run = f"{record.wall_s:.1f}" if record.status == "ran" else "skipped"
        lines.append(f"| {record.name} | {this_run} | {record.first_wall_s:.1f} |")
    steps_s = sum(record.first_wall_s for record in records)
    lines.append(f"| **total** | **{total_wall_s:.1f}** | {steps_s:.1f} |")
    return "\n".join(lines) + "\n"
