"""Where each step of the demo writes, under one output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avgeo.distributed.learner import POLICY_DIR
from avgeo.reasoning.warmup import WARMUP_DIR


@dataclass(frozen=True)
class DemoPaths:
    """The demo's folders under `root` (absolute); `dictionary` is `mart` or `sae` (the ablation)."""

    root: Path

    @property
    def markers(self) -> Path:
        """One `<step>.json` per finished step."""
        return self.root / "steps"

    @property
    def synth(self) -> Path:
        """The avg-synth build (clips and manifest)."""
        return self.root / "avg-synth"

    @property
    def manifest(self) -> Path:
        return self.synth / "manifest.parquet"

    @property
    def mart_cache(self) -> Path:
        """The MART data factory's Parquet cache (shared by MART and the plain SAE)."""
        return self.root / "mart-cache"

    @property
    def ray_train(self) -> Path:
        """Ray Train's checkpoints of every trained run."""
        return self.root / "ray_train"

    def icsae(self, dictionary: str) -> Path:
        """The pretrained dictionary (the MART job writes `<out_dir>/icsae/`)."""
        return self.root / dictionary / "icsae"

    def features(self, dictionary: str) -> Path:
        """The feature table embedded with that dictionary's atoms."""
        return self.root / "features" / dictionary

    def models(self, dictionary: str) -> Path:
        """The model registry of heads trained on `features(dictionary)`."""
        return self.root / "models" / dictionary

    @property
    def warmup(self) -> Path:
        """The warmed-up MLLM (`run_warmup` writes `<out_dir>/mllm-warmup/`)."""
        return self.root / WARMUP_DIR

    @property
    def grpo(self) -> Path:
        return self.root / "grpo"

    @property
    def grpo_policy(self) -> Path:
        """The GRPO job's final policy."""
        return self.grpo / POLICY_DIR

    @property
    def psi_model(self) -> Path:
        """The RFM head over the GRPO policy's ψ: the Geolocator's prediction stage."""
        return self.models("mart") / "rfm-psi-grpo"

    @property
    def geotag_input(self) -> Path:
        """The test split's manifest, geotagged by the demo."""
        return self.root / "geotag-input" / "manifest.parquet"

    @property
    def geotag(self) -> Path:
        """The predictions Parquet (bucket folders) and heatmaps of the test clips."""
        return self.root / "geotag"

    def evaluation(self, dictionary: str) -> Path:
        """The evaluate job's tables of `models(dictionary)`."""
        return self.root / "evaluate" / dictionary

    @property
    def results(self) -> Path:
        """The demo's combined tables (Markdown)."""
        return self.root / "results.md"
