"""One interface over every prediction head: train on (feature vector, location) pairs, then predict a
point, draw samples and, for probabilistic heads, evaluate the log-density on S² in nats/sr.

- `GeoPredictor`: what evaluation reads. `predict` returns candidate points with scores (the point
  estimate is the top-scoring candidate, one rule for every head) and draws from the predicted
  distribution; `log_density` exists where the head has a density (`has_density`).
- `GeoHead`: a trainable predictor: `training_targets` turns labels into what `loss` compares against;
  weights save and load as `config.json` + `model.safetensors`.
- `FlowHead`: the RFM head (`flow.RFMHead`) conditioned on the feature vector (cond_dim = D). Its
  directory is an `RFMHead` checkpoint, so later stages load it with `RFMHead.from_pretrained`.

The baselines (regression, S2-cell classification, late fusion, GeoCLIP's gallery) are in `baselines`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from avgeo.config import ConfigError
from avgeo.geo.sphere import latlon_to_xyz, xyz_to_latlon
from avgeo.perception.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.regions import point_estimate
from avgeo.prediction.vector_field import RFMConfig


class NoDensityError(TypeError):
    """A log-density was asked of a head that predicts points only (e.g. the regression head)."""


@dataclass(frozen=True)
class GeoPrediction:
    """What a head predicts for B clips."""

    candidates_xyz: torch.Tensor
    """(B, M, 3) unit vectors the point estimate is chosen among."""

    candidate_scores: torch.Tensor
    """(B, M) the candidates' log-density in nats/sr for heads with a density, else the head's own
    log-score; the point estimate is the top-scoring candidate."""

    samples_xyz: torch.Tensor
    """(B, S, 3) unit vectors drawn from the predicted distribution (a point head repeats its point)."""

    @property
    def point_xyz(self) -> torch.Tensor:
        """(B, 3) the point estimate: `regions.point_estimate` over the candidates."""
        return point_estimate(self.candidates_xyz, self.candidate_scores)

    @property
    def point_latlon_deg(self) -> torch.Tensor:
        """(B, 2) the point estimate as latitude, longitude in degrees."""
        return xyz_to_latlon(self.point_xyz)


class GeoPredictor(ABC):
    """Anything evaluation can score: features (B, D) -> a `GeoPrediction`, and a density if it has one."""

    has_density: ClassVar[bool] = False
    """Whether `log_density` is defined (and so an NLL can be reported)."""

    @abstractmethod
    def predict(
        self, features: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> GeoPrediction:
        """Predict for features (B, D): candidates and `num_samples` draws per clip."""

    def log_density(self, xyz: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """log p(y | features) in nats/sr: xyz (B, M, 3) unit vectors, features (B, D) -> (B, M)."""
        raise NoDensityError(
            f"{type(self).__name__} predicts points, not a density; NLL is reported only for "
            "probabilistic heads (rfm, classification, late fusion)"
        )


class GeoHead(nn.Module, GeoPredictor):
    """A trainable predictor whose config dataclass (`config_cls`) and weights round-trip through disk."""

    name: ClassVar[str]
    """Short name of the head type, as job configs and the model registry spell it."""

    config_cls: ClassVar[type]
    """The dataclass stored as `config.json`."""

    config: Any
    """The head's config dataclass instance (an instance of `config_cls`)."""

    def training_targets(self, latlon_deg: torch.Tensor) -> torch.Tensor:
        """Labels (N, 2) degrees -> what `loss` takes as targets; here (N, 3) unit vectors."""
        return latlon_to_xyz(latlon_deg.double()).float()

    @abstractmethod
    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training loss, a scalar, for features (B, D) and `training_targets` rows (B, ...)."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` into `directory` (created if needed)."""
        save_checkpoint(directory, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> GeoHead:
        """Load a head from a directory written by `save_pretrained`."""
        config, state_dict = load_checkpoint(directory, cls.config_cls)
        head = cls(config)
        try:
            head.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: weights do not fit its config.json: {exc}") from exc
        return head.to(device)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class FlowHead(GeoHead):
    """Riemannian flow matching on S² conditioned on the clip's feature vector (method §3.3).

    Candidates are M samples of the flow with their exact log-densities, so the point estimate is the
    densest of M draws; the same draws are the samples.
    """

    name = "rfm"
    config_cls = RFMConfig
    has_density = True

    def __init__(self, config: RFMConfig) -> None:
        super().__init__()
        if config.cond_dim < 1:
            raise ConfigError(
                "FlowHead needs cond_dim = D, the width of the feature vector it is conditioned on; "
                "the training job sets it from the feature table"
            )
        self.flow = RFMHead(config)
        self.config = config

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flow-matching loss (eq. 5) for features (B, D) and targets (B, 3) unit vectors."""
        return self.flow.loss(targets, features, generator)

    def predict(
        self, features: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> GeoPrediction:
        samples, log_density = self.flow.sample_with_log_density(
            features.to(self._device()), num_samples, generator
        )
        return GeoPrediction(samples, log_density, samples)

    def log_density(self, xyz: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.flow.log_density(xyz, features.to(self._device()))

    def save_pretrained(self, directory: str | Path) -> None:
        self.flow.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> FlowHead:
        flow = RFMHead.from_pretrained(directory, device)
        head = cls(flow.config)
        head.flow = flow
        return head
