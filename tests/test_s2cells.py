"""S2 cells of points: known tokens, the cell hierarchy, wrapping at the antimeridian, input errors."""

import numpy as np
import pytest
import s2sphere
import torch

from avgeo.geo import s2cells, sphere

PARIS_DEG = (48.8566, 2.3522)

# Largest diagonal of a level-l cell is 2.4387 / 2**l radians (S2's quadratic projection).
MAX_DIAGONAL_KM = {level: 2.4387 / 2**level * sphere.EARTH_RADIUS_KM for level in s2cells.S2_LEVELS}


@pytest.fixture(scope="module")
def random_points_deg() -> np.ndarray:
    xyz = sphere.sample_uniform(2000, torch.Generator().manual_seed(7), dtype=torch.float64)
    return sphere.xyz_to_latlon(xyz).numpy()


def test_paris_tokens_at_the_method_levels():
    assert [s2cells.cell_token(PARIS_DEG, level) for level in (1, 5, 12)] == ["44", "47e4", "47e66e1"]
    assert s2cells.cell_tokens(np.array([PARIS_DEG])).tolist() == [["44", "47e4", "47e66e1"]]


def test_cell_id_has_the_asked_level_and_names_the_same_cell_as_the_token():
    for level in (0, 1, 5, 12, 30):
        cell = s2sphere.CellId(s2cells.cell_id(PARIS_DEG, level))
        assert cell.is_valid() and cell.level() == level
        assert cell.to_token() == s2cells.cell_token(PARIS_DEG, level)


def test_batched_tokens_equal_one_point_tokens(random_points_deg):
    points_deg = random_points_deg[:50]
    tokens = s2cells.cell_tokens(points_deg, levels=(0, 5, 12))
    assert tokens.shape == (50, 3)
    for point_deg, row in zip(points_deg, tokens, strict=True):
        assert row.tolist() == [s2cells.cell_token(tuple(point_deg), level) for level in (0, 5, 12)]


def test_coarser_tokens_are_the_parents_of_finer_ones(random_points_deg):
    tokens = s2cells.cell_tokens(random_points_deg)
    for level_1, level_5, level_12 in tokens:
        fine = s2sphere.CellId.from_token(level_12)
        assert fine.parent(5).to_token() == level_5
        assert fine.parent(1).to_token() == level_1


def test_points_lie_near_their_cell_centre_and_centres_map_back(random_points_deg):
    tokens = s2cells.cell_tokens(random_points_deg)
    for column, level in enumerate(s2cells.S2_LEVELS):
        centres_deg = np.array([s2cells.cell_center_deg(token) for token in tokens[:, column]])
        dist_km = sphere.great_circle_km(torch.from_numpy(centres_deg), torch.from_numpy(random_points_deg))
        assert dist_km.max().item() < MAX_DIAGONAL_KM[level]
        back = s2cells.cell_tokens(centres_deg, levels=(level,))[:, 0]
        np.testing.assert_array_equal(back, tokens[:, column])


def test_cell_counts_follow_six_faces_times_four_per_level(random_points_deg):
    for level in (0, 1):
        tokens = s2cells.cell_tokens(random_points_deg, levels=(level,))
        assert len(set(tokens[:, 0])) == 6 * 4**level


def test_nearby_points_share_fine_cells_more_often_than_far_ones(random_points_deg):
    near_deg = random_points_deg + np.array([1e-4, 0.0])  # about 11 m north
    near_deg[:, 0] = np.clip(near_deg[:, 0], -90, 90)
    same = s2cells.cell_tokens(random_points_deg) == s2cells.cell_tokens(near_deg)
    # An 11 m step leaves a 2 km cell rarely and a 4,600 km cell almost never.
    assert same[:, 0].mean() > 0.999 and same[:, 1].mean() > 0.99 and same[:, 2].mean() > 0.95
    far = s2cells.cell_tokens(random_points_deg) == s2cells.cell_tokens(random_points_deg[::-1])
    assert far[:, 2].mean() < 0.01


def test_one_meridian_has_one_spelling():
    same_point_deg = np.array([[12.5, 180.0], [12.5, -180.0], [12.5, 540.0], [12.5, -540.0]])
    tokens = s2cells.cell_tokens(same_point_deg, levels=(1, 5, 12, 30))
    assert (tokens == tokens[0]).all()
    np.testing.assert_array_equal(
        s2cells.cell_tokens(np.array([[-17.8, 190.0]])), s2cells.cell_tokens(np.array([[-17.8, -170.0]]))
    )


def test_as_latlon_deg_keeps_in_range_values_bit_for_bit_and_wraps_the_rest():
    values = np.array([[48.8566, 2.3522], [-33.86, -180.0], [0.0, 359.0], [89.9, -190.0], [-90.0, 180.0]])
    wrapped = s2cells.as_latlon_deg(values)
    np.testing.assert_array_equal(wrapped[0], values[0])
    np.testing.assert_allclose(wrapped[1:, 1], [180.0, -1.0, 170.0, 180.0])
    np.testing.assert_array_equal(wrapped[:, 0], values[:, 0])
    assert s2cells.as_latlon_deg((10.0, 20.0)).shape == (1, 2)


def test_empty_input_gives_an_empty_table():
    assert s2cells.cell_tokens(np.zeros((0, 2))).shape == (0, len(s2cells.S2_LEVELS))


@pytest.mark.parametrize(
    ("latlon_deg", "message"),
    [
        (np.array([[95.0, 10.0]]), "latitude 95 outside"),
        (np.array([[10.0, 20.0, 30.0]]), "expected (N, 2)"),
        (np.array([[np.nan, 20.0]]), "NaN"),
    ],
)
def test_bad_coordinates_raise_a_typed_error_naming_the_problem(latlon_deg, message):
    with pytest.raises(s2cells.GeoInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        s2cells.cell_tokens(latlon_deg)


def test_bad_levels_and_tokens_raise_typed_errors():
    with pytest.raises(s2cells.GeoInputError, match="levels run from 0 to 30"):
        s2cells.cell_token(PARIS_DEG, 31)
    with pytest.raises(s2cells.GeoInputError, match="levels run from 0 to 30"):
        s2cells.cell_tokens(np.array([PARIS_DEG]), levels=(1, -1))
    for token in ("zz", "ff", ""):
        with pytest.raises(s2cells.GeoInputError, match="not an S2 cell token"):
            s2cells.cell_center_deg(token)
