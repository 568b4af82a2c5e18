"""The two doors to every job (`avgeo <job>` and `python jobs/<job>.py`) and the configs they read."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from avgeo.cli import JOBS, parse_overrides
from avgeo.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _config_class(job: str) -> type:
    module_name, config_name, _ = JOBS[job].split(":")
    return getattr(importlib.import_module(module_name), config_name)


@pytest.mark.parametrize("config_path", sorted((REPO / "configs").glob("*/*.yaml")), ids=str)
def test_every_shipped_config_loads_through_its_jobs_config_class(config_path):
    job = config_path.parent.name
    assert job in JOBS, f"configs/{job}/ has no job in avgeo.cli.JOBS"
    assert (REPO / "jobs" / f"{job}.py").is_file(), f"configs/{job}/ has no jobs/{job}.py"
    config = load_config(_config_class(job), config_path)
    assert type(config).__name__ == JOBS[job].split(":")[1]


def test_every_job_has_both_doors_and_a_tiny_config():
    for job in JOBS:
        assert (REPO / "jobs" / f"{job}.py").is_file()
        assert (REPO / "configs" / job / "tiny.yaml").is_file()
        assert (REPO / "configs" / job / "h100.yaml").is_file()


def test_overrides_are_parsed_as_yaml_values():
    assert parse_overrides(["train.epochs=3", "name=run-1", "use_gpu=true", "lr=0.5"]) == {
        "train.epochs": 3,
        "name": "run-1",
        "use_gpu": True,
        "lr": 0.5,
    }
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize(
    ("door", "override", "needle"),
    [
        (["-m", "avgeo.cli", "rfm"], "train.epochs=x", "train.epochs: expected int, got str 'x'"),
        (["jobs/rfm.py"], "trian.epochs=3", "unknown config key trian for RFMJobConfig"),
    ],
)
def test_a_bad_config_stops_either_door_with_the_key_named(door, override, needle):
    done = subprocess.run(
        [sys.executable, *door, "--config", "configs/rfm/tiny.yaml", "--set", override],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr
