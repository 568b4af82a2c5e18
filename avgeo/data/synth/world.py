"""The locations of avg-synth: real cities, their acoustic region, their landscape, and their split.

Locations are GeoNames cities sampled per continent (every inhabited continent gets a share, growing
with the square root of its number of eligible cities, capped at half of them so that the minimum
separation can still be met). Each location gets a coarse landscape drawn from its latitude, its
distance to the sea, its region's priors and its population: the only things the frames are rendered
from, so two places with the same landscape look statistically alike wherever they are. Splits are
location-disjoint.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely
import shapely.geometry
import torch

from avgeo.config import ConfigError
from avgeo.data.synth.config import SynthConfig
from avgeo.data.synth.regions import FACADE_STYLES, FacadeStyle, Region, assign_regions
from avgeo.geo.gazetteer import COUNTRIES_GEOJSON, Place
from avgeo.geo.sphere import EARTH_RADIUS_KM, angle_between, great_circle_km, latlon_to_xyz

Climate = Literal["tropical", "arid", "temperate", "cold"]
Urbanity = Literal["urban", "suburban", "rural"]
Split = Literal["train", "val", "test"]

CLIMATES: tuple[Climate, ...] = ("tropical", "arid", "temperate", "cold")
URBANITIES: tuple[Urbanity, ...] = ("urban", "suburban", "rural")
INHABITED_CONTINENTS = ("Africa", "Asia", "Europe", "North America", "Oceania", "South America")
"""Natural Earth continents locations are drawn from (Antarctica and the open seas have no cities to film)."""

TROPIC_LAT_DEG = 23.44
"""Latitude of the tropics, degrees."""

COASTAL_KM = 50.0
"""A city this close to the (1:110m, so coarse) coastline is coastal."""

SEA_IN_VIEW_PROB = 0.7
"""Chance that a coastal location's footage has the sea in view."""

# Urbanity by population tier: a big city is mostly filmed in its streets, a small one often in its parks.
_URBANITY_PROBS = ((1_000_000, (0.6, 0.3, 0.1)), (300_000, (0.35, 0.45, 0.2)), (0, (0.15, 0.45, 0.4)))

# Streams of randomness, so that each draw depends only on (seed, stream, key) and never on order.
LOCATION_STREAM, SCENE_STREAM = 1, 2


def keyed_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """A generator that is a function of (seed, stream, key) alone: same numbers in any process or order."""
    return np.random.default_rng([seed, stream, *key])


@dataclass(frozen=True)
class Landscape:
    """The coarse look of a location: all its frames are rendered from (with its layout seed)."""

    climate: Climate
    """Vegetation, ground and weather: tropical, arid, temperate or cold."""
    urbanity: Urbanity
    """Buildings: urban (dense, tall), suburban (low houses) or rural (open land)."""
    coast: bool
    """The sea is in view."""
    mountains: bool
    """Mountains are in view."""
    facade: FacadeStyle
    """The architecture: the style of most of its buildings (few show in rural views)."""


@dataclass(frozen=True)
class SynthLocation:
    """One location of the benchmark."""

    location_id: str
    """Stable id, "loc0000".. in sampling order."""
    index: int
    """Position in sampling order; keys the location's randomness."""
    place: Place
    """The GeoNames city."""
    region: Region
    """Its acoustic region."""
    landscape: Landscape
    """Its look."""
    layout_seed: int
    """Fixes the skyline, mountain ridge, trees and horizon shared by all its clips."""
    split: Split
    """train, val or test; all clips of a location share it."""


def sample_locations(places: list[Place], config: SynthConfig, seed: int) -> list[SynthLocation]:
    """`config.n_locations` locations from `places`, on every inhabited continent; deterministic in `seed`."""
    eligible = sorted(
        (p for p in places if p.population >= config.min_population and p.continent in INHABITED_CONTINENTS),
        key=lambda p: (p.continent, p.name, p.latlon_deg),
    )
    by_continent: dict[str, list[Place]] = defaultdict(list)
    for place in eligible:
        by_continent[place.continent].append(place)
    missing = [c for c in INHABITED_CONTINENTS if c not in by_continent]
    if missing:
        raise ConfigError(
            f"min_population {config.min_population}: no eligible city in {', '.join(missing)}; lower it"
        )
    quotas = _continent_quotas({c: len(ps) for c, ps in by_continent.items()}, config.n_locations)
    rng = keyed_rng(seed, LOCATION_STREAM)
    chosen = _spread_out(by_continent, quotas, config.min_separation_km, rng)
    latlon_deg = np.array([p.latlon_deg for p in chosen], dtype=np.float64)
    regions = assign_regions(torch.from_numpy(latlon_deg), [p.continent for p in chosen])
    coastal = coast_distance_km(latlon_deg) <= COASTAL_KM
    splits = assign_splits([p.continent for p in chosen], config.val_fraction, config.test_fraction, rng)
    locations = []
    for index, (place, region, near_sea, split) in enumerate(
        zip(chosen, regions, coastal, splits, strict=True)
    ):
        location_rng = keyed_rng(seed, LOCATION_STREAM, index)
        locations.append(
            SynthLocation(
                location_id=f"loc{index:04d}",
                index=index,
                place=place,
                region=region,
                landscape=draw_landscape(
                    place, region, bool(near_sea), config.visual.landscape_noise, location_rng
                ),
                layout_seed=int(location_rng.integers(2**63)),
                split=split,
            )
        )
    return locations


@functools.cache
def _coastline() -> shapely.Geometry:
    """The outline of all land: the boundary of the union of Natural Earth's 1:110m countries."""
    features = json.loads(COUNTRIES_GEOJSON.read_text(encoding="utf-8"))["features"]
    return shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in features]).boundary


def coast_distance_km(latlon_deg: np.ndarray) -> np.ndarray:
    """(N, 2) degrees -> (N,) great-circle km to the nearest point of the 1:110m coastline."""
    points = shapely.points(latlon_deg[:, 1], latlon_deg[:, 0])
    # The nearest point is found in the (lon, lat) plane, then measured on the sphere.
    nearest_lonlat = shapely.get_coordinates(
        shapely.get_point(shapely.shortest_line(points, _coastline()), 1)
    )
    return great_circle_km(
        torch.from_numpy(latlon_deg), torch.from_numpy(np.ascontiguousarray(nearest_lonlat[:, ::-1]))
    ).numpy()


def _continent_quotas(counts: dict[str, int], n_locations: int) -> dict[str, int]:
    """Locations per continent: proportional to sqrt(cities), at least 1, at most half the cities."""
    caps = {c: max(1, n // 2) for c, n in counts.items()}
    if sum(caps.values()) < n_locations:
        raise ConfigError(
            f"n_locations {n_locations} needs more cities than the {sum(counts.values())} eligible; "
            "lower min_population"
        )
    quotas = dict.fromkeys(counts, 1)
    # Water-filling: hand out the rest by weight, never past a continent's cap.
    while (left := n_locations - sum(quotas.values())) > 0:
        open_continents = [c for c in counts if quotas[c] < caps[c]]
        weights = {c: math.sqrt(counts[c]) for c in open_continents}
        total = sum(weights.values())
        for continent in sorted(open_continents, key=lambda c: -weights[c]):
            share = max(1, round(left * weights[continent] / total))
            quotas[continent] += min(
                share, caps[continent] - quotas[continent], n_locations - sum(quotas.values())
            )
    return quotas


def _spread_out(
    by_continent: dict[str, list[Place]],
    quotas: dict[str, int],
    min_separation_km: float,
    rng: np.random.Generator,
) -> list[Place]:
    """Draw each continent's quota in random order, skipping cities closer than `min_separation_km`."""
    min_angle_rad = min_separation_km / EARTH_RADIUS_KM
    chosen: list[Place] = []
    chosen_xyz = torch.empty(0, 3, dtype=torch.float64)
    for continent in sorted(quotas):
        candidates = by_continent[continent]
        candidate_xyz = latlon_to_xyz(torch.tensor([p.latlon_deg for p in candidates], dtype=torch.float64))
        taken = 0
        for candidate_index in rng.permutation(len(candidates)):
            xyz = candidate_xyz[candidate_index : candidate_index + 1]
            if len(chosen) and angle_between(xyz, chosen_xyz).min() < min_angle_rad:
                continue
            chosen.append(candidates[candidate_index])
            chosen_xyz = torch.cat((chosen_xyz, xyz))
            taken += 1
            if taken == quotas[continent]:
                break
        if taken < quotas[continent]:
            raise ConfigError(
                f"only {taken} cities in {continent} are {min_separation_km} km apart, {quotas[continent]} "
                "needed; lower min_separation_km or min_population, or ask for fewer n_locations"
            )
    return chosen


def assign_splits(
    continents: list[str], val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> list[Split]:
    """A split per location: exact global counts, and close to the same ratios within each continent.

    Locations are visited continent by continent in random order and dealt labels from a sequence in
    which each split's labels are evenly spaced.
    """
    n = len(continents)
    counts = {"val": round(n * val_fraction), "test": round(n * test_fraction)}
    counts = {"train": n - counts["val"] - counts["test"], **counts}
    if min(counts.values()) < 1:
        raise ConfigError(
            f"{n} locations leave a split empty at val/test fractions {val_fraction}/{test_fraction}"
        )
    dealt = sorted(
        ((j + 0.5) / count, order, split)
        for order, (split, count) in enumerate(counts.items())
        for j in range(count)
    )
    visit_order = sorted(range(n), key=lambda i: (continents[i], rng.random()))
    split_of = {location: dealt[position][2] for position, location in enumerate(visit_order)}
    return [split_of[location] for location in range(n)]


def draw_landscape(
    place: Place, region: Region, coastal: bool, landscape_noise: float, rng: np.random.Generator
) -> Landscape:
    """A location's look from its latitude, whether it is `coastal`, its region's priors and its population.

    With probability `landscape_noise` the look ignores geography altogether (any place can look like
    anything): that keeps frames from pinning latitude or region exactly.
    """
    if rng.random() < landscape_noise:
        return Landscape(
            climate=CLIMATES[rng.integers(len(CLIMATES))],
            urbanity=URBANITIES[rng.integers(len(URBANITIES))],
            coast=bool(rng.random() < 0.3),
            mountains=bool(rng.random() < 0.25),
            facade=FACADE_STYLES[rng.integers(len(FACADE_STYLES))],
        )
    mountains = bool(rng.random() < region.mountain_share)
    coast = coastal and bool(rng.random() < SEA_IN_VIEW_PROB)
    urbanity_probs = next(probs for floor, probs in _URBANITY_PROBS if place.population >= floor)
    urbanity = URBANITIES[rng.choice(len(URBANITIES), p=urbanity_probs)]
    styles, style_probs = zip(*region.facades, strict=True)
    facade = styles[rng.choice(len(styles), p=style_probs)]
    climate = _climate(abs(place.latlon_deg[0]), region, mountains, rng)
    return Landscape(climate, urbanity, coast, mountains, facade)


def _climate(abs_lat_deg: float, region: Region, mountains: bool, rng: np.random.Generator) -> Climate:
    if abs_lat_deg < 55 and rng.random() < region.arid_share:
        return "arid"
    if abs_lat_deg < TROPIC_LAT_DEG:
        # Highland cities of the tropics (Bogota, Addis Ababa) look temperate.
        return "temperate" if mountains and rng.random() < 0.5 else "tropical"
    if abs_lat_deg >= 55 or (abs_lat_deg >= 45 and rng.random() < (abs_lat_deg - 45) / 10):
        return "cold"
    return "cold" if mountains and rng.random() < 0.3 else "temperate"
