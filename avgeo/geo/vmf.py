"""Von Mises–Fisher distributions on S²: exact samplers and log-densities, the reference targets for
checking a learned density (tests, benchmarks), plus the two-sample test used to compare samples.

Densities are per steradian of the unit sphere, in nats: p(x) = κ / (4π sinh κ) · exp(κ μᵀx).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from avgeo.geo.sphere import normalize


def vmf_log_density(xyz: torch.Tensor, mean_dir: torch.Tensor, kappa: float | torch.Tensor) -> torch.Tensor:
    """log p(x) in nats/sr of a vMF with unit `mean_dir` (3,) and concentration `kappa` > 0.

    `xyz` (..., 3) unit vectors -> (...). Written as log κ − log 2π − log(1 − e^{−2κ}) + κ(μᵀx − 1), which
    neither overflows for large κ (sinh κ) nor loses the normaliser for small κ.
    """
    kappa = torch.as_tensor(kappa, dtype=xyz.dtype, device=xyz.device)
    cosine = (xyz * mean_dir.to(xyz)).sum(-1)
    return (
        torch.log(kappa)
        - math.log(2.0 * math.pi)
        - torch.log(-torch.expm1(-2.0 * kappa))
        + kappa * (cosine - 1.0)
    )


def vmf_cosine_cdf(cosine: torch.Tensor, kappa: float | torch.Tensor) -> torch.Tensor:
    """CDF of w = μᵀx under a vMF on S²: P(w ≤ c) = (e^{κ(c−1)} − e^{−2κ}) / (1 − e^{−2κ}), c in [−1, 1]."""
    kappa = torch.as_tensor(kappa, dtype=cosine.dtype, device=cosine.device)
    return (torch.exp(kappa * (cosine - 1.0)) - torch.exp(-2.0 * kappa)) / -torch.expm1(-2.0 * kappa)


def sample_vmf(
    n: int,
    mean_dir: torch.Tensor,
    kappa: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(n, 3) exact draws from a vMF with unit `mean_dir` (3,) and concentration `kappa` > 0.

    Wood's algorithm needs no rejection on S²: w = μᵀx has the closed-form inverse CDF
    w = 1 + log(u + (1 − u) e^{−2κ}) / κ, and the direction around μ is uniform.
    """
    uniform = torch.rand(n, 2, generator=generator, dtype=dtype)
    u, angle_fraction = uniform.unbind(-1)
    cosine = 1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
    sine = torch.sqrt((1.0 - cosine**2).clamp_min(0.0))
    azimuth = 2.0 * math.pi * angle_fraction
    around_pole = torch.stack((sine * torch.cos(azimuth), sine * torch.sin(azimuth), cosine), dim=-1)
    return _rotate_pole_to(around_pole, normalize(mean_dir.to(dtype)))


def _rotate_pole_to(xyz: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Apply the Householder reflection that swaps the North Pole with unit `target` (3,) to `xyz` (n, 3).

    A reflection is an isometry, so a distribution symmetric about the pole becomes the same
    distribution about `target`.
    """
    pole = torch.tensor([0.0, 0.0, 1.0], dtype=xyz.dtype)
    normal = pole - target
    if normal.norm() < 1e-12:
        return xyz
    normal = normal / normal.norm()
    return xyz - 2.0 * (xyz @ normal)[:, None] * normal


@dataclass(frozen=True)
class VMFMixture:
    """A mixture of vMF components: `weights` (K,) summing to 1, unit `mean_dirs` (K, 3), `kappas` (K,)."""

    weights: torch.Tensor
    mean_dirs: torch.Tensor
    kappas: torch.Tensor

    def __post_init__(self) -> None:
        num_components = self.weights.shape[0]
        if self.mean_dirs.shape != (num_components, 3) or self.kappas.shape != (num_components,):
            raise ValueError(
                f"VMFMixture: weights {tuple(self.weights.shape)}, mean_dirs {tuple(self.mean_dirs.shape)} "
                f"and kappas {tuple(self.kappas.shape)} must be (K,), (K, 3) and (K,)"
            )
        if not math.isclose(float(self.weights.sum()), 1.0, abs_tol=1e-6) or bool((self.kappas <= 0).any()):
            raise ValueError("VMFMixture: weights must sum to 1 and every kappa must be > 0")

    def log_density(self, xyz: torch.Tensor) -> torch.Tensor:
        """(..., 3) unit vectors -> (...) log-density in nats/sr."""
        per_component = torch.stack(
            [
                vmf_log_density(xyz, mean_dir, kappa)
                for mean_dir, kappa in zip(self.mean_dirs, self.kappas, strict=True)
            ],
            dim=-1,
        )
        return torch.logsumexp(per_component + torch.log(self.weights.to(xyz)), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 3) exact draws, in float64, in random component order."""
        component = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        samples = torch.empty(n, 3, dtype=torch.float64)
        for index, (mean_dir, kappa) in enumerate(zip(self.mean_dirs, self.kappas, strict=True)):
            chosen = component == index
            samples[chosen] = sample_vmf(int(chosen.sum()), mean_dir, float(kappa), generator)
        return samples


def energy_two_sample_test(
    sample_a: torch.Tensor,
    sample_b: torch.Tensor,
    num_permutations: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Permutation test that two samples of points (n, 3) and (m, 3) come from the same distribution.

    Statistic: the energy distance 2E|A−B| − E|A−A'| − E|B−B'| with chordal (Euclidean) distance,
    which is zero only for equal distributions. Returns (statistic, p-value); the p-value counts the
    observed split among the permutations, so it is never below 1 / (num_permutations + 1).
    """
    pooled = torch.cat((sample_a, sample_b)).double()
    distances = torch.cdist(pooled, pooled)
    size_a, size_b = sample_a.shape[0], sample_b.shape[0]
    observed_split = torch.arange(pooled.shape[0]) < size_a
    shuffled_splits = [
        observed_split[torch.randperm(pooled.shape[0], generator=generator)] for _ in range(num_permutations)
    ]
    # Column j marks group A of split j; every split's pair sums then come from one matrix product.
    in_a = torch.stack([observed_split, *shuffled_splits], dim=1).double()
    row_sums = distances.sum(1)
    sum_within_a = (in_a * (distances @ in_a)).sum(0)
    sum_cross = in_a.T @ row_sums - sum_within_a
    sum_within_b = row_sums.sum() - 2.0 * sum_cross - sum_within_a
    energy = 2.0 * sum_cross / (size_a * size_b) - sum_within_a / size_a**2 - sum_within_b / size_b**2
    exceed = int((energy[1:] >= energy[0]).sum())
    return float(energy[0]), (exceed + 1) / (num_permutations + 1)
