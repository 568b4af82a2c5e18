"""A predicted density drawn over the globe as a PNG: log-density (nats/sr) on an equirectangular grid,
Natural Earth coastlines on top, the truth and the point estimate marked.

The picture has a fixed layout (`FIGURE_SIZE_PX`, `MAP_BOX_PX`), so a pixel's position says which
latitude and longitude it shows. Colours span the top `dynamic_range_nats` of the log-density: below
that the density is at least e^−range times weaker than the mode and is drawn as the darkest colour.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from avgeo.geo.gazetteer import COUNTRIES_GEOJSON
from avgeo.geo.sphere import latlon_to_xyz
from avgeo.prediction.heads import GeoPredictor

LogDensityFn = Callable[[torch.Tensor], torch.Tensor]
"""(N, 3) unit vectors -> (N,) log-density in nats/sr."""

FIGURE_SIZE_PX = (1200, 640)
"""Width and height of the PNG, pixels."""

MAP_BOX_PX = (48, 80, 960, 480)
"""The map's left edge and bottom edge (from the bottom of the figure), width and height in pixels:
longitude −180° … 180° left to right, latitude −90° … 90° bottom to top, 0.375° per pixel."""

_COLORBAR_BOX_PX = (1032, 80, 24, 480)
_DPI = 100


def log_density_grid(
    log_density_fn: LogDensityFn, resolution_deg: float = 1.0, points_per_call: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate `log_density_fn` at the centres of an equirectangular grid of `resolution_deg` cells.

    Returns latitudes (H,) from north to south, longitudes (W,) from west to east, in degrees, and the
    log-density (H, W) in nats/sr; the function is called on at most `points_per_call` points at once.
    """
    if not 0.0 < resolution_deg <= 90.0 or not (180.0 / resolution_deg).is_integer():
        raise ValueError(f"resolution_deg {resolution_deg} must divide 180 (e.g. 0.5, 1, 2)")
    lat_deg = 90.0 - resolution_deg * (np.arange(round(180.0 / resolution_deg)) + 0.5)
    lon_deg = -180.0 + resolution_deg * (np.arange(round(360.0 / resolution_deg)) + 0.5)
    grid_deg = np.stack(np.meshgrid(lat_deg, lon_deg, indexing="ij"), axis=-1).reshape(-1, 2)
    xyz = latlon_to_xyz(torch.from_numpy(grid_deg))
    with torch.no_grad():
        values = [log_density_fn(chunk).double().cpu() for chunk in xyz.split(points_per_call)]
    return lat_deg, lon_deg, torch.cat(values).numpy().reshape(len(lat_deg), len(lon_deg))


def predictor_log_density_fn(predictor: GeoPredictor, features: torch.Tensor) -> LogDensityFn:
    """The density a probabilistic head predicts for one clip's features (D,), as a `LogDensityFn`."""
    return lambda xyz: predictor.log_density(xyz[None], features[None])[0]


def plot_density(
    log_density_fn: LogDensityFn,
    path: str | Path,
    truth_latlon_deg: tuple[float, float] | None = None,
    estimate_latlon_deg: tuple[float, float] | None = None,
    resolution_deg: float = 1.0,
    dynamic_range_nats: float = 10.0,
    title: str | None = None,
) -> Path:
    """Draw the density over the globe into the PNG `path` (parent folders created) and return the path."""
    *_, log_density = log_density_grid(log_density_fn, resolution_deg)
    top = float(np.nanmax(log_density))
    width_px, height_px = FIGURE_SIZE_PX
    # A bare Figure (no pyplot) draws with Agg and leaves matplotlib's global state alone.
    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    axes = figure.add_axes(_figure_fraction(MAP_BOX_PX))
    image = axes.imshow(
        log_density,
        extent=(-180.0, 180.0, -90.0, 90.0),
        origin="upper",
        cmap="magma",
        vmin=top - dynamic_range_nats,
        vmax=top,
        interpolation="nearest",
        aspect="auto",
    )
    axes.add_collection(LineCollection(_coastlines_lonlat(), colors="0.55", linewidths=0.5))
    markers = [
        (latlon, marker, colour, label)
        for latlon, marker, colour, label in (
            (truth_latlon_deg, "*", "cyan", "truth"),
            (estimate_latlon_deg, "X", "lime", "point estimate"),
        )
        if latlon is not None
    ]
    for latlon, marker, colour, label in markers:
        axes.plot(latlon[1], latlon[0], marker, color=colour, markersize=12, markeredgecolor="black",
                  linestyle="none", label=label)  # fmt: skip
    if markers:
        axes.legend(loc="lower left", fontsize=8)
    axes.set_xlim(-180.0, 180.0)
    axes.set_ylim(-90.0, 90.0)
    axes.set_xticks(range(-180, 181, 60))
    axes.set_yticks(range(-90, 91, 30))
    axes.tick_params(labelsize=8)
    if title:
        axes.set_title(title, fontsize=10)
    colorbar = figure.colorbar(image, cax=figure.add_axes(_figure_fraction(_COLORBAR_BOX_PX)))
    colorbar.set_label("log density (nats/sr)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI)
    return path


def _figure_fraction(box_px: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    width_px, height_px = FIGURE_SIZE_PX
    left, bottom, width, height = box_px
    return left / width_px, bottom / height_px, width / width_px, height / height_px


@functools.cache
def _coastlines_lonlat() -> list[np.ndarray]:
    """Every ring of the Natural Earth country polygons as (n, 2) (longitude, latitude) arrays."""
    features = json.loads(COUNTRIES_GEOJSON.read_text(encoding="utf-8"))["features"]
    rings = []
    for feature in features:
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        rings.extend(np.asarray(ring, dtype=np.float64) for polygon in polygons for ring in polygon)
    return rings
