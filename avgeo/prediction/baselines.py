"""The baselines of the method's Table 1, behind the `heads` interface and fed the same feature vectors.

- `RegressionHead`: an MLP to a unit vector, trained on the great-circle angle to the truth (GeoCLAP's
  kind of head). It predicts points only: no density, no NLL.
- `CellClassifierHead`: a softmax over the S2 cells of one level that hold training locations. Its
  density is piecewise constant, p(y) = P(cell ∋ y) / area(cell) in nats/sr like the flow's, mixed with a
  little of the uniform density so that test locations outside every training cell (the splits are
  location-disjoint) keep a finite NLL.
- `LateFusion`: the equal mixture ½ p_visual + ½ p_audio of a visual-only and an audio-only head, the
  "average of the two predictions" the method's late-fusion baseline uses. A mixture stays exactly
  normalised, so its NLL compares with the other heads'; a product of the densities would need a
  normaliser that no flow gives in closed form.
- `GalleryPredictor`: GeoCLIP's softmax over its GPS gallery (`perception.geoclip_gallery`), a
  distribution over gallery points rather than a density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import s2sphere
import torch
import torch.nn.functional as F
from torch import nn

from avgeo.config import ConfigError
from avgeo.geo.s2cells import MAX_LEVEL, cell_tokens
from avgeo.geo.sphere import (
    SPHERE_AREA_SR,
    angle_between,
    latlon_to_xyz,
    normalize,
    sample_uniform,
    xyz_to_latlon,
)
from avgeo.prediction.heads import GeoHead, GeoPrediction, GeoPredictor
from avgeo.prediction.vector_field import tangent_frame

if TYPE_CHECKING:
    from avgeo.perception.geoclip_gallery import GeoCLIPGallery


def _mlp(in_dim: int, width: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """`num_layers` linear layers in_dim -> width -> … -> out_dim with SiLU between them."""
    widths = [in_dim] + [width] * (num_layers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for index in range(num_layers):
        layers.append(nn.Linear(widths[index], widths[index + 1]))
        if index < num_layers - 1:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _check_mlp(feature_dim: int, width: int, num_layers: int) -> None:
    if feature_dim < 0 or width < 1 or num_layers < 1:
        raise ConfigError(
            f"feature_dim {feature_dim} must be >= 0, width {width} and num_layers {num_layers} >= 1"
        )


def _require_feature_dim(config: RegressionConfig | CellClassifierConfig) -> None:
    if config.feature_dim < 1:
        raise ConfigError(
            f"{type(config).__name__}.feature_dim is 0; set it to the width D of the feature vectors "
            "(the training job does)"
        )


@dataclass
class RegressionConfig:
    """The regression head: features -> MLP -> unit vector."""

    feature_dim: int = 0
    """Width D of the input feature vectors; the training job sets it from the feature table."""

    width: int = 512
    """Hidden width of the MLP."""

    num_layers: int = 3
    """Linear layers in the MLP, the output layer included."""

    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self) -> None:
        _check_mlp(self.feature_dim, self.width, self.num_layers)


class RegressionHead(GeoHead):
    """Direct regression of the location as a unit vector; loss = mean great-circle angle (radians)."""

    name = "regression"
    config_cls = RegressionConfig

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__()
        _require_feature_dim(config)
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.mlp = _mlp(config.feature_dim, config.width, config.num_layers, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, 3) unit vectors."""
        parameter = next(self.parameters())
        return normalize(self.mlp(features.to(dtype=parameter.dtype, device=parameter.device)))

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean great-circle angle (radians) between predictions and targets (B, 3); `generator` unused."""
        return angle_between(self(features), targets.to(self._device())).mean()

    def predict(
        self, features: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> GeoPrediction:
        """The one predicted point is the only candidate, and every sample (a point mass)."""
        point = self(features)[:, None]
        return GeoPrediction(point, point.new_zeros(point.shape[:2]), point.expand(-1, num_samples, -1))


@dataclass
class CellClassifierConfig:
    """The classification head: features -> MLP -> softmax over S2 cells of one level."""

    feature_dim: int = 0
    """Width D of the input feature vectors; the training job sets it from the feature table."""

    s2_level: int = 4
    """S2 level of the class cells (mean edge about 580 km at level 4, 290 km at 5, 1,200 km at 3)."""

    cell_tokens: list[str] = field(default_factory=list)
    """The classes: tokens of the level-`s2_level` cells that hold training locations, sorted; the
    training job fills them with `class_cells`."""

    width: int = 512
    """Hidden width of the MLP."""

    num_layers: int = 3
    """Linear layers in the MLP, the output layer included."""

    uniform_weight: float = 0.01
    """Weight of the uniform density in the predicted mixture: it bounds the NLL of a location outside
    every class cell by −log(uniform_weight / 4π) (7.1 nats/sr at 0.01)."""

    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self) -> None:
        _check_mlp(self.feature_dim, self.width, self.num_layers)
        if not 0 <= self.s2_level <= MAX_LEVEL:
            raise ConfigError(f"s2_level: {self.s2_level} is outside 0 … {MAX_LEVEL}")
        if not 0.0 < self.uniform_weight < 1.0:
            raise ConfigError(f"uniform_weight: {self.uniform_weight} must lie in (0, 1)")


def class_cells(latlon_deg: np.ndarray, level: int) -> list[str]:
    """Sorted tokens of the level-`level` S2 cells holding the (N, 2) degree locations."""
    return sorted(set(cell_tokens(latlon_deg, (level,))[:, 0].tolist()))


class CellClassifierHead(GeoHead):
    """Classification over S2 cells with a piecewise-constant density (nats/sr) for the NLL.

    Candidates are the cell centres, scored by their density, so the point estimate is the centre of the
    densest cell. Samples are drawn from the mixture: a cell by its probability, then uniformly inside it.
    """

    name = "classification"
    config_cls = CellClassifierConfig
    has_density = True

    def __init__(self, config: CellClassifierConfig) -> None:
        super().__init__()
        _require_feature_dim(config)
        if not config.cell_tokens:
            raise ConfigError(
                "CellClassifierConfig.cell_tokens is empty; fill it with class_cells(training locations, "
                "s2_level) (the training job does)"
            )
        self.config = config
        self.class_of_token = {token: index for index, token in enumerate(config.cell_tokens)}
        geometry = _cell_geometry(config.cell_tokens, config.s2_level)
        # The geometry follows from the tokens in config.json, so it is not saved with the weights.
        self.register_buffer("cell_centres_xyz", geometry.centres_xyz, persistent=False)
        self.register_buffer("cell_edge_normals", geometry.edge_normals, persistent=False)
        self.register_buffer("cell_log_area_sr", geometry.areas_sr.log(), persistent=False)
        self.register_buffer("cell_cap_cos", geometry.cap_cos, persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.mlp = _mlp(config.feature_dim, config.width, config.num_layers, len(config.cell_tokens))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, C) class logits."""
        parameter = next(self.parameters())
        return self.mlp(features.to(dtype=parameter.dtype, device=parameter.device))

    def training_targets(self, latlon_deg: torch.Tensor) -> torch.Tensor:
        """(N, 2) degrees -> (N,) class indices; every location must lie in a class cell."""
        tokens = cell_tokens(latlon_deg.double().cpu().numpy(), (self.config.s2_level,))[:, 0]
        missing = [token for token in tokens if token not in self.class_of_token]
        if missing:
            raise ConfigError(
                f"{len(missing)} locations lie outside the head's {len(self.class_of_token)} class cells "
                f"(first: cell {missing[0]}); build the classes from the same training locations"
            )
        return torch.tensor([self.class_of_token[token] for token in tokens], dtype=torch.long)

    def loss(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cross-entropy of class indices (B,); `generator` unused."""
        return F.cross_entropy(self(features), targets.to(self._device()))

    def cell_index(self, xyz: torch.Tensor) -> torch.Tensor:
        """(..., 3) points -> (...) index of the class cell holding each, −1 outside every class cell."""
        latlon_deg = xyz_to_latlon(xyz.reshape(-1, 3).double().cpu()).numpy()
        tokens = cell_tokens(latlon_deg, (self.config.s2_level,))[:, 0]
        index = [self.class_of_token.get(token, -1) for token in tokens]
        return torch.tensor(index, dtype=torch.long, device=xyz.device).reshape(xyz.shape[:-1])

    def log_density(self, xyz: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        cell_log_density = self._cell_log_density(features)
        index = self.cell_index(xyz).to(cell_log_density.device)
        inside = cell_log_density.gather(1, index.clamp_min(0))
        return self._mix_uniform(torch.where(index >= 0, inside, -torch.inf))

    def predict(
        self, features: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> GeoPrediction:
        cell_log_density = self._cell_log_density(features)
        num_clips = cell_log_density.shape[0]
        candidates = self.cell_centres_xyz.to(cell_log_density).expand(num_clips, -1, -1)
        probs = (cell_log_density + self.cell_log_area_sr.to(cell_log_density)).exp().double().cpu()
        cells = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        in_cells = self._uniform_in_cells(cells.reshape(-1), generator)
        anywhere = sample_uniform(cells.numel(), generator, dtype=torch.float64)
        uniform_draw = torch.rand(cells.numel(), generator=generator, dtype=torch.float64)
        use_uniform = uniform_draw < self.config.uniform_weight
        samples = torch.where(use_uniform[:, None], anywhere, in_cells).reshape(num_clips, num_samples, 3)
        return GeoPrediction(candidates, self._mix_uniform(cell_log_density), samples.to(candidates))

    def _cell_log_density(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) log(P(cell) / area(cell)), nats/sr, before the uniform is mixed in."""
        logits = self(features)
        return logits.log_softmax(-1) - self.cell_log_area_sr.to(logits)

    def _mix_uniform(self, log_density: torch.Tensor) -> torch.Tensor:
        weight = self.config.uniform_weight
        return torch.logaddexp(
            math.log1p(-weight) + log_density,
            torch.full_like(log_density, math.log(weight / SPHERE_AREA_SR)),
        )

    def _uniform_in_cells(self, cells: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(N,) class indices -> (N, 3) float64 points uniform inside those cells.

        Rejection from the smallest cap about the cell's centre that holds its corners (a cell's edges
        are great-circle arcs, so the cap holds the whole cell): cos(polar angle) is uniform on
        [cos radius, 1] for a uniform point in a cap; about 2/3 of the draws land inside the cell.
        """
        centres = self.cell_centres_xyz.double().cpu()[cells]
        edge_normals = self.cell_edge_normals.double().cpu()[cells]
        cap_cos = self.cell_cap_cos.double().cpu()[cells]
        first_axis, second_axis = tangent_frame(centres)
        points = torch.empty_like(centres)
        pending = torch.arange(len(cells))
        while pending.numel():
            uniform = torch.rand(pending.numel(), 2, generator=generator, dtype=torch.float64)
            polar_cos = 1.0 - uniform[:, 0] * (1.0 - cap_cos[pending])
            polar_sin = (1.0 - polar_cos**2).clamp_min(0.0).sqrt()
            azimuth = 2.0 * math.pi * uniform[:, 1]
            draws = polar_cos[:, None] * centres[pending] + polar_sin[:, None] * (
                torch.cos(azimuth)[:, None] * first_axis[pending]
                + torch.sin(azimuth)[:, None] * second_axis[pending]
            )
            inside = ((edge_normals[pending] * draws[:, None]).sum(-1) >= 0.0).all(-1)
            points[pending[inside]] = draws[inside]
            pending = pending[~inside]
        return points


class _CellGeometry(NamedTuple):
    centres_xyz: torch.Tensor
    """(C, 3) unit vectors, float64."""
    edge_normals: torch.Tensor
    """(C, 4, 3) inward unit normals of the great circles through the four edges."""
    areas_sr: torch.Tensor
    """(C,) exact areas, steradians."""
    cap_cos: torch.Tensor
    """(C,) cosine of the angle from the centre to the farthest corner."""


def _cell_geometry(tokens: list[str], level: int) -> _CellGeometry:
    """The level-`level` S2 cells named by `tokens`, as tensors; ConfigError names a bad token."""
    centres, normals, corners, areas = [], [], [], []
    for token in tokens:
        try:
            cell_id = s2sphere.CellId.from_token(token)
        except ValueError:
            cell_id = None
        if cell_id is None or not cell_id.is_valid() or cell_id.level() != level:
            raise ConfigError(f"cell_tokens: {token!r} is not the token of a level-{level} S2 cell")
        cell = s2sphere.Cell(cell_id)
        centres.append(_coordinates(cell.get_center()))
        normals.append([_coordinates(cell.get_edge(k)) for k in range(4)])
        corners.append([_coordinates(cell.get_vertex(k)) for k in range(4)])
        areas.append(cell.exact_area())
    centres_xyz = normalize(torch.tensor(centres, dtype=torch.float64))
    corners_xyz = torch.tensor(corners, dtype=torch.float64)
    return _CellGeometry(
        centres_xyz,
        torch.tensor(normals, dtype=torch.float64),
        torch.tensor(areas, dtype=torch.float64),
        (corners_xyz * centres_xyz[:, None]).sum(-1).min(-1).values,
    )


def _coordinates(point: s2sphere.Point) -> list[float]:
    return [point[axis] for axis in range(3)]


class LateFusion(GeoPredictor):
    """The equal mixture of a visual-only and an audio-only head's densities.

    Features are the visual head's (B, Dv) and the audio head's (B, Da) side by side, (B, Dv + Da).
    Candidates are both heads' candidates, rescored under the mixture; samples come from either head
    with probability ½ each.
    """

    has_density = True

    def __init__(self, visual: GeoPredictor, audio: GeoPredictor, visual_dim: int) -> None:
        for role, head in (("visual", visual), ("audio", audio)):
            if not head.has_density:
                raise ConfigError(
                    f"late fusion mixes densities; the {role} head {type(head).__name__} has none"
                )
        self.visual, self.audio, self.visual_dim = visual, audio, visual_dim

    def log_density(self, xyz: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        visual_features, audio_features = self._split(features)
        visual = self.visual.log_density(xyz, visual_features)
        audio = self.audio.log_density(xyz, audio_features).to(visual)
        return torch.logaddexp(visual, audio) - math.log(2.0)

    def predict(
        self, features: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> GeoPrediction:
        visual_features, audio_features = self._split(features)
        visual = self.visual.predict(visual_features, num_samples, generator)
        audio = self.audio.predict(audio_features, num_samples, generator)
        candidates = torch.cat((visual.candidates_xyz, audio.candidates_xyz.to(visual.candidates_xyz)), dim=1)
        from_visual = torch.rand(visual.samples_xyz.shape[:2], generator=generator) < 0.5
        samples = torch.where(
            from_visual[..., None].to(visual.samples_xyz.device),
            visual.samples_xyz,
            audio.samples_xyz.to(visual.samples_xyz),
        )
        return GeoPrediction(candidates, self.log_density(candidates, features), samples)

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features[:, : self.visual_dim], features[:, self.visual_dim :]


class GalleryPredictor(GeoPredictor):
    """GeoCLIP's gallery softmax on GeoCLIP image features (B, 512): candidates are the `top_k` gallery
    points scored by log-probability; samples are drawn from those `top_k`, renormalised."""

    def __init__(self, gallery: GeoCLIPGallery, top_k: int = 100) -> None:
        self.gallery, self.top_k = gallery, top_k

    def predict(
        self, features: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> GeoPrediction:
        top = self.gallery.predict(features, self.top_k)
        candidates = latlon_to_xyz(top.latlon_deg.double()).float()
        picks = torch.multinomial(top.probs.double(), num_samples, replacement=True, generator=generator)
        samples = candidates.gather(1, picks[..., None].expand(-1, -1, 3))
        return GeoPrediction(candidates, top.probs.log(), samples)
