"""The regions of avg-synth: where each is, what it sounds like, what it looks like.

A region is a named part of a continent, given by anchor cities; a location belongs to the region of
its nearest anchor on its own continent. Each region has a *palette*: AudioSet classes that may be heard
there, each with a per-clip probability. Palettes overlap (church bells ring in Europe and Latin
America; horns blare from Cairo to Dhaka), so one source rarely names a region; it is the combination
that does. What is *seen* comes from landscape priors (shares of arid and of mountainous places) and a
distribution of facade styles, deliberately alike across far-apart regions. Probabilities are this
model's choices, not measurements; docs/avg-synth.md lists them and how to read results obtained on them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from avgeo.geo.sphere import great_circle_km

Setting = Literal["any", "urban", "nature"]
FacadeStyle = Literal["brick", "stucco", "ochre", "concrete", "pastel", "adobe", "timber", "tile"]

FACADE_STYLES: tuple[FacadeStyle, ...] = (
    "brick",
    "stucco",
    "ochre",
    "concrete",
    "pastel",
    "adobe",
    "timber",
    "tile",
)

URBAN, NATURE, ANY = "urban", "nature", "any"


@dataclass(frozen=True)
class SourceRule:
    """A sound that may be heard in a clip."""

    name: str
    """AudioSet display name, e.g. "Ambulance (siren)"."""
    prob: float
    """Chance of being heard in a clip, before the urbanity scaling of `setting`."""
    setting: Setting = ANY
    """"urban" sources grow rarer away from town, "nature" sources rarer in town, "any" neither."""


@dataclass(frozen=True)
class Region:
    """One acoustic region."""

    name: str
    """Human-readable name, also the manifest's `region` value."""
    continent: str
    """Natural Earth continent the region lies on."""
    anchors_latlon_deg: tuple[tuple[float, float], ...]
    """Cities (lat, lon in degrees) spanning the region; a location joins the nearest anchor's region."""
    palette: tuple[SourceRule, ...]
    """The region-specific sounds."""
    facades: tuple[tuple[FacadeStyle, float], ...]
    """How often each facade style is a location's style: the visual cue of architecture, shared
    between regions (stucco from Seville to Los Angeles), so informative but aliased."""
    arid_share: float = 0.0
    """Share of the region's places with an arid look."""
    mountain_share: float = 0.1
    """Share of the region's places with mountains in view."""


def _palette(*rules: tuple[str, float, Setting]) -> tuple[SourceRule, ...]:
    return tuple(SourceRule(name, prob, setting) for name, prob, setting in rules)


REGIONS: tuple[Region, ...] = (
    Region(
        "British Isles",
        "Europe",
        ((53.5, -2.2), (51.5, -0.1), (55.9, -3.2), (53.3, -6.3)),
        _palette(
            ("Ambulance (siren)", 0.45, URBAN),
            ("Church bell", 0.3, ANY),
            ("Pigeon, dove", 0.35, URBAN),
            ("Chirp, tweet", 0.4, NATURE),
            ("Bus", 0.35, URBAN),
            ("Sheep", 0.2, NATURE),
            ("Rail transport", 0.15, URBAN),
        ),
        facades=(("brick", 0.6), ("stucco", 0.15), ("concrete", 0.25)),
    ),
    Region(
        "Western Europe",
        "Europe",
        ((48.9, 2.3), (50.8, 4.4), (52.4, 4.9), (45.8, 4.8), (43.3, 5.4)),
        _palette(
            ("Ambulance (siren)", 0.45, URBAN),
            ("Church bell", 0.35, ANY),
            ("Chirp, tweet", 0.35, NATURE),
            ("Bicycle bell", 0.3, URBAN),
            ("Pigeon, dove", 0.3, URBAN),
            ("Subway, metro, underground", 0.1, URBAN),
        ),
        facades=(("stucco", 0.35), ("brick", 0.35), ("concrete", 0.3)),
    ),
    Region(
        "Iberia",
        "Europe",
        ((40.4, -3.7), (41.4, 2.2), (38.7, -9.1), (37.4, -6.0), (39.5, -0.4)),
        _palette(
            ("Ambulance (siren)", 0.35, URBAN),
            ("Church bell", 0.4, ANY),
            ("Pigeon, dove", 0.35, URBAN),
            ("Motorcycle", 0.3, URBAN),
            ("Insect", 0.3, NATURE),
            ("Goat", 0.1, NATURE),
        ),
        facades=(("stucco", 0.55), ("ochre", 0.25), ("concrete", 0.2)),
        arid_share=0.35,
        mountain_share=0.25,
    ),
    Region(
        "Mediterranean Europe",
        "Europe",
        ((41.9, 12.5), (45.5, 9.2), (40.9, 14.3), (37.98, 23.7), (44.8, 20.5), (42.7, 23.3)),
        _palette(
            ("Ambulance (siren)", 0.35, URBAN),
            ("Church bell", 0.45, ANY),
            ("Motorcycle", 0.35, URBAN),
            ("Pigeon, dove", 0.3, URBAN),
            ("Insect", 0.3, NATURE),
            ("Goat", 0.15, NATURE),
        ),
        facades=(("ochre", 0.5), ("stucco", 0.3), ("concrete", 0.2)),
        arid_share=0.2,
        mountain_share=0.35,
    ),
    Region(
        "Central Europe",
        "Europe",
        ((52.5, 13.4), (48.2, 16.4), (50.1, 14.4), (52.2, 21.0), (47.4, 8.5), (48.1, 11.6), (47.5, 19.0)),
        _palette(
            ("Ambulance (siren)", 0.35, URBAN),
            ("Fire engine, fire truck (siren)", 0.2, URBAN),
            ("Church bell", 0.35, ANY),
            ("Rail transport", 0.3, URBAN),
            ("Bicycle bell", 0.15, URBAN),
            ("Cattle, bovinae", 0.12, NATURE),
            ("Chirp, tweet", 0.3, NATURE),
        ),
        facades=(("stucco", 0.3), ("brick", 0.3), ("concrete", 0.4)),
        mountain_share=0.2,
    ),
    Region(
        "Nordic",
        "Europe",
        ((59.3, 18.1), (59.9, 10.8), (60.2, 24.9), (55.7, 12.6), (64.1, -21.9), (63.4, 10.4)),
        _palette(
            ("Ambulance (siren)", 0.3, URBAN),
            ("Boat, Water vehicle", 0.25, ANY),
            ("Bicycle bell", 0.25, URBAN),
            ("Church bell", 0.2, ANY),
            ("Chirp, tweet", 0.25, NATURE),
            ("Rail transport", 0.15, URBAN),
        ),
        facades=(("timber", 0.35), ("brick", 0.35), ("concrete", 0.3)),
        mountain_share=0.25,
    ),
    Region(
        "Eastern Europe",
        "Europe",
        ((55.75, 37.6), (50.45, 30.5), (53.9, 27.6), (59.9, 30.3), (56.8, 60.6), (55.0, 82.9), (54.7, 25.3)),
        _palette(
            ("Police car (siren)", 0.3, URBAN),
            ("Crow", 0.4, ANY),
            ("Church bell", 0.3, ANY),
            ("Rail transport", 0.2, URBAN),
            ("Truck", 0.2, URBAN),
            ("Civil defense siren", 0.05, ANY),
        ),
        facades=(("concrete", 0.65), ("brick", 0.2), ("stucco", 0.15)),
        mountain_share=0.05,
    ),
    Region(
        "Middle East",
        "Asia",
        ((41.0, 29.0), (39.9, 32.9), (33.3, 44.4), (35.7, 51.4), (24.7, 46.7), (25.2, 55.3), (31.9, 35.9)),
        _palette(
            ("Chant", 0.55, ANY),
            ("Vehicle horn, car horn, honking", 0.45, URBAN),
            ("Pigeon, dove", 0.35, ANY),
            ("Jackhammer", 0.15, URBAN),
            ("Goat", 0.15, NATURE),
            ("Police car (siren)", 0.2, URBAN),
        ),
        facades=(("adobe", 0.4), ("stucco", 0.4), ("concrete", 0.2)),
        arid_share=0.7,
        mountain_share=0.25,
    ),
    Region(
        "Central Asia",
        "Asia",
        ((41.3, 69.2), (43.2, 76.9), (51.1, 71.4), (38.6, 68.8), (47.9, 106.9), (37.9, 58.4)),
        _palette(
            ("Chant", 0.3, ANY),
            ("Sheep", 0.35, NATURE),
            ("Cattle, bovinae", 0.2, NATURE),
            ("Vehicle horn, car horn, honking", 0.25, URBAN),
            ("Crow", 0.25, ANY),
            ("Police car (siren)", 0.15, URBAN),
        ),
        facades=(("concrete", 0.5), ("adobe", 0.35), ("stucco", 0.15)),
        arid_share=0.6,
        mountain_share=0.35,
    ),
    Region(
        "South Asia",
        "Asia",
        ((28.6, 77.2), (19.1, 72.9), (13.1, 80.3), (22.6, 88.4), (24.9, 67.0), (23.8, 90.4), (12.97, 77.6)),
        _palette(
            ("Vehicle horn, car horn, honking", 0.7, URBAN),
            ("Crow", 0.5, ANY),
            ("Motorcycle", 0.45, URBAN),
            ("Chant", 0.25, ANY),
            ("Bell", 0.2, ANY),
            ("Cattle, bovinae", 0.2, NATURE),
            ("Train", 0.12, ANY),
        ),
        facades=(("ochre", 0.35), ("concrete", 0.35), ("pastel", 0.3)),
        arid_share=0.25,
        mountain_share=0.15,
    ),
    Region(
        "East Asia",
        "Asia",
        (
            (39.9, 116.4),
            (31.2, 121.5),
            (23.1, 113.3),
            (30.6, 104.1),
            (34.3, 108.9),
            (22.3, 114.2),
            (25.0, 121.5),
        ),
        _palette(
            ("Siren", 0.3, URBAN),
            ("Vehicle horn, car horn, honking", 0.35, URBAN),
            ("Motorcycle", 0.3, URBAN),
            ("Jackhammer", 0.2, URBAN),
            ("Bicycle bell", 0.2, URBAN),
            ("Gong", 0.12, ANY),
            ("Insect", 0.2, NATURE),
        ),
        facades=(("concrete", 0.6), ("tile", 0.3), ("brick", 0.1)),
        arid_share=0.1,
        mountain_share=0.25,
    ),
    Region(
        "Japan and Korea",
        "Asia",
        ((35.7, 139.7), (34.7, 135.5), (37.6, 127.0), (35.2, 129.1), (43.1, 141.3), (33.6, 130.4)),
        _palette(
            ("Crow", 0.45, ANY),
            ("Rail transport", 0.35, URBAN),
            ("Ambulance (siren)", 0.3, URBAN),
            ("Insect", 0.3, NATURE),
            ("Reversing beeps", 0.15, URBAN),
            ("Bell", 0.12, ANY),
            ("Subway, metro, underground", 0.1, URBAN),
        ),
        facades=(("tile", 0.5), ("concrete", 0.35), ("timber", 0.15)),
        mountain_share=0.35,
    ),
    Region(
        "Mainland Southeast Asia",
        "Asia",
        ((13.75, 100.5), (10.8, 106.7), (21.0, 105.8), (16.8, 96.2), (11.6, 104.9), (18.8, 99.0)),
        _palette(
            ("Motorcycle", 0.6, URBAN),
            ("Vehicle horn, car horn, honking", 0.45, URBAN),
            ("Crowing, cock-a-doodle-doo", 0.35, NATURE),
            ("Gong", 0.2, ANY),
            ("Bell", 0.15, ANY),
            ("Frog", 0.2, NATURE),
            ("Mosquito", 0.15, NATURE),
        ),
        facades=(("concrete", 0.4), ("pastel", 0.35), ("ochre", 0.25)),
        mountain_share=0.2,
    ),
    Region(
        "Maritime Southeast Asia",
        "Asia",
        ((-6.2, 106.8), (3.1, 101.7), (14.6, 121.0), (-7.25, 112.75), (1.35, 103.8), (10.3, 123.9)),
        _palette(
            ("Chant", 0.45, ANY),
            ("Motorcycle", 0.55, URBAN),
            ("Vehicle horn, car horn, honking", 0.35, URBAN),
            ("Crowing, cock-a-doodle-doo", 0.35, NATURE),
            ("Frog", 0.25, NATURE),
            ("Boat, Water vehicle", 0.2, ANY),
        ),
        facades=(("pastel", 0.4), ("concrete", 0.4), ("stucco", 0.2)),
        mountain_share=0.3,
    ),
    Region(
        "North Africa",
        "Africa",
        ((30.0, 31.2), (33.6, -7.6), (36.8, 3.1), (36.8, 10.2), (32.9, 13.2), (15.6, 32.5)),
        _palette(
            ("Chant", 0.55, ANY),
            ("Vehicle horn, car horn, honking", 0.45, URBAN),
            ("Goat", 0.25, NATURE),
            ("Pigeon, dove", 0.25, ANY),
            ("Sheep", 0.15, NATURE),
            ("Hammer", 0.1, URBAN),
        ),
        facades=(("stucco", 0.45), ("adobe", 0.4), ("concrete", 0.15)),
        arid_share=0.75,
        mountain_share=0.2,
    ),
    Region(
        "West Africa",
        "Africa",
        ((6.5, 3.4), (5.6, -0.2), (14.7, -17.4), (12.4, -1.5), (9.06, 7.5), (12.0, 8.5), (5.35, -4.0)),
        _palette(
            ("Vehicle horn, car horn, honking", 0.5, URBAN),
            ("Motorcycle", 0.4, URBAN),
            ("Crowing, cock-a-doodle-doo", 0.35, NATURE),
            ("Goat", 0.3, NATURE),
            ("Chant", 0.3, ANY),
            ("Hammer", 0.15, URBAN),
            ("Mosquito", 0.1, NATURE),
        ),
        facades=(("adobe", 0.45), ("concrete", 0.35), ("pastel", 0.2)),
        arid_share=0.35,
        mountain_share=0.05,
    ),
    Region(
        "Central Africa",
        "Africa",
        ((-4.3, 15.3), (3.85, 11.5), (4.4, 18.6), (0.4, 9.45), (-11.7, 27.5)),
        _palette(
            ("Vehicle horn, car horn, honking", 0.35, URBAN),
            ("Insect", 0.35, NATURE),
            ("Crowing, cock-a-doodle-doo", 0.3, NATURE),
            ("Frog", 0.25, NATURE),
            ("Motorcycle", 0.25, URBAN),
            ("Mosquito", 0.2, NATURE),
            ("Chant", 0.1, ANY),
        ),
        facades=(("adobe", 0.4), ("concrete", 0.35), ("pastel", 0.25)),
        mountain_share=0.1,
    ),
    Region(
        "East Africa",
        "Africa",
        ((-1.29, 36.8), (9.0, 38.75), (-6.8, 39.3), (0.35, 32.6), (-1.95, 30.1), (2.05, 45.3)),
        _palette(
            ("Vehicle horn, car horn, honking", 0.4, URBAN),
            ("Motorcycle", 0.4, URBAN),
            ("Crowing, cock-a-doodle-doo", 0.3, NATURE),
            ("Cattle, bovinae", 0.25, NATURE),
            ("Chant", 0.2, ANY),
            ("Goat", 0.2, NATURE),
            ("Church bell", 0.1, ANY),
        ),
        facades=(("concrete", 0.45), ("adobe", 0.3), ("pastel", 0.25)),
        arid_share=0.25,
        mountain_share=0.35,
    ),
    Region(
        "Southern Africa",
        "Africa",
        ((-26.2, 28.0), (-33.9, 18.4), (-29.9, 31.0), (-17.8, 31.05), (-15.4, 28.3), (-18.9, 47.5)),
        _palette(
            ("Vehicle horn, car horn, honking", 0.3, URBAN),
            ("Siren", 0.2, URBAN),
            ("Truck", 0.2, URBAN),
            ("Insect", 0.25, NATURE),
            ("Cattle, bovinae", 0.15, NATURE),
            ("Church bell", 0.15, ANY),
            ("Chirp, tweet", 0.2, NATURE),
        ),
        facades=(("stucco", 0.35), ("concrete", 0.35), ("brick", 0.3)),
        arid_share=0.35,
        mountain_share=0.25,
    ),
    Region(
        "North America East",
        "North America",
        ((40.7, -74.0), (42.36, -71.06), (38.9, -77.0), (43.65, -79.4), (45.5, -73.6), (33.75, -84.4)),
        _palette(
            ("Police car (siren)", 0.5, URBAN),
            ("Fire engine, fire truck (siren)", 0.25, URBAN),
            ("Truck", 0.2, URBAN),
            ("Train horn", 0.12, ANY),
            ("Subway, metro, underground", 0.15, URBAN),
            ("Chirp, tweet", 0.3, NATURE),
            ("Helicopter", 0.1, URBAN),
        ),
        facades=(("brick", 0.55), ("timber", 0.25), ("concrete", 0.2)),
        mountain_share=0.1,
    ),
    Region(
        "North America Central",
        "North America",
        ((29.76, -95.37), (32.78, -96.8), (39.1, -94.6), (44.98, -93.27), (41.9, -87.6), (36.16, -86.78)),
        _palette(
            ("Police car (siren)", 0.45, URBAN),
            ("Truck", 0.3, URBAN),
            ("Train horn", 0.3, ANY),
            ("Insect", 0.25, NATURE),
            ("Cattle, bovinae", 0.15, NATURE),
            ("Civil defense siren", 0.08, ANY),
        ),
        facades=(("brick", 0.4), ("timber", 0.35), ("concrete", 0.25)),
        arid_share=0.15,
        mountain_share=0.05,
    ),
    Region(
        "North America West",
        "North America",
        (
            (34.05, -118.25),
            (37.77, -122.4),
            (47.6, -122.3),
            (49.25, -123.1),
            (33.45, -112.1),
            (39.74, -105.0),
        ),
        _palette(
            ("Police car (siren)", 0.45, URBAN),
            ("Fire engine, fire truck (siren)", 0.2, URBAN),
            ("Helicopter", 0.15, URBAN),
            ("Truck", 0.2, URBAN),
            ("Train horn", 0.12, ANY),
            ("Crow", 0.2, ANY),
        ),
        facades=(("stucco", 0.5), ("timber", 0.3), ("concrete", 0.2)),
        arid_share=0.35,
        mountain_share=0.35,
    ),
    Region(
        "Mexico and Central America",
        "North America",
        ((19.43, -99.13), (20.67, -103.35), (25.67, -100.3), (14.63, -90.5), (12.13, -86.25), (9.0, -79.5)),
        _palette(
            ("Church bell", 0.3, ANY),
            ("Vehicle horn, car horn, honking", 0.3, URBAN),
            ("Crowing, cock-a-doodle-doo", 0.25, NATURE),
            ("Bus", 0.25, URBAN),
            ("Police car (siren)", 0.15, URBAN),
            ("Bell", 0.1, ANY),
        ),
        facades=(("pastel", 0.35), ("ochre", 0.35), ("stucco", 0.3)),
        arid_share=0.35,
        mountain_share=0.3,
    ),
    Region(
        "Caribbean",
        "North America",
        ((18.47, -69.9), (23.1, -82.37), (18.0, -76.8), (18.54, -72.34), (18.47, -66.1), (10.65, -61.5)),
        _palette(
            ("Crowing, cock-a-doodle-doo", 0.35, NATURE),
            ("Frog", 0.3, NATURE),
            ("Vehicle horn, car horn, honking", 0.3, URBAN),
            ("Insect", 0.25, NATURE),
            ("Boat, Water vehicle", 0.2, ANY),
            ("Church bell", 0.1, ANY),
        ),
        facades=(("pastel", 0.6), ("stucco", 0.3), ("concrete", 0.1)),
        mountain_share=0.15,
    ),
    Region(
        "Andes and Northern South America",
        "South America",
        ((4.7, -74.07), (-12.05, -77.04), (-0.22, -78.5), (-16.5, -68.15), (10.5, -66.9), (6.25, -75.56)),
        _palette(
            ("Church bell", 0.3, ANY),
            ("Vehicle horn, car horn, honking", 0.35, URBAN),
            ("Bus", 0.3, URBAN),
            ("Crowing, cock-a-doodle-doo", 0.25, NATURE),
            ("Siren", 0.2, URBAN),
            ("Sheep", 0.15, NATURE),
        ),
        facades=(("ochre", 0.4), ("stucco", 0.35), ("adobe", 0.25)),
        arid_share=0.2,
        mountain_share=0.55,
    ),
    Region(
        "Brazil and Paraguay",
        "South America",
        ((-23.55, -46.63), (-22.9, -43.2), (-15.8, -47.9), (-12.97, -38.5), (-3.1, -60.0), (-25.3, -57.6)),
        _palette(
            ("Motorcycle", 0.35, URBAN),
            ("Insect", 0.3, NATURE),
            ("Vehicle horn, car horn, honking", 0.25, URBAN),
            ("Siren", 0.2, URBAN),
            ("Frog", 0.2, NATURE),
            ("Church bell", 0.15, ANY),
            ("Mosquito", 0.1, NATURE),
        ),
        facades=(("stucco", 0.4), ("concrete", 0.4), ("pastel", 0.2)),
        mountain_share=0.15,
    ),
    Region(
        "Southern Cone",
        "South America",
        ((-34.6, -58.4), (-33.45, -70.65), (-34.9, -56.2), (-31.4, -64.2), (-32.95, -60.65), (-41.1, -71.3)),
        _palette(
            ("Bus", 0.3, URBAN),
            ("Church bell", 0.25, ANY),
            ("Siren", 0.25, URBAN),
            ("Chirp, tweet", 0.3, NATURE),
            ("Pigeon, dove", 0.2, URBAN),
            ("Cattle, bovinae", 0.15, NATURE),
        ),
        facades=(("stucco", 0.4), ("concrete", 0.35), ("brick", 0.25)),
        arid_share=0.25,
        mountain_share=0.3,
    ),
    Region(
        "Australia and New Zealand",
        "Oceania",
        (
            (-33.87, 151.2),
            (-37.8, 144.96),
            (-27.47, 153.03),
            (-31.95, 115.86),
            (-36.85, 174.76),
            (-12.46, 130.84),
        ),
        _palette(
            ("Chirp, tweet", 0.35, NATURE),
            ("Police car (siren)", 0.3, URBAN),
            ("Insect", 0.3, NATURE),
            ("Sheep", 0.15, NATURE),
            ("Bus", 0.15, URBAN),
            ("Crow", 0.2, ANY),
            ("Boat, Water vehicle", 0.1, ANY),
        ),
        facades=(("brick", 0.4), ("timber", 0.3), ("stucco", 0.3)),
        arid_share=0.3,
        mountain_share=0.15,
    ),
    Region(
        "Pacific Islands",
        "Oceania",
        ((-18.14, 178.44), (-13.83, -171.76), (-9.44, 147.18), (-17.54, -149.57), (-22.27, 166.46)),
        _palette(
            ("Crowing, cock-a-doodle-doo", 0.35, NATURE),
            ("Insect", 0.3, NATURE),
            ("Frog", 0.2, NATURE),
            ("Boat, Water vehicle", 0.25, ANY),
            ("Church bell", 0.15, ANY),
            ("Chirp, tweet", 0.2, NATURE),
        ),
        facades=(("pastel", 0.5), ("timber", 0.3), ("concrete", 0.2)),
        mountain_share=0.3,
    ),
)
"""The regions, with every inhabited continent covered."""


@functools.cache
def region_by_name(name: str) -> Region:
    """The region called `name`; KeyError names the valid ones."""
    for region in REGIONS:
        if region.name == name:
            return region
    raise KeyError(f"unknown avg-synth region {name!r}; known: {', '.join(r.name for r in REGIONS)}")


@functools.cache
def _anchor_table() -> tuple[torch.Tensor, tuple[Region, ...]]:
    rows = [(anchor, region) for region in REGIONS for anchor in region.anchors_latlon_deg]
    latlon_deg = torch.tensor([anchor for anchor, _ in rows], dtype=torch.float64)
    return latlon_deg, tuple(region for _, region in rows)


def assign_regions(latlon_deg: torch.Tensor, continents: list[str]) -> list[Region]:
    """The region of each place: nearest anchor on the same continent (any continent if it has none).

    latlon_deg: (N, 2) degrees; continents: N Natural Earth continent names.
    """
    anchors_deg, anchor_regions = _anchor_table()
    dist_km = great_circle_km(latlon_deg.to(torch.float64)[:, None, :], anchors_deg[None, :, :])
    anchor_continents = [region.continent for region in anchor_regions]
    regions = []
    for row_km, continent in zip(dist_km, continents, strict=True):
        same = torch.tensor([c == continent for c in anchor_continents])
        # Antarctica and the open seas have no regions of their own: their places join the nearest one.
        candidate_km = torch.where(same, row_km, torch.inf) if same.any() else row_km
        regions.append(anchor_regions[int(candidate_km.argmin())])
    return regions
