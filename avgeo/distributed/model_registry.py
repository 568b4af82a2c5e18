"""The model registry the rfm job writes and evaluate, GRPO and the demo read: each `<out_dir>/<name>/`
holds a trained head (`save_pretrained`) and `model.json` naming its head type, what it reads (a feature
kind, or `psi` with the MLLM whose ψ it was trained on) and how it was trained. Ray-free."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.features import FeatureKind
from avgeo.prediction.baselines import CellClassifierHead, RegressionHead
from avgeo.prediction.heads import FlowHead, GeoHead
from avgeo.psi import PSI
from avgeo.reasoning.mllm import MLLMConfig

HeadInput = Literal[FeatureKind, "psi"]
"""What a head reads: a feature-table kind (`feature_matrix`) or `psi`, the MLLM's ψ of each clip."""

HEAD_TYPES: dict[str, type[GeoHead]] = {
    head.name: head for head in (FlowHead, RegressionHead, CellClassifierHead)
}
"""Trainable heads by the name job configs and the registry use."""

MODEL_FILE = "model.json"
"""Registry entry: which head, which feature kind, how it was trained."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry: `<out_dir>/<name>/` with its `model.json`."""

    directory: Path
    """The model's folder; its name is the model's name."""
    head_type: str
    """A key of HEAD_TYPES."""
    feature_kind: HeadInput
    """Which feature matrix the head reads."""
    mllm: MLLMConfig | None = None
    """The MLLM whose ψ a `psi` head reads; None for the other kinds."""

    @property
    def name(self) -> str:
        return self.directory.name

    def load(self, device: str | torch.device = "cpu") -> GeoHead:
        """The trained head, in eval mode."""
        return HEAD_TYPES[self.head_type].from_pretrained(self.directory, device).eval()


def save_trained_model(
    directory: Path, head: GeoHead, feature_kind: HeadInput, about: dict[str, Any]
) -> None:
    """Register `head` in `directory`: its weights and config, and `model.json` (head type, feature kind
    and the facts in `about`; a `psi` head's `about` holds its `mllm` config as a dict)."""
    head.save_pretrained(directory)
    entry = {"head": head.name, "feature_kind": feature_kind, **about}
    (directory / MODEL_FILE).write_text(json.dumps(entry, indent=2) + "\n")


def read_model_entry(directory: str | Path) -> ModelEntry:
    """The registry entry in `directory` (written by `save_trained_model`), checked."""
    directory = Path(directory)
    model_file = directory / MODEL_FILE
    if not model_file.is_file():
        raise ConfigError(f"{directory}: no {MODEL_FILE}; train a model into it with the rfm job")
    entry = json.loads(model_file.read_text())
    if entry.get("head") not in HEAD_TYPES:
        raise ConfigError(f"{model_file}: unknown head {entry.get('head')!r}; known: {', '.join(HEAD_TYPES)}")
    mllm = None
    if entry["feature_kind"] == PSI:
        if "mllm" not in entry:
            raise ConfigError(f"{model_file}: a psi model without its `mllm`; train it again (rfm job)")
        mllm = load_config(MLLMConfig, entry["mllm"])
    return ModelEntry(directory, entry["head"], entry["feature_kind"], mllm)


def model_entries(out_dir: str | Path) -> list[ModelEntry]:
    """Every registry entry directly under `out_dir`, sorted by name."""
    return [read_model_entry(path.parent) for path in sorted(Path(out_dir).glob(f"*/{MODEL_FILE}"))]
