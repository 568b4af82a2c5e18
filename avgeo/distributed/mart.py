"""The MART job: the data factory on Ray Data, then the IC-SAE's MART pretraining on Ray Train + DeepSpeed.

range(mixture ids) -> render + mix (CPU tasks) -> encode (CLAP actor pool) -> Parquet cache
  (`avgeo.distributed.mart_factory`)
cache -> TorchTrainer (DeepSpeed ZeRO workers) -> a checkpoint per epoch -> <out_dir>/icsae/
  (`avgeo.distributed.mart_training`)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from avgeo.config import ConfigError, save_config
from avgeo.distributed.mart_factory import FactoryConfig, build_factory
from avgeo.distributed.mart_training import ICSAE_DIR, train_worker
from avgeo.perception.mart import DecompositionAccuracy

JOB_CONFIG_FILE = "job.yaml"
"""The config of the last run, in `out_dir`."""


@dataclass
class TrainConfig:
    """The objective and its optimisation."""

    objective: Literal["mart", "standard_sae"] = "mart"
    """`mart` (Algorithm 1's per-step loss) or `standard_sae` (the one-shot top-K ablation)."""
    selection: Literal["teacher_forcing", "free_running"] = "teacher_forcing"
    """Which kernel a training step uses: the best of the true class (teacher forcing) or the argmax."""
    epochs: int = 5
    """Passes over the training mixtures (the method: 5)."""
    learning_rate: float = 1e-4
    """AdamW learning rate, constant (the method: 1e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 32
    """Mixtures per step on each worker."""
    logit_scale: float = 30.0
    """Class scores are multiplied by this before the cross-entropy: activations of unit-norm kernels on
    embeddings of norm ~5 differ by fractions, too flat a softmax to learn from. Argmaxes do not change."""
    reconstruction_weight: float = 1.0
    """Weight of the squared reconstruction error against the cross-entropy."""
    orthogonal_to_shared: bool = True
    """Keep kernels orthogonal to the training mixtures' mean direction (see `constrain_dictionary_`)."""
    initial_icsae: str = "tiny"
    """The dictionary training starts from: `ICSAE.from_pretrained` name or directory."""
    seed: int = 0
    """Seed of each epoch's shuffling."""

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError(f"train.epochs {self.epochs} must be >= 0 and train.batch_size >= 1")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.logit_scale <= 0:
            raise ConfigError("train.learning_rate and train.logit_scale must be > 0, weight_decay >= 0")
        if self.reconstruction_weight < 0:
            raise ConfigError(f"train.reconstruction_weight must be >= 0, got {self.reconstruction_weight}")


@dataclass
class MartConfig:
    """The MART job: data factory, training, and where the cache, checkpoints and trained IC-SAE go."""

    cache_dir: Path = Path("data/mart")
    """Parent of the factory's Parquet caches, one `mixtures-<hash>/` per factory config (shared storage
    on a cluster)."""
    out_dir: Path = Path("out/mart")
    """Receives `icsae/` (the trained IC-SAE), `metrics.jsonl` and `job.yaml`."""
    storage_path: Path = Path("out/ray_train")
    """Ray Train's checkpoints (shared storage on a cluster); a re-run with the same run name resumes."""
    run_name: str = "mart"
    """Name of the Ray Train run under `storage_path`; after changing the objective, pick a new one."""
    factory: FactoryConfig = field(default_factory=FactoryConfig)
    """The data factory."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The objective and its optimisation."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimiser state sharded) or 2 (and gradients).
    Stage 3 shards the weights behind forward hooks; Algorithm 1 reads the dictionary directly."""
    num_workers: int = 2
    """Ray Train workers (data-parallel); 0 runs the loop in the driver (Ray Train's local mode)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    use_gpu: bool = False
    """One GPU per worker when true (DeepSpeed over NCCL); otherwise CPUs and gloo."""
    torch_threads: int = 1
    """torch threads per worker."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.num_workers < 0 or self.torch_threads < 1 or self.cpus_per_worker <= 0:
            raise ConfigError("num_workers must be >= 0, torch_threads >= 1 and cpus_per_worker > 0")
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"run_name {self.run_name!r} must be a plain folder name")

    def factory_dir(self) -> Path:
        """The Parquet cache of this config's factory."""
        return self.cache_dir / f"mixtures-{self.factory.cache_key()}"


@dataclass
class MartSummary:
    """What one run of the MART job did."""

    objective: str
    """`mart` or `standard_sae`."""
    factory_dir: Path
    """The Parquet cache trained on."""
    factory_s: float | None
    """Seconds the factory took this run; None when its cache was reused."""
    train_rows: int
    """Training mixtures."""
    heldout_rows: int
    """Held-out mixtures scored."""
    epochs: int
    """Epochs trained, this run and the runs it resumed."""
    final_loss: float | None
    """Mean training loss of the last epoch this run trained (None when it trained none)."""
    heldout: DecompositionAccuracy
    """Decomposition accuracy of the trained IC-SAE on the held-out mixtures."""
    icsae_dir: Path
    """The exported IC-SAE."""
    wall_s: float
    """Seconds the run took."""

    def report(self) -> str:
        """A few human-readable lines."""
        factory = "cached" if self.factory_s is None else f"built in {self.factory_s:.1f} s"
        per_step = ", ".join(f"{100 * value:.1f}" for value in self.heldout.per_step)
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        return (
            f"mart: {self.objective}, {self.train_rows} training mixtures ({factory}), {self.epochs} epochs, "
            f"final loss {loss}, {self.wall_s:.1f} s -> {self.icsae_dir}\n"
            f"  held-out decomposition accuracy over {self.heldout_rows} mixtures: "
            f"{100 * self.heldout.step:.1f}% of steps (per step: {per_step}), "
            f"{100 * self.heldout.sequence:.1f}% whole sequences, "
            f"{100 * self.heldout.class_set:.1f}% class sets"
        )


def run_mart(config: MartConfig) -> MartSummary:
    """Build (or reuse) the MART data factory's cache, then pretrain the IC-SAE on it with Ray Train."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    start_s = time.perf_counter()
    # Workers may run anywhere: hand them absolute paths.
    config = dataclasses.replace(
        config,
        cache_dir=config.cache_dir.resolve(),
        out_dir=config.out_dir.resolve(),
        storage_path=config.storage_path.resolve(),
    )
    factory_dir, factory_s = build_factory(config)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config},
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=config.run_name,
            storage_path=str(config.storage_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome = trainer.fit().return_value
    save_config(config, config.out_dir / JOB_CONFIG_FILE)
    summary = MartSummary(
        objective=config.train.objective,
        factory_dir=factory_dir,
        factory_s=factory_s,
        train_rows=outcome["train_rows"],
        heldout_rows=outcome["heldout_rows"],
        epochs=outcome["epochs"],
        final_loss=outcome["final_loss"],
        heldout=DecompositionAccuracy(**outcome["heldout"]),
        icsae_dir=config.out_dir / ICSAE_DIR,
        wall_s=time.perf_counter() - start_s,
    )
    print(summary.report())
    return summary
