"""The demo's budgets: how much of each job `make demo` runs, chosen so the whole fits 20 minutes on 2 cores.

Every job still reads its own `configs/<job>/tiny.yaml`; these fields only override the few settings
that decide its cost (epochs, steps, mixtures) and the seeds, so the demo is the jobs' embedded default,
shortened. `DemoConfig()` is what `avgeo demo` runs; tests shrink it further on the `ci` preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from avgeo.config import ConfigError

HeadName = Literal["rfm", "regression", "classification"]


@dataclass
class DemoConfig:
    """Benchmark size, seed and per-step budgets of `avgeo demo`."""

    preset: Literal["ci", "demo", "full"] = "demo"
    """avg-synth preset the demo builds and trains on."""
    seed: int = 0
    """Seed of the benchmark and of every job (same seed, same tables)."""
    num_cpus: int = 2
    """CPUs of the local Ray cluster the demo starts (when none is running in this process)."""
    train_poll_s: float = 0.2
    """Ray Train's controller poll interval, s (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`): each epoch's
    checkpoint waits for one poll, and Ray's default 2 s would cost more than the tiny heads' epochs."""
    mart_mixtures: int = 300
    """Training mixtures of the MART data factory (each costs ~4 CLAP passes to build)."""
    mart_heldout: int = 100
    """Held-out mixtures scored for decomposition accuracy (the method scores 200)."""
    mart_epochs: int = 4
    """MART epochs (the plain-SAE ablation trains as many)."""
    sae_ablation: bool = True
    """Also pretrain a plain top-K SAE, embed with it and train the atoms RFM head on its atoms: the
    method's MART-vs-standard-SAE ablation."""
    heads: tuple[HeadName, ...] = ("rfm", "regression")
    """Heads trained on each feature kind (visual, audio, atoms, audiovisual); each run costs ~15 s of Ray
    Train start-up, so the S2-cell classifier is left to `avgeo rfm --set head=classification`."""
    head_epochs: int = 20
    """Epochs of every head (the method trains the RFM for 50)."""
    head_workers: int = 1
    """Ray Train workers per head: the heads are small, so a second worker costs more than it saves."""
    psi_ablation: bool = True
    """Also train the RFM head over the warm-up model's ψ, before GRPO: the method's Table 4 row with the
    reasoning stage but no rewards."""
    warmup_epochs: int = 3
    """Epochs of the MLLM's supervised warm-up on the training clips' traces."""
    grpo_steps: int = 4
    """GRPO steps after the warm-up."""
    eval_clips: int = 16
    """Held-out clips whose greedy answers the warm-up and GRPO report (before and after)."""
    eval_samples: int = 32
    """Draws per test clip when scoring the sampling heads."""
    prdc_k: int = 5
    """k of precision / recall / density / coverage; below the test split's number of locations."""
    gallery_size: int | None = 10000
    """GeoCLIP gallery points of its Table 1 row; null leaves the row out."""

    def __post_init__(self) -> None:
        positive = {"num_cpus": self.num_cpus, "mart_mixtures": self.mart_mixtures}
        positive |= {"mart_heldout": self.mart_heldout, "mart_epochs": self.mart_epochs}
        positive |= {"head_epochs": self.head_epochs, "head_workers": self.head_workers}
        positive |= {"warmup_epochs": self.warmup_epochs, "grpo_steps": self.grpo_steps}
        positive |= {"eval_samples": self.eval_samples, "prdc_k": self.prdc_k}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}={value}: expected an int >= 1")
        if self.seed < 0 or self.eval_clips < 0 or self.train_poll_s <= 0:
            raise ConfigError("seed and eval_clips must be >= 0 and train_poll_s > 0")
        if not self.heads or "rfm" not in self.heads:
            raise ConfigError(
                f"heads={self.heads}: the demo needs the rfm head (the method's and the ψ model's); add it"
            )

    @property
    def dictionaries(self) -> tuple[str, ...]:
        """The pretrained dictionaries: `mart`, and `sae` with the ablation (`DemoPaths` folder names)."""
        return ("mart", "sae") if self.sae_ablation else ("mart",)
