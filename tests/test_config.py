"""The config loader: round-trips, and every malformed input is a ConfigError naming the key."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from avgeo.config import ConfigError, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""


@dataclass
class Job:
    name: str
    """Run name (required)."""
    epochs: int = 5
    """Passes over the data."""
    solver: Literal["euler", "rk4"] = "euler"
    """ODE solver."""
    out: Path | None = None
    """Output folder."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer settings."""
    tags: list[str] = field(default_factory=list)
    """Free-form labels."""


def test_round_trip_through_yaml(tmp_path):
    job = load_config(Job, {"name": "a", "epochs": 3, "optim": {"lr": 1}, "out": "x/y", "tags": ["t"]})
    assert job.optim.lr == 1.0 and isinstance(job.optim.lr, float)
    assert job.out == Path("x/y")
    save_config(job, tmp_path / "job.yaml")
    assert load_config(Job, tmp_path / "job.yaml") == job


def test_exponents_that_yaml_reads_as_strings_are_floats():
    assert load_config(Job, {"name": "a", "optim": {"lr": "1e-4"}}).optim.lr == 1e-4


def test_overrides_use_dotted_keys():
    job = load_config(Job, {"name": "a"}, **{"optim.lr": 0.5, "epochs": 9})
    assert (job.optim.lr, job.epochs) == (0.5, 9)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"name": "a", "epoch": 3}, "unknown config key epoch"),
        ({"name": "a", "optim": {"learning_rate": 1}}, "unknown config key optim.learning_rate"),
        ({}, "missing required config key name"),
        ({"name": "a", "epochs": "five"}, "epochs: expected int"),
        ({"name": "a", "epochs": True}, "epochs: expected int, got bool"),
        ({"name": "a", "solver": "rk5"}, "solver: 'rk5' is not one of"),
        ({"name": "a", "optim": {"betas": [0.9, "x"]}}, "optim.betas[1]: expected float"),
        ({"name": "a", "tags": "t"}, "tags: expected a list"),
    ],
)
def test_bad_configs_name_the_key(raw, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(Job, raw)
    assert needle in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, tmp_path / "nope.yaml")
