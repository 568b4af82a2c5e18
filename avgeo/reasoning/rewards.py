"""The three GRPO rewards of the method (section 3.2) and their weighted sum, batched over N rollouts.

- `r_geo` (eq. 2): Σ_l w_l · 1[Cell_l(ŷ) = Cell_l(y)] over S2 levels 1, 5 and 12.
- `r_align` (eq. 3): max over the places e the trace names of 1[Polygon(e) contains ŷ].
- `r_calib` (eq. 4): log p_θ(y | ψ) under the prediction head, clipped and scaled into [-1, 1]. The head's
  log-density is a function handed in, so that reasoning/ never imports prediction/ (`RFMHead.log_density`
  has the right signature).

A parse failure (see `answer.py`) earns no geo or align reward and its total is a fixed penalty below
any parsed answer's total, so that writing a valid answer always pays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from avgeo.config import ConfigError
from avgeo.geo.gazetteer import Gazetteer
from avgeo.geo.s2cells import MAX_LEVEL, as_latlon_deg, cell_tokens
from avgeo.geo.sphere import latlon_to_xyz
from avgeo.reasoning.answer import ParsedAnswer

LogDensityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""log p(y | ψ) in nats/sr: truth (N, 3) unit vectors and ψ (N, C) -> (N,)."""


@dataclass
class RewardConfig:
    """Weights of the GRPO rewards; total = w_geo·R_geo + w_align·R_align + w_calib·R_calib."""

    geo_level_weights: dict[int, float] = field(default_factory=lambda: {1: 0.2, 5: 0.3, 12: 0.5})
    """w_l per S2 level (the method's levels 1, 5, 12; it gives no weights). They sum to 1, so R_geo is in
    [0, 1]; finer levels weigh more, as a hit there is rarer and worth more: continent-scale cells (about
    4,600 km) 0.2, region (290 km) 0.3, city block (2.3 km) 0.5."""
    weight_geo: float = 1.0
    """Weight of R_geo in the total, the main signal: distance to the truth."""
    weight_align: float = 0.5
    """Weight of R_align: consistency between trace and answer, secondary to being right."""
    weight_calib: float = 0.5
    """Weight of R_calib (scaled into [-1, 1], see `calib_clip_nats`)."""
    align_when_no_place: float = 0.0
    """R_align of a parsed answer whose trace names no place of the gazetteer. 0: naming nothing earns
    nothing, so the model is pushed to commit to a place that its answer must then lie in; any value above 0
    would reward vague traces that cannot be checked."""
    calib_clip_nats: float = 10.0
    """R_calib = clamp(log p(y | ψ), ±c) / c with c in nats/sr. The log-density is unbounded (−∞ far from
    the mass, +∞ for a point mass): +10 is the peak of a bump of about 17 km standard deviation
    (e^10 ≈ 22,000 per sr), −10 is 1/1,800 of the uniform density 1/4π; beyond those the reward is flat."""
    parse_failure_reward: float = -1.0
    """Total reward of an unparseable response; must be below the lowest total of a parsed one
    (−weight_calib: no geo or align reward and R_calib = −1)."""

    def __post_init__(self) -> None:
        for level, weight in self.geo_level_weights.items():
            if not isinstance(level, int) or not 0 <= level <= MAX_LEVEL or weight < 0:
                raise ConfigError(
                    f"geo_level_weights: {{{level}: {weight}}}; levels must be ints from 0 to "
                    f"{MAX_LEVEL} and weights >= 0"
                )
        weights = {"weight_geo": self.weight_geo, "weight_align": self.weight_align}
        weights |= {"weight_calib": self.weight_calib, "align_when_no_place": self.align_when_no_place}
        for name, weight in weights.items():
            if weight < 0:
                raise ConfigError(f"{name}={weight}: expected a value >= 0")
        if self.calib_clip_nats <= 0:
            raise ConfigError(f"calib_clip_nats={self.calib_clip_nats}: expected a positive number of nats")
        if self.parse_failure_reward >= -self.weight_calib:
            raise ConfigError(
                f"parse_failure_reward={self.parse_failure_reward} is not below the lowest total of a parsed "
                f"answer ({-self.weight_calib}); a malformed answer would pay: lower it"
            )


@dataclass(frozen=True)
class RewardBreakdown:
    """Rewards of N rollouts, each (N,) float32: the terms before weighting and their weighted total."""

    geo: torch.Tensor
    """R_geo in [0, Σ w_l]; 0 on a parse failure."""
    align: torch.Tensor
    """R_align in {0, 1} or `align_when_no_place`; 0 on a parse failure."""
    calib: torch.Tensor
    """R_calib in [-1, 1]; computed for parse failures too, since it depends on ψ and the truth only."""
    total: torch.Tensor
    """The weighted sum, or `parse_failure_reward` where the response did not parse."""
    parse_ok: torch.Tensor
    """(N,) bool: whether the response parsed."""


def r_geo(
    pred_latlon_deg: np.ndarray, true_latlon_deg: np.ndarray, level_weights: dict[int, float]
) -> torch.Tensor:
    """R_geo (eq. 2): predictions (N, 2) degrees (NaN rows: parse failures), truth (N, 2) -> (N,) float32."""
    pred_latlon_deg = np.asarray(pred_latlon_deg, dtype=np.float64).reshape(-1, 2)
    true_latlon_deg = as_latlon_deg(true_latlon_deg, name="true_latlon_deg")
    parsed = ~np.isnan(pred_latlon_deg).any(axis=1)
    levels = list(level_weights)
    same_cell = cell_tokens(pred_latlon_deg[parsed], levels) == cell_tokens(true_latlon_deg[parsed], levels)
    rewards = np.zeros(len(pred_latlon_deg))
    rewards[parsed] = same_cell @ np.array([level_weights[level] for level in levels])
    return torch.from_numpy(rewards).float()


def r_align(
    traces: Sequence[str], pred_latlon_deg: np.ndarray, gazetteer: Gazetteer, when_no_place: float = 0.0
) -> torch.Tensor:
    """R_align (eq. 3): N traces and predictions (N, 2) degrees (NaN rows for parse failures) -> (N,) float32.

    1 when some place the trace names (`Gazetteer.find_places`) holds the prediction, 0 when none does,
    `when_no_place` when the trace names no place, 0 for a parse failure.
    """
    pred_latlon_deg = np.asarray(pred_latlon_deg, dtype=np.float64).reshape(-1, 2)
    rewards = torch.zeros(len(traces))
    for row, (trace, latlon_deg) in enumerate(zip(traces, pred_latlon_deg, strict=True)):
        if np.isnan(latlon_deg).any():
            continue
        places = gazetteer.find_places(trace)
        if not places:
            rewards[row] = when_no_place
        elif any(gazetteer.contains(place, latlon_deg) for place in places):
            rewards[row] = 1.0
    return rewards


def r_calib(
    log_density_fn: LogDensityFn,
    true_latlon_deg: np.ndarray | torch.Tensor,
    psi: torch.Tensor,
    clip_nats: float = 10.0,
) -> torch.Tensor:
    """R_calib (eq. 4): clamp(log p(y | ψ), ±clip_nats) / clip_nats, truth (N, 2) degrees, ψ (N, C) -> (N,).

    A reward, not a loss: the result is detached, float32, on the CPU.
    """
    truth_xyz = latlon_to_xyz(torch.as_tensor(true_latlon_deg, dtype=torch.float64)).to(psi.device)
    log_density = log_density_fn(truth_xyz, psi).detach().double().cpu()
    return (log_density.clamp(-clip_nats, clip_nats) / clip_nats).float()


def total_reward(
    responses: Sequence[ParsedAnswer],
    true_latlon_deg: np.ndarray,
    psi: torch.Tensor,
    log_density_fn: LogDensityFn,
    gazetteer: Gazetteer,
    config: RewardConfig,
) -> RewardBreakdown:
    """All rewards of N parsed responses, given the truth (N, 2) degrees and each rollout's ψ (N, C)."""
    unparsed = (math.nan, math.nan)
    pred_latlon_deg = np.array([r.latlon_deg if r.ok else unparsed for r in responses]).reshape(-1, 2)
    geo = r_geo(pred_latlon_deg, true_latlon_deg, config.geo_level_weights)
    align = r_align([r.trace for r in responses], pred_latlon_deg, gazetteer, config.align_when_no_place)
    calib = r_calib(log_density_fn, true_latlon_deg, psi, config.calib_clip_nats)
    parse_ok = torch.tensor([r.ok for r in responses], dtype=torch.bool)
    weighted = config.weight_geo * geo + config.weight_align * align + config.weight_calib * calib
    total = torch.where(parse_ok, weighted, torch.tensor(config.parse_failure_reward))
    return RewardBreakdown(geo, align, calib, total, parse_ok)
