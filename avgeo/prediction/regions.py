"""What a predicted density says, read off its samples and their log-densities (nats/sr): the point
estimate, the top-k modes with their probability mass, and the areas of the credible regions.

All functions take samples (B, M, 3) unit vectors drawn from the head (B clips, M samples each) and
their exact log-densities (B, M), e.g. from `RFMHead.sample_with_log_density`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from avgeo.geo.sphere import EARTH_RADIUS_KM, angle_between


def point_estimate(samples: torch.Tensor, log_density: torch.Tensor) -> torch.Tensor:
    """The one point-estimate rule behind every reported number: the best of M samples by log-density.

    (B, M, 3), (B, M) -> (B, 3) unit vectors (`sphere.xyz_to_latlon` gives degrees).
    """
    best = log_density.argmax(dim=-1)
    return samples[torch.arange(samples.shape[0]), best]


@dataclass(frozen=True)
class Modes:
    """Top-k modes of a density, strongest first; slots beyond the modes found hold NaN / 0 / -inf."""

    xyz: torch.Tensor
    """(B, k, 3) unit vectors: the highest-density sample of each mode."""

    mass: torch.Tensor
    """(B, k) fraction of the M samples assigned to each mode (probability mass, in [0, 1])."""

    log_density: torch.Tensor
    """(B, k) log-density at each mode, nats/sr."""


def top_k_modes(samples: torch.Tensor, log_density: torch.Tensor, k: int, radius_km: float) -> Modes:
    """Greedy mode finding: take the densest unassigned sample as a mode, assign it every unassigned
    sample within `radius_km` (great circle), repeat k times. A mode's mass is its share of samples.

    (B, M, 3), (B, M) -> `Modes` with k slots per clip.
    """
    num_clips, num_samples, _ = samples.shape
    unassigned = torch.ones(num_clips, num_samples, dtype=torch.bool, device=samples.device)
    xyz, mass, mode_log_density = [], [], []
    for _ in range(k):
        remaining = unassigned.any(dim=-1)
        best = log_density.masked_fill(~unassigned, -torch.inf).argmax(dim=-1)
        centre = samples[torch.arange(num_clips), best]
        near = unassigned & (EARTH_RADIUS_KM * angle_between(centre[:, None], samples) <= radius_km)
        unassigned &= ~near
        xyz.append(torch.where(remaining[:, None], centre, torch.nan))
        mass.append(near.sum(dim=-1) / num_samples)
        mode_log_density.append(
            torch.where(remaining, log_density[torch.arange(num_clips), best], -torch.inf)
        )
    return Modes(torch.stack(xyz, dim=1), torch.stack(mass, dim=1), torch.stack(mode_log_density, dim=1))


def credible_region_areas_km2(
    log_density: torch.Tensor, levels: Sequence[float] = (0.5, 0.9)
) -> torch.Tensor:
    """Area in km² of each highest-density credible region, from samples' log-densities (B, M) -> (B, L).

    The region of mass α is {y : p(y) ≥ τ_α}, where τ_α is exceeded by a fraction α of samples.
    Its area is the importance-weighted mean E_p[1(p ≥ τ_α) / p] · R²: for a fixed τ, an unbiased
    estimate of ∫ 1(p ≥ τ) dA in steradians whose terms stay bounded (1/p ≤ 1/τ inside the region);
    with τ_α read off the same samples it is consistent. Needs accurate log-densities (rk4 or midpoint).
    """
    if not all(0.0 < level <= 1.0 for level in levels):
        raise ValueError(f"credible levels {tuple(levels)} must lie in (0, 1]")
    num_samples = log_density.shape[-1]
    densest_first = log_density.double().sort(dim=-1, descending=True).values
    inverse_density_sums = torch.exp(-densest_first).cumsum(dim=-1)
    counts = [max(1, round(level * num_samples)) for level in levels]
    area_sr = torch.stack([inverse_density_sums[:, count - 1] / num_samples for count in counts], dim=-1)
    return area_sr * EARTH_RADIUS_KM**2
