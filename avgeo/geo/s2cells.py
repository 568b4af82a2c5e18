"""S2 cells (the hierarchical grid of the method's R_geo reward) of points given in degrees.

An S2 cell at level l is one of 6 * 4**l nearly equal quadrilaterals covering the sphere; its token is
the hex form of its 64-bit id with trailing zeros cut (Paris: level 1 `44`, level 5 `47e4`, level 12
`47e66e1`). Cells are computed with s2sphere.

This module also holds the geo package's coordinate check (`as_latlon_deg`, `GeoInputError`), which
the gazetteer and the metrics share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import s2sphere

S2_LEVELS: tuple[int, ...] = (1, 5, 12)
"""The method's levels for R_geo; mean cell edges are about 4,600 km (L1), 290 km (L5) and 2.3 km (L12)."""

MAX_LEVEL = 30
"""The finest S2 level (leaf cells of about 1 cm²)."""


class GeoInputError(ValueError):
    """Coordinates, levels, tokens or places given to `avgeo.geo` that cannot be used; says which and why."""


def as_latlon_deg(latlon_deg: object, name: str = "latlon_deg") -> np.ndarray:
    """Validate coordinates: (2,) or (N, 2) (lat, lon) degrees -> (N, 2) float64, lon wrapped to (-180, 180].

    Wrapping gives one spelling per meridian, so ±180° and lon + 360° land in the same cell or polygon.
    """
    array = np.asarray(latlon_deg, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 2:
        raise GeoInputError(f"{name}: shape {array.shape}; expected (N, 2) (latitude, longitude) in degrees")
    if not np.isfinite(array).all():
        raise GeoInputError(f"{name}: holds NaN or infinite coordinates; drop or fix those rows first")
    if (np.abs(array[:, 0]) > 90.0).any():
        worst = array[np.argmax(np.abs(array[:, 0]))]
        raise GeoInputError(
            f"{name}: latitude {worst[0]:g} outside [-90, 90]; are (lat, lon) swapped or in radians?"
        )
    lon = array[:, 1]
    # Only wrap what is out of range: the modulo would perturb in-range longitudes by an ulp or so.
    lon = np.where((lon > -180.0) & (lon <= 180.0), lon, 180.0 - np.mod(180.0 - lon, 360.0))
    return np.stack((array[:, 0], lon), axis=1)


def _check_level(level: int) -> None:
    if not 0 <= level <= MAX_LEVEL:
        raise GeoInputError(f"S2 level {level} is out of range; levels run from 0 to {MAX_LEVEL}")


def _leaf_cell(lat_deg: float, lon_deg: float) -> s2sphere.CellId:
    return s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat_deg, lon_deg))


def cell_id(latlon_deg: tuple[float, float], level: int) -> int:
    """64-bit id of the level-`level` S2 cell holding the point (lat, lon) in degrees."""
    _check_level(level)
    ((lat, lon),) = as_latlon_deg(latlon_deg)
    return _leaf_cell(lat, lon).parent(level).id()


def cell_token(latlon_deg: tuple[float, float], level: int) -> str:
    """Token of the level-`level` S2 cell holding the point (lat, lon) in degrees."""
    return s2sphere.CellId(cell_id(latlon_deg, level)).to_token()


def cell_tokens(latlon_deg: np.ndarray, levels: Sequence[int] = S2_LEVELS) -> np.ndarray:
    """Tokens of many points: (N, 2) degrees -> (N, len(levels)) array of str, one column per level.

    Compare two such arrays with `==` to get per-level matches (N, L), as R_geo needs.
    """
    for level in levels:
        _check_level(level)
    points_deg = as_latlon_deg(latlon_deg)
    tokens = [
        [leaf.parent(level).to_token() for level in levels]
        for leaf in (_leaf_cell(lat, lon) for lat, lon in points_deg)
    ]
    return np.array(tokens, dtype=str).reshape(len(points_deg), len(levels))


def cell_center_deg(token: str) -> tuple[float, float]:
    """Centre (lat, lon) in degrees of the cell named by `token`."""
    try:
        cell = s2sphere.CellId.from_token(token)
    except ValueError:
        cell = None
    if cell is None or not cell.is_valid():
        raise GeoInputError(f"{token!r} is not an S2 cell token; tokens are hex strings such as '47e4'")
    center = cell.to_lat_lng()
    return center.lat().degrees, center.lng().degrees
