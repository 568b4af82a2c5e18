"""The density heatmap: the grid it evaluates, the PNG's size, and where its brightest pixel lands."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from avgeo.geo.sphere import great_circle_km, latlon_to_xyz, xyz_to_latlon
from avgeo.geo.vmf import vmf_log_density
from avgeo.prediction.baselines import CellClassifierConfig, CellClassifierHead, class_cells
from avgeo.prediction.heatmap import (
    FIGURE_SIZE_PX,
    MAP_BOX_PX,
    log_density_grid,
    plot_density,
    predictor_log_density_fn,
)


def _vmf(mode_latlon_deg: tuple[float, float], kappa: float):
    mean_dir = latlon_to_xyz(torch.tensor(mode_latlon_deg, dtype=torch.float64))
    return lambda xyz: vmf_log_density(xyz.double(), mean_dir, kappa)


def test_grid_runs_north_to_south_and_west_to_east_at_cell_centres():
    seen = []

    def record(xyz: torch.Tensor) -> torch.Tensor:
        seen.append(len(xyz))
        return xyz_to_latlon(xyz)[:, 0] * 1000.0 + xyz_to_latlon(xyz)[:, 1]

    lat_deg, lon_deg, values = log_density_grid(record, resolution_deg=10.0, points_per_call=100)
    assert lat_deg[0] == 85.0 and lat_deg[-1] == -85.0 and lon_deg[0] == -175.0 and lon_deg[-1] == 175.0
    assert values.shape == (18, 36)
    expected = lat_deg[:, None] * 1000.0 + lon_deg[None, :]
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert max(seen) <= 100 and sum(seen) == 18 * 36


def test_grid_of_a_density_integrates_to_one():
    lat_deg, _, log_density = log_density_grid(_vmf((-20.0, 140.0), kappa=30.0), resolution_deg=1.0)
    cell_area_sr = math.radians(1.0) ** 2 * np.cos(np.radians(lat_deg))[:, None]
    assert (np.exp(log_density) * cell_area_sr).sum() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("resolution_deg", [0.0, 7.0, 100.0])
def test_grid_resolution_must_divide_180(resolution_deg):
    with pytest.raises(ValueError, match="divide 180"):
        log_density_grid(_vmf((0.0, 0.0), 5.0), resolution_deg)


@pytest.mark.parametrize("mode_latlon_deg", [(30.0, 60.0), (-45.0, -170.0)])
def test_png_has_the_layout_size_and_its_brightest_pixel_at_the_mode(tmp_path, mode_latlon_deg):
    path = plot_density(_vmf(mode_latlon_deg, kappa=200.0), tmp_path / "maps" / "vmf.png", resolution_deg=1.0)
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    width_px, height_px = FIGURE_SIZE_PX
    assert image.shape == (height_px, width_px, 3)

    left, bottom, box_width, box_height = MAP_BOX_PX
    top = height_px - bottom - box_height
    luminance = image[top : top + box_height, left : left + box_width] @ np.array([0.2126, 0.7152, 0.0722])
    row, column = np.unravel_index(np.argmax(luminance), luminance.shape)
    brightest_deg = (90.0 - 180.0 * (row + 0.5) / box_height, -180.0 + 360.0 * (column + 0.5) / box_width)
    distance_km = great_circle_km(
        torch.tensor(brightest_deg, dtype=torch.float64), torch.tensor(mode_latlon_deg, dtype=torch.float64)
    )
    assert distance_km < 200.0  # the 1° grid cell holding the mode, give or take a pixel


def test_truth_and_estimate_markers_are_drawn(tmp_path):
    density = _vmf((10.0, 10.0), kappa=5.0)
    plain = np.asarray(Image.open(plot_density(density, tmp_path / "plain.png", resolution_deg=3.0)))
    marked = np.asarray(
        Image.open(
            plot_density(
                density,
                tmp_path / "marked.png",
                truth_latlon_deg=(-30.0, -60.0),
                estimate_latlon_deg=(40.0, 100.0),
                resolution_deg=3.0,
            )
        )
    )
    changed_rows, changed_columns = np.nonzero((plain != marked).any(-1))
    left, bottom, box_width, box_height = MAP_BOX_PX
    top = FIGURE_SIZE_PX[1] - bottom - box_height
    for lat, lon in ((-30.0, -60.0), (40.0, 100.0)):
        row = top + (90.0 - lat) / 180.0 * box_height
        column = left + (lon + 180.0) / 360.0 * box_width
        assert (np.hypot(changed_rows - row, changed_columns - column) < 3).any()


def test_a_heads_density_for_one_clip_is_what_the_head_says():
    latlon_deg = np.array([[48.86, 2.35], [35.68, 139.69]])
    head = CellClassifierHead(
        CellClassifierConfig(feature_dim=4, s2_level=3, cell_tokens=class_cells(latlon_deg, 3), width=8)
    )
    features = torch.randn(4, generator=torch.Generator().manual_seed(0))
    points = latlon_to_xyz(torch.tensor([[48.0, 2.0], [35.0, 139.0], [0.0, 0.0]], dtype=torch.float64))
    with torch.no_grad():
        from_fn = predictor_log_density_fn(head, features)(points)
        assert torch.equal(from_fn, head.log_density(points[None], features[None])[0])
