"""Metrics on hand-computed cases (points on the equator, where 1° is 111.195 km) and on invariants."""

import math

import numpy as np
import pytest
import torch

from avgeo.geo import metrics, sphere
from avgeo.geo.s2cells import GeoInputError

KM_PER_DEGREE = sphere.EARTH_RADIUS_KM * math.pi / 180.0
ROW_KEYS = ["acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km", "median_km", "mean_km", "geoscore"]


def on_equator(lon_deg: list[float]) -> np.ndarray:
    """(N, 2) points on the equator, where great-circle distance is |Δlon| * KM_PER_DEGREE."""
    return np.column_stack((np.zeros(len(lon_deg)), np.asarray(lon_deg, dtype=np.float64)))


def random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def rotate(latlon_deg: np.ndarray, rotation: torch.Tensor) -> np.ndarray:
    xyz = sphere.latlon_to_xyz(torch.from_numpy(latlon_deg)) @ rotation.T
    return sphere.xyz_to_latlon(xyz).numpy()


def random_points(n: int, seed: int) -> np.ndarray:
    xyz = sphere.sample_uniform(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sphere.xyz_to_latlon(xyz).numpy()


# ---- table_row ----


def test_table_row_by_hand():
    errors = [0.5, 10.0, 100.0, 500.0, 1000.0, 3000.0]
    pred = on_equator([d / KM_PER_DEGREE for d in errors])
    row = metrics.table_row(pred, on_equator([0.0] * 6))
    assert list(row) == ROW_KEYS
    assert row["acc_1km"] == pytest.approx(1 / 6)
    assert row["acc_25km"] == pytest.approx(2 / 6)
    assert row["acc_200km"] == pytest.approx(3 / 6)
    assert row["acc_750km"] == pytest.approx(4 / 6)
    assert row["acc_2500km"] == pytest.approx(5 / 6)
    assert row["median_km"] == pytest.approx(300.0)
    assert row["mean_km"] == pytest.approx(4610.5 / 6)
    expected_geoscore = sum(5000 * math.exp(-d / 1492.7) for d in errors) / 6
    assert row["geoscore"] == pytest.approx(expected_geoscore)
    assert all(isinstance(value, float) for value in row.values())


def test_geoscore_curve():
    np.testing.assert_allclose(
        metrics.geoscore([0.0, 1492.7, 2 * 1492.7]), [5000.0, 1839.3972058572117, 676.676416]
    )
    scores = metrics.geoscore(np.linspace(0, 20000, 50))
    assert (np.diff(scores) < 0).all() and scores.min() > 0


def test_perfect_and_antipodal_predictions():
    truth = random_points(20, seed=1)
    perfect = metrics.table_row(truth, truth)
    # Equal points come out 1e-13 km apart, the rounding of the cross product.
    expected = {**dict.fromkeys(ROW_KEYS[:5], 1.0), "median_km": 0.0, "mean_km": 0.0, "geoscore": 5000.0}
    assert perfect == pytest.approx(expected, abs=1e-9)
    antipodes = np.column_stack((-truth[:, 0], truth[:, 1] + 180.0))
    worst = metrics.table_row(antipodes, truth)
    assert all(worst[key] == 0.0 for key in ROW_KEYS[:5])
    assert worst["median_km"] == pytest.approx(math.pi * sphere.EARTH_RADIUS_KM)
    assert worst["geoscore"] == pytest.approx(5000 * math.exp(-math.pi * sphere.EARTH_RADIUS_KM / 1492.7))


def test_errors_cross_the_antimeridian_the_short_way():
    dist_km = metrics.errors_km([[0.0, 179.5], [10.0, -170.0]], [[0.0, -179.5], [10.0, 190.0]])
    np.testing.assert_allclose(dist_km, [KM_PER_DEGREE, 0.0], atol=1e-9)


def test_table_row_is_invariant_to_order_and_rotation():
    pred, truth = random_points(200, seed=2), random_points(200, seed=3)
    # Bring predictions closer so that every accuracy scale sees some hits.
    pred = sphere.xyz_to_latlon(
        sphere.geodesic(
            sphere.latlon_to_xyz(torch.from_numpy(truth)),
            sphere.latlon_to_xyz(torch.from_numpy(pred)),
            torch.linspace(0.0, 0.3, 200, dtype=torch.float64),
        )
    ).numpy()
    row = metrics.table_row(pred, truth)
    assert 0 < row["acc_25km"] < row["acc_750km"] < row["acc_2500km"] < 1
    order = np.random.default_rng(0).permutation(200)
    assert metrics.table_row(pred[order], truth[order]) == pytest.approx(row)
    rotation = random_rotation(seed=4)
    assert metrics.table_row(rotate(pred, rotation), rotate(truth, rotation)) == pytest.approx(row)


def test_table_row_takes_numpy_torch_and_lists():
    pred, truth = random_points(10, seed=5), random_points(10, seed=6)
    row = metrics.table_row(pred, truth)
    assert metrics.table_row(torch.from_numpy(pred), torch.from_numpy(truth)) == row
    assert metrics.table_row(pred.tolist(), truth.tolist()) == row


@pytest.mark.parametrize(
    ("pred", "truth", "message"),
    [
        (np.zeros((3, 2)), np.zeros((4, 2)), "one prediction per true location"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "at least one"),
        (np.array([[91.0, 0.0]]), np.zeros((1, 2)), "pred_latlon_deg: latitude 91 outside"),
        (np.zeros((2, 2)), np.zeros((2, 3)), "true_latlon_deg: shape"),
    ],
)
def test_table_row_rejects_bad_input(pred, truth, message):
    with pytest.raises(GeoInputError, match=message):
        metrics.table_row(pred, truth)


# ---- sample_quality ----


def test_sample_quality_by_hand_k1():
    # Truth balls (k=1): lon 0, 1, 2 have radius 1°; lon 10 has radius 8°.
    # Sample balls (k=1): 0.5 and 1.5 -> 1°; 5 -> 3.5°; 20 and 21 -> 1°.
    truth = on_equator([0.0, 1.0, 2.0, 10.0])
    samples = on_equator([0.5, 1.5, 5.0, 20.0, 21.0])
    quality = metrics.sample_quality(samples, truth, k=1)
    # 0.5 lies in the balls of 0 and 1; 1.5 in those of 1 and 2; 5 in that of 10; 20 and 21 in none.
    assert quality == pytest.approx({"precision": 3 / 5, "recall": 3 / 4, "density": 5 / 5, "coverage": 1.0})


def test_sample_quality_by_hand_k2():
    # Truth balls (k=2): -41 -> 41°, -40 -> 40°, 0 -> 2°, 1 -> 1°, 2 -> 1°, 3 -> 2°, 10 -> 8°.
    # Sample balls (k=2): 0.5 -> 5.5°, 2.5 -> 3.5°, 6 -> 5.5°, 30 -> 2°, 31 -> 1°, 32 -> 2°.
    truth = on_equator([-41.0, -40.0, 0.0, 1.0, 2.0, 3.0, 10.0])
    samples = on_equator([0.5, 2.5, 6.0, 30.0, 31.0, 32.0])
    quality = metrics.sample_quality(samples, truth, k=2)
    # In truth balls: 0.5 in {0, 1}; 2.5 in {2, 3, 10}; 6 in {10}; 30..32 in none -> 6 memberships.
    # No sample reaches -41 or -40, in either direction.
    assert quality == pytest.approx(
        {"precision": 3 / 6, "recall": 5 / 7, "density": 6 / 12, "coverage": 5 / 7}
    )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_set_against_itself(k):
    points = random_points(300, seed=7)
    quality = metrics.sample_quality(points, points, k=k)
    # Each ball holds its centre and its k neighbours: density (k + 1) / k.
    assert quality == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "density": (k + 1) / k, "coverage": 1.0}
    )


def test_sample_quality_is_invariant_to_rotation_and_order():
    truth = random_points(800, seed=8)
    truth = truth[truth[:, 0] < 40.0]
    # Samples near the northern truths only, plus a few near the North Pole, far from every truth.
    northern = truth[truth[:, 0] > 0.0] + np.array([0.5, 0.0])
    polar = np.column_stack((np.linspace(80.0, 89.0, 30), np.linspace(-180.0, 180.0, 30)))
    samples = np.concatenate((northern, polar))
    quality = metrics.sample_quality(samples, truth)
    assert 0 < quality["precision"] < 1 and 0 < quality["coverage"] < 1 and 0 < quality["recall"] < 1
    rotation = random_rotation(seed=10)
    rotated = metrics.sample_quality(rotate(samples, rotation), rotate(truth, rotation))
    assert rotated == pytest.approx(quality)
    assert metrics.sample_quality(samples[::-1], truth[::-1]) == pytest.approx(quality)


def test_disjoint_sets_score_zero():
    europe = np.column_stack((np.linspace(45, 55, 20), np.linspace(0, 20, 20)))
    pacific = np.column_stack((np.linspace(-10, 10, 20), np.linspace(-170, -150, 20)))
    quality = metrics.sample_quality(pacific, europe)
    assert quality == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_balls_reach_across_the_antimeridian():
    truth = on_equator([179.0, 179.5, 180.0, -179.5, -179.0])
    samples = on_equator([-179.75, -179.25, 179.25, 179.75])
    assert metrics.sample_quality(samples, truth, k=1)["precision"] == 1.0


def test_repeated_truths_have_zero_radius_closed_balls():
    truth = np.repeat([[10.0, 10.0]], 6, axis=0)
    samples = np.concatenate(([[10.0, 10.0]], on_equator([-150.0, -140.0, -130.0, -120.0, -110.0])))
    quality = metrics.sample_quality(samples, truth, k=5)
    # Only the exact hit counts, and it lies in all six (zero-radius) balls.
    assert quality["precision"] == pytest.approx(1 / 6)
    assert quality["density"] == pytest.approx(6 / (5 * 6))
    assert quality["coverage"] == 1.0


@pytest.mark.parametrize(
    ("n_samples", "n_truth", "k", "name"), [(10, 5, 5, "truth"), (5, 10, 5, "samples"), (10, 10, 0, "truth")]
)
def test_sample_quality_needs_more_points_than_k(n_samples, n_truth, k, name):
    with pytest.raises(
        GeoInputError, match=f"{name}_latlon_deg: k={k} nearest neighbours need more than k points"
    ):
        metrics.sample_quality(random_points(n_samples, seed=11), random_points(n_truth, seed=12), k=k)
