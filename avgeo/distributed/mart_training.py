"""The MART job's Ray Train worker loop: the IC-SAE pretrained inside a DeepSpeed engine.

Every worker reads the training rows itself (the cache must be on shared storage on a
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avgeo.config import ConfigError
from avgeo.distributed.mart_factory import read_mixtures
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

if TYPE_CHECKING:
    from avgeo.distributed.mart import MartConfig, TrainConfig

METRICS_FILE = "metrics.jsonl"
"""One JSON line per epoch in `out_dir`: losses, held-out decomposition accuracy, seconds."""

ICSAE_DIR = "icsae"
"""The trained IC-SAE in `out_dir` (and in every checkpoint), loadable with `ICSAE.from_pretrained`."""

_DEEPSPEED_DIR = "deepspeed"
_DEEPSPEED_TAG = "state"
_EPOCH_FILE = "epoch.json"


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
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
