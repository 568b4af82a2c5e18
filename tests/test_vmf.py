"""The von Mises–Fisher reference distributions and the two-sample test, checked against scipy and
against closed forms (normalisation, the CDF of μᵀx)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from avgeo.geo.sphere import latlon_to_xyz, normalize
from avgeo.geo.vmf import (
    VMFMixture,
    energy_two_sample_test,
    sample_vmf,
    vmf_cosine_cdf,
    vmf_log_density,
)

MEAN_DIR = normalize(torch.tensor([0.3, -0.6, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("kappa", [0.05, 1.0, 10.0, 300.0])
def test_log_density_matches_scipy_and_integrates_to_one(kappa):
    points = normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    points[0] = MEAN_DIR
    reference = stats.vonmises_fisher(MEAN_DIR.numpy(), kappa).logpdf(points.numpy())
    ours = vmf_log_density(points, MEAN_DIR, kappa)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-9, atol=1e-9)

    # The density depends on w = μᵀx only, and the band between w and w + dw has area 2π dw.
    def band_density(w: float) -> float:
        point = torch.tensor([[w, math.sqrt(1 - w * w), 0.0]], dtype=torch.float64)
        return 2 * math.pi * math.exp(vmf_log_density(point, torch.tensor([1.0, 0, 0]), kappa).item())

    # Split where the mass sits (within ~20/κ of w = 1) so quadrature resolves sharp peaks.
    split = max(-1.0, 1.0 - 20.0 / kappa)
    mass = sum(integrate.quad(band_density, low, high)[0] for low, high in [(-1.0, split), (split, 1.0)])
    assert mass == pytest.approx(1.0, abs=1e-9)


def test_log_density_is_finite_for_huge_concentration():
    kappa = 1e6
    at_mean = vmf_log_density(MEAN_DIR[None], MEAN_DIR, kappa)
    assert at_mean.item() == pytest.approx(math.log(kappa / (2 * math.pi)))
    assert torch.isfinite(vmf_log_density(-MEAN_DIR[None], MEAN_DIR, kappa)).all()


@pytest.mark.parametrize("kappa", [0.5, 10.0, 1000.0])
def test_sampler_follows_the_closed_form_law(kappa):
    generator = torch.Generator().manual_seed(2)
    samples = sample_vmf(4000, MEAN_DIR, kappa, generator)
    assert torch.allclose(samples.norm(dim=-1), torch.ones(4000, dtype=torch.float64))
    cosine = samples @ MEAN_DIR

    def cosine_cdf(c):
        return vmf_cosine_cdf(torch.as_tensor(c), kappa).numpy()

    assert stats.kstest(cosine.numpy(), cosine_cdf).pvalue > 0.01
    # Around the mean the direction is uniform: the azimuth in any frame orthogonal to μ is U(0, 2π).
    north = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    first = normalize(torch.linalg.cross(MEAN_DIR, north, dim=0))
    second = torch.linalg.cross(MEAN_DIR, first, dim=0)
    azimuth = torch.atan2(samples @ second, samples @ first) % (2 * math.pi)
    assert stats.kstest(azimuth.numpy(), stats.uniform(0, 2 * math.pi).cdf).pvalue > 0.01


def test_sampler_matches_scipy_samples():
    generator = torch.Generator().manual_seed(3)
    ours = sample_vmf(1500, MEAN_DIR, 8.0, generator)
    theirs = torch.from_numpy(stats.vonmises_fisher(MEAN_DIR.numpy(), 8.0).rvs(1500, random_state=3))
    _, p_value = energy_two_sample_test(ours, theirs, 200, generator)
    assert p_value > 0.01


def test_sampler_at_the_south_pole_and_with_float32():
    south = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float32)
    samples = sample_vmf(2000, south, 50.0, torch.Generator().manual_seed(4), dtype=torch.float32)
    assert samples.dtype == torch.float32
    assert (samples @ south).mean().item() == pytest.approx(1 / math.tanh(50.0) - 1 / 50.0, abs=2e-3)


def _three_city_mixture() -> VMFMixture:
    cities_deg = torch.tensor([[48.86, 2.35], [-33.87, 151.21], [40.71, -74.01]], dtype=torch.float64)
    return VMFMixture(
        torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        latlon_to_xyz(cities_deg),
        torch.tensor([10.0, 30.0, 60.0], dtype=torch.float64),
    )


def test_mixture_density_and_sampler_agree():
    mixture = _three_city_mixture()
    generator = torch.Generator().manual_seed(5)
    samples = mixture.sample(6000, generator)
    nearest = (samples @ mixture.mean_dirs.T).argmax(dim=-1)
    shares = torch.bincount(nearest, minlength=3).double() / 6000
    assert torch.allclose(shares, mixture.weights, atol=0.03)
    # Monte Carlo over uniform points: 4π E_uniform[p] = 1; its relative standard error here is ~0.6%.
    uniform_points = normalize(torch.randn(200_000, 3, generator=generator, dtype=torch.float64))
    mass = 4 * math.pi * torch.exp(mixture.log_density(uniform_points)).mean()
    assert mass.item() == pytest.approx(1.0, rel=0.03)
    kappa = torch.tensor([7.0], dtype=torch.float64)
    one_component = VMFMixture(torch.ones(1, dtype=torch.float64), MEAN_DIR[None], kappa)
    assert torch.allclose(one_component.log_density(samples), vmf_log_density(samples, MEAN_DIR, 7.0))


def test_mixture_rejects_inconsistent_parameters():
    with pytest.raises(ValueError, match="must be \\(K,\\), \\(K, 3\\) and \\(K,\\)"):
        VMFMixture(torch.tensor([0.5, 0.5]), MEAN_DIR[None], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        VMFMixture(torch.tensor([0.5]), MEAN_DIR[None], torch.tensor([1.0]))


def test_energy_statistic_equals_its_definition_and_detects_differences():
    generator = torch.Generator().manual_seed(6)
    sample_a = sample_vmf(300, MEAN_DIR, 10.0, generator)
    sample_b = sample_vmf(200, MEAN_DIR, 6.0, generator)
    statistic, p_value = energy_two_sample_test(sample_a, sample_b, 200, generator)
    direct = (
        2 * torch.cdist(sample_a, sample_b).mean()
        - torch.cdist(sample_a, sample_a).mean()
        - torch.cdist(sample_b, sample_b).mean()
    )
    assert statistic == pytest.approx(direct.item(), rel=1e-9)
    assert p_value == pytest.approx(1 / 201)

    same_law = []
    for _ in range(20):
        first, second = (sample_vmf(200, MEAN_DIR, 10.0, generator) for _ in range(2))
        same_law.append(energy_two_sample_test(first, second, 100, generator)[1])
    # Under the null the p-value is (close to) uniform: neither stuck low nor stuck high.
    assert 0.2 < float(np.mean(same_law)) < 0.8
