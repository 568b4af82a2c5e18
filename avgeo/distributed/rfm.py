"""The RFM job: train one prediction head (the RFM head or a baseline) on one kind of features with Ray
Train, and register the result for evaluation.

    feature table, train split -> TorchTrainer (data-parallel workers, DDP) -> a checkpoint per epoch
    -> <out_dir>/<model_name>/  (the head's config.json + model.safetensors, model.json, job.yaml)

Every worker reads the feature table itself (a shared path on a cluster) and trains on its share of each
epoch's shuffled rows (`DistributedSampler`); gradients are averaged across workers by DDP.

`feature_kind: psi` trains a head over the MLLM's ψ (`mllm`), the condition of the Geolocator's
prediction stage and of GRPO's R_calib: before training, one Ray task (on a GPU when `use_gpu`) computes
the training clips' ψ as the Geolocator does and caches it under `<out_dir>/<model_name>/psi/`
(`avgeo.psi.cached_psi`, keyed by the MLLM's weights), and the workers read it from there. The model
then loads as `GeolocatorConfig.rfm_model` and as the GRPO job's `calib_head`.

Resume: Ray Train keeps the epochs' checkpoints under `<storage_path>/<model_name>/`. Running the job
again with the same model name and storage path continues from the last one (Ray Train V2 resumes a run
by its name), so raising `train.epochs` trains only the extra epochs. A checkpoint holds the weights, the
optimizer state and the epoch; the shuffling and the flow's random draws are seeded per (seed, epoch,
worker), so a resumed run draws what an uninterrupted one would have.

The model registry is what `evaluate` reads: each `<out_dir>/<model_name>/` with a `model.json` (which
names, for a ψ head, the MLLM whose ψ it reads).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from avgeo.config import ConfigError, config_to_dict, save_config
from avgeo.distributed.model_registry import HEAD_TYPES, HeadInput, save_trained_model
from avgeo.distributed.rfm_training import HEAD_DIR, train_worker, training_table
from avgeo.perception.checkpoints import TINY
from avgeo.prediction.baselines import (
    CellClassifierConfig,
    RegressionConfig,
)
from avgeo.prediction.vector_field import RFMConfig
from avgeo.psi import PSI, PSI_INPUT_COLUMNS, cached_psi, load_reasoning_stage
from avgeo.reasoning.mllm import MLLMConfig

JOB_CONFIG_FILE = "job.yaml"
"""The job config that trained the model (loads back with `load_config(RFMJobConfig, …)`)."""

PSI_DIR = "psi"
"""Folder of a ψ model's directory that caches the training clips' ψ (`avgeo.psi.cached_psi` files)."""


@dataclass
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 50
    """Passes over the training rows (the method trains the RFM for 50)."""

    batch_size: int = 256
    """Examples per step on each worker; one step sees num_workers × batch_size examples."""

    learning_rate: float = 1e-3
    """AdamW learning rate (constant)."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    seed: int = 0
    """Seed of the shuffling and of the flow's draws (y0, t, condition dropout)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"train.epochs {self.epochs} and train.batch_size {self.batch_size} must be >= 1"
            )
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError("train.learning_rate must be > 0 and train.weight_decay >= 0")


@dataclass
class RFMJobConfig:
    """The RFM job: which features, which head, how to train it, and where the model and checkpoints go."""

    features: Path
    """Feature table (a Parquet file or a folder of them) written by the embedding job."""

    out_dir: Path = Path("out/models")
    """Model registry: the trained model goes to `<out_dir>/<model_name>/`."""

    storage_path: Path = Path("out/ray_train")
    """Ray Train's checkpoints (shared storage on a cluster); a re-run with the same model name resumes."""

    head: Literal["rfm", "regression", "classification"] = "rfm"
    """Which head to train."""

    feature_kind: HeadInput = "audiovisual"
    """Its input: `visual` (GeoCLIP), `audio` (raw CLAP), `atoms` (IC-SAE), `audiovisual` (all three) or
    `psi` (the ψ of `mllm` on each clip)."""

    mllm: MLLMConfig = field(default_factory=lambda: MLLMConfig(temperature=0.0))
    """The MLLM whose ψ a `psi` head reads (unused by other kinds), with the Geolocator's settings. Greedy
    when this section is left out; a section given in a config must say `temperature: 0`."""

    psi_batch_size: int = 16
    """Clips per MLLM call while computing ψ."""

    model_name: str = ""
    """Name in the registry and of the Ray Train run; empty means `<head>-<feature_kind>`. A run with this
    name under `storage_path` is resumed: after changing the head, its features or its MLLM, pick a new
    name."""

    train_split: str = "train"
    """Feature-table rows of this split (and without an error) are the training set."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation settings."""

    rfm: RFMConfig = field(default_factory=RFMConfig)
    """The RFM head's architecture (`head: rfm`); cond_dim is set from the features, leave it at 0."""

    regression: RegressionConfig = field(default_factory=RegressionConfig)
    """The regression head (`head: regression`); feature_dim is set from the features, leave it at 0."""

    classification: CellClassifierConfig = field(default_factory=CellClassifierConfig)
    """The S2-cell classifier (`head: classification`); feature_dim and cell_tokens are set from the
    training rows, leave them empty."""

    num_workers: int = 2
    """Ray Train workers (data-parallel replicas)."""

    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; fractions let workers share cores (on a 2-core machine, 0.5 each)."""

    use_gpu: bool = False
    """One GPU per worker when true."""

    torch_threads: int = 1
    """torch threads per worker: small heads on shared cores run fastest with 1."""

    def __post_init__(self) -> None:
        derived = {
            "rfm.cond_dim": self.rfm.cond_dim != 0,
            "regression.feature_dim": self.regression.feature_dim != 0,
            "classification.feature_dim": self.classification.feature_dim != 0,
            "classification.cell_tokens": bool(self.classification.cell_tokens),
        }
        for key, is_set in derived.items():
            if is_set:
                raise ConfigError(
                    f"{key} is set from the feature table by the job; remove it from the config"
                )
        if self.num_workers < 1 or self.torch_threads < 1 or self.cpus_per_worker <= 0:
            raise ConfigError("num_workers and torch_threads must be >= 1 and cpus_per_worker > 0")
        if self.feature_kind == PSI and self.mllm.temperature != 0:
            raise ConfigError(
                f"mllm.temperature={self.mllm.temperature}: ψ comes from greedy completions, as the "
                "Geolocator decodes; set mllm.temperature: 0"
            )
        if self.psi_batch_size < 1:
            raise ConfigError(f"psi_batch_size={self.psi_batch_size}: expected an int >= 1")
        if "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"model_name {self.model_name!r} must be a plain folder name")

    @property
    def name(self) -> str:
        """The model's name: `model_name`, or `<head>-<feature_kind>`."""
        return self.model_name or f"{self.head}-{self.feature_kind}"


@dataclass
class RFMSummary:
    """What one run of the RFM job did."""

    model_dir: Path
    """The registered model."""
    head: str
    """Head type."""
    feature_kind: str
    """Input features."""
    train_rows: int
    """Training examples."""
    epochs: int
    """Epochs the model has been trained for, this run and the runs it resumed."""
    final_loss: float
    """Mean training loss of the last epoch."""
    wall_s: float
    """Seconds the run took."""

    def report(self) -> str:
        """One human-readable line."""
        return (
            f"rfm: {self.head} on {self.feature_kind} features ({self.train_rows} rows), "
            f"{self.epochs} epochs, final loss {self.final_loss:.4f}, {self.wall_s:.1f} s -> {self.model_dir}"
        )


def run_rfm(config: RFMJobConfig) -> RFMSummary:
    """Train a prediction head on a feature table with Ray Train (resumable) and register it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start_s = time.perf_counter()
    # Workers may run anywhere: hand them absolute paths.
    config = dataclasses.replace(
        config,
        features=config.features.resolve(),
        out_dir=config.out_dir.resolve(),
        storage_path=config.storage_path.resolve(),
        mllm=dataclasses.replace(config.mllm, model=_absolute_if_local(config.mllm.model)),
    )
    psi_file = None
    if config.feature_kind == PSI:
        psi_task = ray.remote(train_psi_file).options(
            num_cpus=config.cpus_per_worker, num_gpus=1 if config.use_gpu else 0
        )
        psi_file = ray.get(psi_task.remote(config))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "psi_file": psi_file},
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=config.name,
            storage_path=str(config.storage_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(
            f"{config.name}: Ray Train finished without a checkpoint; see the worker logs above"
        )
    with result.checkpoint.as_directory() as checkpoint_dir:
        head = HEAD_TYPES[config.head].from_pretrained(Path(checkpoint_dir) / HEAD_DIR)
    metrics = result.metrics
    model_dir = config.out_dir / config.name
    about = {"epochs": metrics["epoch"], "train_rows": metrics["train_rows"]}
    about |= {"features": str(config.features)}
    if config.feature_kind == PSI:
        about |= {"mllm": config_to_dict(config.mllm), "psi_file": str(psi_file)}
    save_trained_model(model_dir, head, config.feature_kind, about)
    save_config(config, model_dir / JOB_CONFIG_FILE)
    summary = RFMSummary(
        model_dir=model_dir,
        head=config.head,
        feature_kind=config.feature_kind,
        train_rows=metrics["train_rows"],
        epochs=metrics["epoch"],
        final_loss=metrics["loss"],
        wall_s=time.perf_counter() - start_s,
    )
    print(summary.report())
    return summary


def train_psi_file(config: RFMJobConfig) -> Path:
    """The ψ of the training clips under `config.mllm`, cached in the model's `psi/` folder (computed
    there on the first call; runs as a Ray task, or anywhere)."""
    table = training_table(config, ["split", "error", *PSI_INPUT_COLUMNS])
    stage = load_reasoning_stage(config.mllm, "cuda" if config.use_gpu else "cpu")
    return cached_psi(stage, table, config.out_dir / config.name / PSI_DIR, config.psi_batch_size)


def _absolute_if_local(name_or_dir: str) -> str:
    """A local checkpoint directory as an absolute path (workers may run elsewhere); names as they are."""
    is_local = name_or_dir != TINY and Path(name_or_dir).exists()
    return str(Path(name_or_dir).resolve()) if is_local else name_or_dir
