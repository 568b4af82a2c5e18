"""Sphere maths against geomstats' Hypersphere(dim=2) and against closed-form distances on the Earth."""

import math

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

from avgeo.geo import sphere

KM_PER_DEGREE = sphere.EARTH_RADIUS_KM * math.pi / 180.0  # 111.195 km along a great circle

REFERENCE = Hypersphere(dim=2)
pytestmark = pytest.mark.usefixtures("geomstats_float64")


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(20261125)


def random_latlon_deg(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) degree coordinates uniform on the sphere, plus the poles and the antimeridian."""
    xyz = sphere.sample_uniform(n, generator, dtype=torch.float64)
    special = torch.tensor(
        [[90.0, 0.0], [-90.0, 0.0], [0.0, 180.0], [0.0, -180.0], [89.9999999, 17.0], [-45.0, 179.9999]],
        dtype=torch.float64,
    )
    return torch.cat((sphere.xyz_to_latlon(xyz), special))


def random_tangent(points: torch.Tensor, max_norm: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) tangent vectors at `points` with norms uniform in [0, max_norm)."""
    direction = sphere.normalize(
        sphere.project_to_tangent(points, torch.randn(points.shape, generator=generator, dtype=points.dtype))
    )
    return direction * max_norm * torch.rand(points.shape[0], 1, generator=generator, dtype=points.dtype)


def test_latlon_to_xyz_matches_geomstats_spherical_coordinates(generator):
    latlon_deg = random_latlon_deg(500, generator)
    # geomstats measures theta from the North Pole: theta = 90° - latitude, phi = longitude.
    spherical_rad = torch.deg2rad(torch.stack((90.0 - latlon_deg[:, 0], latlon_deg[:, 1]), dim=-1))
    expected = REFERENCE.spherical_to_extrinsic(spherical_rad)
    torch.testing.assert_close(sphere.latlon_to_xyz(latlon_deg), expected, atol=1e-15, rtol=0)
    assert REFERENCE.belongs(sphere.latlon_to_xyz(latlon_deg)).all()


def test_xyz_to_latlon_inverts_latlon_to_xyz_in_the_documented_range(generator):
    latlon_deg = random_latlon_deg(500, generator)
    xyz = sphere.latlon_to_xyz(latlon_deg)
    back_deg = sphere.xyz_to_latlon(xyz)
    assert (back_deg[:, 0].abs() <= 90.0).all()
    assert (back_deg[:, 1] > -180.0).all() and (back_deg[:, 1] <= 180.0).all()
    # Longitude is undefined at the poles and ±180 name one meridian, so compare positions.
    torch.testing.assert_close(sphere.latlon_to_xyz(back_deg), xyz, atol=1e-15, rtol=0)
    away_from_poles = latlon_deg[:, 0].abs() < 89.0
    torch.testing.assert_close(
        back_deg[away_from_poles, 0], latlon_deg[away_from_poles, 0], atol=1e-12, rtol=0
    )


def test_xyz_to_latlon_accepts_vectors_of_any_length():
    latlon_deg = torch.tensor([[30.0, -60.0]], dtype=torch.float64)
    scaled = 7.5 * sphere.latlon_to_xyz(latlon_deg)
    torch.testing.assert_close(sphere.xyz_to_latlon(scaled), latlon_deg)


def test_exp_map_matches_geomstats(generator):
    points = sphere.latlon_to_xyz(random_latlon_deg(500, generator))
    tangents = random_tangent(points, max_norm=3.0, generator=generator)
    expected = REFERENCE.metric.exp(tangents, points)
    torch.testing.assert_close(sphere.exp_map(points, tangents), expected, atol=1e-12, rtol=0)


def test_exp_map_of_tiny_and_zero_tangents_stays_put_and_has_finite_gradients(generator):
    points = sphere.latlon_to_xyz(random_latlon_deg(50, generator))
    tangents = random_tangent(points, max_norm=1e-10, generator=generator)
    tangents[:5] = 0.0
    tangents.requires_grad_(True)
    moved = sphere.exp_map(points, tangents)
    torch.testing.assert_close(moved, points + tangents.detach(), atol=1e-15, rtol=0)
    moved.sum().backward()
    assert torch.isfinite(tangents.grad).all()


def test_log_map_matches_geomstats_away_from_the_antipode(generator):
    base = sphere.latlon_to_xyz(random_latlon_deg(500, generator))
    target = sphere.exp_map(base, random_tangent(base, max_norm=math.pi - 1e-3, generator=generator))
    expected = REFERENCE.metric.log(target, base)
    torch.testing.assert_close(sphere.log_map(base, target), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "gap_rad", [0.0, 1e-12, 1e-9, 1e-6, 0.3, math.pi - 1e-6, math.pi - 1e-9, math.pi - 1e-11]
)
def test_exp_inverts_log_from_coincident_to_nearly_antipodal_points(generator, gap_rad):
    base = sphere.latlon_to_xyz(random_latlon_deg(200, generator))
    direction = random_tangent(base, max_norm=1.0, generator=generator)
    target = sphere.exp_map(base, gap_rad * sphere.normalize(direction))
    tangent = sphere.log_map(base, target)
    torch.testing.assert_close(sphere.exp_map(base, tangent), target, atol=1e-9, rtol=0)
    # The log map is tangent at the base point and its norm is the geodesic angle.
    assert (base * tangent).sum(-1).abs().max() < 1e-9
    torch.testing.assert_close(tangent.norm(dim=-1), sphere.angle_between(base, target), atol=1e-9, rtol=0)


def test_log_map_of_coincident_points_is_zero_with_finite_gradients(generator):
    points = sphere.latlon_to_xyz(random_latlon_deg(20, generator)).requires_grad_(True)
    tangent = sphere.log_map(points, points.detach().clone())
    assert tangent.abs().max() < 1e-15
    tangent.sum().backward()
    assert torch.isfinite(points.grad).all()


def test_project_to_tangent_matches_geomstats_and_is_idempotent(generator):
    points = sphere.latlon_to_xyz(random_latlon_deg(300, generator))
    vectors = torch.randn(points.shape, generator=generator, dtype=torch.float64)
    projected = sphere.project_to_tangent(points, vectors)
    torch.testing.assert_close(projected, REFERENCE.to_tangent(vectors, points), atol=1e-12, rtol=0)
    torch.testing.assert_close(sphere.project_to_tangent(points, projected), projected, atol=1e-12, rtol=0)
    assert (points * projected).sum(-1).abs().max() < 1e-12


def test_geodesic_matches_geomstats_and_splits_distance_linearly(generator):
    start = sphere.latlon_to_xyz(random_latlon_deg(100, generator))
    end = sphere.exp_map(start, random_tangent(start, max_norm=3.0, generator=generator))
    times = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    ours = torch.stack([sphere.geodesic(start, end, t.expand(start.shape[0])) for t in times], dim=1)
    expected = REFERENCE.metric.geodesic(initial_point=start, end_point=end)(times)
    torch.testing.assert_close(ours, expected, atol=1e-9, rtol=0)
    total_rad = sphere.angle_between(start, end)
    for i, t in enumerate(times):
        torch.testing.assert_close(sphere.angle_between(start, ours[:, i]), t * total_rad, atol=1e-9, rtol=0)
        torch.testing.assert_close(
            sphere.angle_between(ours[:, i], end), (1 - t) * total_rad, atol=1e-9, rtol=0
        )


def test_geodesic_accepts_per_point_times_with_a_trailing_axis(generator):
    start = sphere.latlon_to_xyz(random_latlon_deg(10, generator))
    end = sphere.latlon_to_xyz(random_latlon_deg(10, generator))
    t = torch.rand(start.shape[0], generator=generator, dtype=torch.float64)
    torch.testing.assert_close(sphere.geodesic(start, end, t), sphere.geodesic(start, end, t[:, None]))


def test_geodesic_crosses_the_antimeridian_the_short_way():
    start = sphere.latlon_to_xyz(torch.tensor([10.0, 179.0], dtype=torch.float64))
    end = sphere.latlon_to_xyz(torch.tensor([10.0, -179.0], dtype=torch.float64))
    midpoint_deg = sphere.xyz_to_latlon(sphere.geodesic(start, end, torch.tensor(0.5, dtype=torch.float64)))
    assert abs(abs(midpoint_deg[1].item()) - 180.0) < 1e-9
    assert 10.0 < midpoint_deg[0].item() < 10.01  # a great circle bulges poleward of the parallel


def test_great_circle_km_matches_geomstats_distance(generator):
    a_deg = random_latlon_deg(500, generator)
    b_deg = random_latlon_deg(500, generator)
    expected_km = sphere.EARTH_RADIUS_KM * REFERENCE.metric.dist(
        sphere.latlon_to_xyz(a_deg), sphere.latlon_to_xyz(b_deg)
    )
    torch.testing.assert_close(sphere.great_circle_km(a_deg, b_deg), expected_km, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("a_deg", "b_deg", "expected_km"),
    [
        ((0.0, 0.0), (0.0, 1.0), KM_PER_DEGREE),
        ((0.0, 0.0), (1.0, 0.0), KM_PER_DEGREE),
        ((0.0, 179.5), (0.0, -179.5), KM_PER_DEGREE),  # across the antimeridian, not around the world
        ((0.0, 180.0), (0.0, -180.0), 0.0),
        ((90.0, 0.0), (90.0, 123.0), 0.0),  # the pole has every longitude
        ((89.0, 0.0), (89.0, 180.0), 2 * KM_PER_DEGREE),  # over the pole
        ((0.0, 0.0), (0.0, 180.0), math.pi * sphere.EARTH_RADIUS_KM),
        ((90.0, 0.0), (-90.0, 0.0), math.pi * sphere.EARTH_RADIUS_KM),
        ((0.0, 0.0), (0.0, 90.0), math.pi / 2 * sphere.EARTH_RADIUS_KM),
    ],
)
def test_great_circle_km_closed_forms(a_deg, b_deg, expected_km):
    dist_km = sphere.great_circle_km(
        torch.tensor(a_deg, dtype=torch.float64), torch.tensor(b_deg, dtype=torch.float64)
    )
    assert dist_km.item() == pytest.approx(expected_km, abs=1e-9)


def test_great_circle_km_paris_london():
    # Haversine with the mean radius 6371.0088 km gives 343.556 km between these city centres.
    paris_deg = torch.tensor([48.8566, 2.3522], dtype=torch.float64)
    london_deg = torch.tensor([51.5074, -0.1278], dtype=torch.float64)
    lat1, lon1, lat2, lon2 = map(math.radians, (48.8566, 2.3522, 51.5074, -0.1278))
    haversine = (
        math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    expected_km = 2 * sphere.EARTH_RADIUS_KM * math.asin(math.sqrt(haversine))
    assert sphere.great_circle_km(paris_deg, london_deg).item() == pytest.approx(expected_km, abs=1e-9)
    assert expected_km == pytest.approx(343.556, abs=1e-3)


def test_great_circle_km_is_symmetric_and_obeys_the_triangle_inequality(generator):
    a, b, c = (random_latlon_deg(300, generator) for _ in range(3))
    ab, ba = sphere.great_circle_km(a, b), sphere.great_circle_km(b, a)
    torch.testing.assert_close(ab, ba, atol=1e-9, rtol=0)
    assert (ab <= sphere.great_circle_km(a, c) + sphere.great_circle_km(c, b) + 1e-9).all()
    assert (ab >= 0).all() and (ab <= math.pi * sphere.EARTH_RADIUS_KM + 1e-9).all()


@pytest.mark.parametrize("offset_deg", [1e-4, 179.9999])
def test_float32_distances_stay_accurate_for_near_and_nearly_antipodal_points(offset_deg):
    a_deg = torch.tensor([[48.8566, 2.3522], [-33.86, 151.21], [0.0, 179.99995]], dtype=torch.float64)
    b_deg = a_deg.clone()
    b_deg[:, 1] += offset_deg
    exact_km = sphere.great_circle_km(a_deg, b_deg)
    single_km = sphere.great_circle_km(a_deg.float(), b_deg.float()).double()
    # atan2 keeps float32 errors near the metre level where acos would lose kilometres.
    assert (single_km - exact_km).abs().max() < 0.01


def test_great_circle_km_broadcasts_to_a_distance_matrix(generator):
    a_deg = random_latlon_deg(7, generator)
    b_deg = random_latlon_deg(4, generator)
    matrix_km = sphere.great_circle_km(a_deg[:, None, :], b_deg[None, :, :])
    assert matrix_km.shape == (a_deg.shape[0], b_deg.shape[0])
    torch.testing.assert_close(matrix_km[3, 2], sphere.great_circle_km(a_deg[3], b_deg[2]))
    # One point against many, ranks differing.
    torch.testing.assert_close(sphere.great_circle_km(a_deg[3], b_deg), matrix_km[3])


def test_batched_leading_dimensions_match_flat_calls(generator):
    latlon_deg = random_latlon_deg(22, generator)[:24].reshape(2, 3, 4, 2)
    points = sphere.latlon_to_xyz(latlon_deg)
    assert points.shape == (2, 3, 4, 3)
    flat = points.reshape(-1, 3)
    target = flat.roll(1, dims=0)
    torch.testing.assert_close(
        sphere.log_map(points, target.reshape(points.shape)).reshape(-1, 3), sphere.log_map(flat, target)
    )


def test_sample_uniform_is_seeded_unit_and_uniform():
    first = sphere.sample_uniform(20000, torch.Generator().manual_seed(3), dtype=torch.float64)
    again = sphere.sample_uniform(20000, torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(20000, dtype=torch.float64))
    # Archimedes: z of a uniform point on S² is uniform on [-1, 1], so mean 0 and variance 1/3.
    z = first[:, 2]
    standard_error = math.sqrt(1 / 3 / 20000)
    assert abs(z.mean().item()) < 5 * standard_error
    assert abs((z**2).mean().item() - 1 / 3) < 0.02
    assert sphere.sample_uniform(5).dtype == torch.float32
