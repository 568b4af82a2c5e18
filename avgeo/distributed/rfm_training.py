"""The RFM job's training (`avgeo.distributed.rfm`): its training set (the embedded rows of the train split
as a feature matrix, or their ψ), the untrained head, and the Ray Train worker loop that trains it with
DDP and reports a checkpoint per epoch (weights, optimizer state, epoch; `HEAD_DIR` holds the head as
`save_pretrained` writes it)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from avgeo.data.features import embedded_split, feature_matrix, labels_latlon
from avgeo.perception.checkpoints import CheckpointError
from avgeo.prediction.baselines import CellClassifierHead, RegressionHead, class_cells
from avgeo.prediction.heads import FlowHead, GeoHead
from avgeo.psi import PSI, read_psi
from avgeo.runlog import MetricsLog

if TYPE_CHECKING:
    from avgeo.distributed.rfm import RFMJobConfig

METRICS_FILE = "metrics.jsonl"
"""One JSON line per epoch in the model's directory: epoch, loss (mean over the epoch's examples), seconds."""

TRAIN_STATE_FILE = "train_state.pt"
"""A checkpoint's weights, optimizer state and epoch (what a resumed run restores)."""

HEAD_DIR = "head"
"""A checkpoint's folder of the head as `save_pretrained` writes it (what the job registers)."""

FEATURE_COLUMNS = ["split", "lat", "lon", "error", "visual_mean", "audio_mean", "atom_class_strength"]
"""The feature-table columns the heads' inputs and labels come from (ψ: `PSI_INPUT_COLUMNS` besides)."""


def build_head(config: RFMJobConfig, feature_dim: int, train_latlon_deg: np.ndarray) -> GeoHead:
    """The untrained head `config.head` for features of width `feature_dim` and the (N, 2) degree training
    locations (which give the classifier its classes)."""
    if config.head == "rfm":
        return FlowHead(dataclasses.replace(config.rfm, cond_dim=feature_dim))
    if config.head == "regression":
        return RegressionHead(dataclasses.replace(config.regression, feature_dim=feature_dim))
    classification = config.classification
    cells = class_cells(train_latlon_deg, classification.s2_level)
    return CellClassifierHead(dataclasses.replace(classification, feature_dim=feature_dim, cell_tokens=cells))


def training_table(config: RFMJobConfig, columns: list[str]) -> pa.Table:
    """The embedded rows of `config.train_split` (`columns` of them, `split` and `error` included)."""
    return embedded_split(config.features, config.train_split, columns, "train_split")


def training_rows(config: RFMJobConfig, psi_file: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training set: features (N, D) float32 of `config.feature_kind` and labels (N, 2) degrees.

    A `psi` head's features are read from `psi_file`, the training clips' ψ (`train_psi_file`).
    """
    if config.feature_kind != PSI:
        table = training_table(config, FEATURE_COLUMNS)
        return feature_matrix(table, config.feature_kind), labels_latlon(table)
    if psi_file is None:
        raise ValueError("psi features are read from the file train_psi_file wrote; pass it as psi_file")
    table = training_table(config, [*FEATURE_COLUMNS, "clip_id"])
    return read_psi(psi_file, table["clip_id"].to_pylist()), labels_latlon(table)


class _Objective(nn.Module):
    """The head's loss as a forward pass, so DDP sees the call and averages the gradients."""

    def __init__(self, head: GeoHead) -> None:
        super().__init__()
        self.head = head

    def forward(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return self.head.loss(features, targets, generator)


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: restore the last checkpoint if any, then train the remaining epochs."""
    import ray.train
    import ray.train.torch

    config: RFMJobConfig = loop_config["config"]
    torch.set_num_threads(config.torch_threads)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    features, latlon_deg = training_rows(config, loop_config["psi_file"])
    head = build_head(config, features.shape[1], latlon_deg).to(device)
    dataset = TensorDataset(torch.from_numpy(features), head.training_targets(torch.from_numpy(latlon_deg)))
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay
    )
    start_epoch = _restore(config, head, optimizer)
    if rank == 0 and start_epoch:
        print(f"{config.name}: resuming after epoch {start_epoch} of {config.train.epochs}")
    model = ray.train.torch.prepare_model(_Objective(head))
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.train.seed
    )
    loader = DataLoader(dataset, batch_size=config.train.batch_size, sampler=sampler)
    metrics_log = MetricsLog(config.out_dir / config.name / METRICS_FILE) if rank == 0 else None

    for epoch in range(start_epoch, config.train.epochs):
        epoch_start_s = time.perf_counter()
        sampler.set_epoch(epoch)
        seed = np.random.SeedSequence([config.train.seed, epoch, rank]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        mean_loss = _train_epoch(model, optimizer, loader, generator, device, world_size)
        metrics = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "epoch_s": time.perf_counter() - epoch_start_s,
            "train_rows": len(dataset),
        }
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            checkpoint = None
            if rank == 0:
                torch.save(
                    {"epoch": epoch + 1, "head": head.state_dict(), "optimizer": optimizer.state_dict()},
                    Path(checkpoint_dir) / TRAIN_STATE_FILE,
                )
                head.save_pretrained(Path(checkpoint_dir) / HEAD_DIR)
                checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
                metrics_log.write(
                    step=epoch + 1, epoch=epoch + 1, loss=metrics["loss"], epoch_s=metrics["epoch_s"]
                )
                print(f"{config.name}: epoch {epoch + 1}/{config.train.epochs} loss {metrics['loss']:.4f}")
            ray.train.report(metrics, checkpoint=checkpoint)


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    generator: torch.Generator,
    device: torch.device,
    world_size: int,
) -> float:
    """One pass over this worker's share of the rows; returns the mean loss over every worker's examples."""
    model.train()
    loss_total, examples = 0.0, 0
    for features, targets in loader:
        loss = model(features.to(device), targets.to(device), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_total += loss.item() * len(features)
        examples += len(features)
    totals = torch.tensor([loss_total, examples], dtype=torch.float64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(totals)
    return float(totals[0] / totals[1])


def _restore(config: RFMJobConfig, head: GeoHead, optimizer: torch.optim.Optimizer) -> int:
    """Load the last checkpoint's weights and optimizer state, if there is one; returns its epoch (else 0)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as checkpoint_dir:
        state = torch.load(Path(checkpoint_dir) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    try:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{config.storage_path / config.name}: the run's last checkpoint does not fit this config's "
            f"head ({exc}); set a new model_name, or delete that folder to start over"
        ) from exc
    return int(state["epoch"])
