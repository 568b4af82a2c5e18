"""The MART job: the data factory on Ray Data, then the IC-SAE's MART pretraining on Ray Train + DeepSpeed.

    range(mixture ids) -> render + mix (CPU tasks) -> encode (CLAP actor pool) -> Parquet cache
      (`avgeo.distributed.mart_factory`)
    cache -> TorchTrainer (DeepSpeed ZeRO workers) -> a checkpoint per epoch -> <out_dir>/icsae/

Training. Every worker reads the training rows itself (the cache must be on shared storage on a
cluster), takes its share of each epoch's shuffled order and runs the objective of `avgeo.perception.mart`
inside a DeepSpeed engine (ZeRO stage from the config; gloo on CPU, NCCL on GPU). After each optimiser
step the dictionary is constrained in one place, `_constrain`: kernels orthogonal to the training
mixtures' shared direction and unit-norm, written into ZeRO's fp32 master copy as well. Every epoch
rank 0 scores the held-out mixtures, appends a line to `<out_dir>/metrics.jsonl` and every rank
reports a checkpoint: the IC-SAE (`save_pretrained`), DeepSpeed's engine state (weights, optimiser
partitions) and the epoch. Re-running with the same `run_name` and `storage_path` resumes after the last
checkpoint (Ray Train V2 resumes a run by name); ZeRO partitions the optimiser state by rank, so a
resumed run needs the same `num_workers`. The trained IC-SAE is exported to `<out_dir>/icsae/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from avgeo.config import ConfigError, save_config
from avgeo.distributed.mart_factory import FactoryConfig, build_factory, read_mixtures
from avgeo.perception.icsae import ICSAE
from avgeo.perception.mart import (
    DecompositionAccuracy,
    MixtureBatch,
    constrain_dictionary_,
    decomposition_accuracy,
    mart_decompose,
    mart_loss,
    shared_direction,
    standard_sae_decompose,
    standard_sae_loss,
)
from avgeo.runlog import MetricsLog

METRICS_FILE = "metrics.jsonl"
"""One JSON line per epoch in `out_dir`: losses, held-out decomposition accuracy, seconds."""

ICSAE_DIR = "icsae"
"""The trained IC-SAE in `out_dir` (and in every checkpoint), loadable with `ICSAE.from_pretrained`."""

JOB_CONFIG_FILE = "job.yaml"
"""The config of the last run, in `out_dir`."""

_DEEPSPEED_DIR = "deepspeed"
_DEEPSPEED_TAG = "state"
_EPOCH_FILE = "epoch.json"


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
        _train_loop,
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


def _train_loop(loop_config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: restore the last checkpoint if any, train the remaining epochs, export."""
    import deepspeed
    import ray.train
    import ray.train.torch

    config: MartConfig = loop_config["config"]
    train = config.train
    torch.set_num_threads(config.torch_threads)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    own_group = _ensure_process_group()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    max_sources = config.factory.mixtures.max_sources
    train_set = read_mixtures(config.factory_dir(), "train", max_sources)
    heldout = read_mixtures(config.factory_dir(), "heldout", max_sources)
    direction = shared_direction(train_set.mixtures) if train.orthogonal_to_shared else None
    if direction is not None:
        train_set = train_set.without_direction(direction)
    model = ICSAE.from_pretrained(train.initial_icsae)
    constrain_dictionary_(model, direction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config={
            "train_micro_batch_size_per_gpu": train.batch_size,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": config.zero_stage},
            "steps_per_print": 1 << 30,
        },
    )
    direction = None if direction is None else direction.to(device)
    start_epoch = _restore(engine, config)
    if rank == 0 and start_epoch:
        print(f"{config.run_name}: resuming after epoch {start_epoch} of {train.epochs}")
    metrics_log = MetricsLog(config.out_dir / METRICS_FILE) if rank == 0 else None
    final_loss = None
    for epoch in range(start_epoch, train.epochs):
        epoch_start_s = time.perf_counter()
        share = _epoch_share(len(train_set), train.seed + epoch, rank, world_size)
        final_loss, classification, reconstruction = _train_epoch(
            engine, model, train_set[share], train, direction, device
        )
        metrics = {
            "epoch": epoch + 1,
            "loss": final_loss,
            "classification": classification,
            "reconstruction": reconstruction,
            "epoch_s": time.perf_counter() - epoch_start_s,
        }
        if rank == 0:
            metrics |= _heldout_metrics(model, heldout, train.objective)
            metrics_log.write(step=epoch + 1, **metrics)
            print(
                f"{config.run_name}: epoch {epoch + 1}/{train.epochs} loss {final_loss:.4f} "
                f"held-out step accuracy {100 * metrics['heldout_step_accuracy']:.1f}%"
            )
        _report(engine, model, metrics, rank)
    accuracy = _evaluate(model, heldout, train.objective)
    if rank == 0:
        model.save_pretrained(config.out_dir / ICSAE_DIR)
    if own_group:
        torch.distributed.destroy_process_group()
    return {
        "train_rows": len(train_set),
        "heldout_rows": len(heldout),
        "epochs": max(start_epoch, train.epochs),
        "final_loss": final_loss,
        "heldout": dataclasses.asdict(accuracy),
    }


def _epoch_share(num_rows: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This worker's rows of the epoch's shuffled order; every worker gets as many (so as many steps)."""
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return order[rank : num_rows - num_rows % world_size : world_size]


def _train_epoch(
    engine: Any,
    model: ICSAE,
    rows: MixtureBatch,
    train: TrainConfig,
    direction: torch.Tensor | None,
    device: torch.device,
) -> list[float]:
    """One pass over this worker's rows; the mean loss, classification and reconstruction over every
    worker's mixtures."""
    loss_fn = mart_loss if train.objective == "mart" else standard_sae_loss
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # total, classification, reconstruction, rows
    for first in range(0, len(rows), train.batch_size):
        batch = rows[first : first + train.batch_size].to(device)
        loss = loss_fn(
            model,
            batch,
            teacher_forcing=train.selection == "teacher_forcing",
            reconstruction_weight=train.reconstruction_weight,
            logit_scale=train.logit_scale,
        )
        engine.backward(loss.total)
        engine.step()
        _constrain(model, direction)
        parts = torch.stack([loss.total, loss.classification, loss.reconstruction]).detach().double()
        sums += torch.cat([parts * len(batch), parts.new_tensor([len(batch)])])
    torch.distributed.all_reduce(sums)
    return (sums[:3] / sums[3]).tolist()


def _constrain(model: ICSAE, direction: torch.Tensor | None) -> None:
    """After an optimiser step: the dictionary's constraint, in the module and in ZeRO's fp32 master copy."""
    from deepspeed.utils import safe_set_full_fp32_param

    constrain_dictionary_(model, direction)
    # ZeRO-1/2 step a separate fp32 copy of the weights; left alone it would undo the constraint next step.
    safe_set_full_fp32_param(model.dictionary, model.dictionary.detach())


def _evaluate(model: ICSAE, heldout: MixtureBatch, objective: str) -> DecompositionAccuracy:
    decompose = mart_decompose if objective == "mart" else standard_sae_decompose
    device = model.dictionary.device
    with torch.no_grad():
        predicted = decompose(model, heldout.mixtures.to(device), heldout.classes.shape[1])
    return decomposition_accuracy(predicted.cpu(), heldout.classes)


def _heldout_metrics(model: ICSAE, heldout: MixtureBatch, objective: str) -> dict[str, float]:
    accuracy = _evaluate(model, heldout, objective)
    per_step = {f"heldout_step{k}_accuracy": value for k, value in enumerate(accuracy.per_step, 1)}
    return {
        "heldout_step_accuracy": accuracy.step,
        "heldout_sequence_accuracy": accuracy.sequence,
        "heldout_set_accuracy": accuracy.class_set,
        **per_step,
    }


def _report(engine: Any, model: ICSAE, metrics: dict[str, Any], rank: int) -> None:
    """Every rank reports the epoch's checkpoint; Ray Train merges the ranks' folders into one."""
    import ray.train

    with tempfile.TemporaryDirectory() as checkpoint_dir:
        # Every rank writes its own optimiser partition; rank 0 also writes the weights.
        engine.save_checkpoint(str(Path(checkpoint_dir) / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG)
        if rank == 0:
            model.save_pretrained(Path(checkpoint_dir) / ICSAE_DIR)
            (Path(checkpoint_dir) / _EPOCH_FILE).write_text(json.dumps({"epoch": metrics["epoch"]}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))


def _restore(engine: Any, config: MartConfig) -> int:
    """Load the last checkpoint's engine state, if the run has one; returns its epoch (else 0)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as checkpoint_dir:
        load_path, _ = engine.load_checkpoint(str(Path(checkpoint_dir) / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG)
        if load_path is None:
            raise ConfigError(
                f"{config.storage_path / config.run_name}: its last checkpoint holds no DeepSpeed state for "
                "this worker (resume with the same num_workers), or set a new run_name"
            )
        return int(json.loads((Path(checkpoint_dir) / _EPOCH_FILE).read_text())["epoch"])


def _ensure_process_group() -> bool:
    """Start a one-process gloo group when Ray Train runs the loop in the driver (num_workers 0), since
    DeepSpeed needs one (and LOCAL_RANK); returns whether this call started it."""
    if torch.distributed.is_initialized():
        return False
    os.environ.setdefault("LOCAL_RANK", "0")
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    return True
