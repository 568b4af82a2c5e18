"""The gazetteer on the real Natural Earth polygons and GeoNames cities: names, extents, edge cases."""

import dataclasses
import json
import math

import numpy as np
import pytest
import shapely
import shapely.geometry

from avgeo.geo.gazetteer import (
    COAST_TOLERANCE_KM,
    COUNTRIES_GEOJSON,
    COUNTRY_ALIASES,
    Gazetteer,
    Place,
    city_radius_km,
)
from avgeo.geo.s2cells import GeoInputError
from avgeo.geo.sphere import EARTH_RADIUS_KM

KM_PER_DEGREE_LAT = EARTH_RADIUS_KM * math.pi / 180.0

NATURAL_EARTH_CONTINENTS = {
    "Africa", "Antarctica", "Asia", "Europe", "North America", "Oceania", "Seven seas (open ocean)",
    "South America",
}  # fmt: skip


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.load()


@pytest.fixture(scope="module")
def polygons() -> dict[str, shapely.Geometry]:
    """The raw Natural Earth polygons, read here independently of the gazetteer."""
    features = json.loads(COUNTRIES_GEOJSON.read_text(encoding="utf-8"))["features"]
    return {f["properties"]["name"]: shapely.geometry.shape(f["geometry"]) for f in features}


def names(places: list[Place]) -> list[str]:
    return [place.name for place in places]


# ---- the places ----


def test_load_is_built_once_per_process_and_value(gazetteer):
    assert Gazetteer.load() is gazetteer
    assert Gazetteer.load(15000) is gazetteer
    assert Gazetteer.load(min_city_population=15000) is gazetteer


def test_countries_and_continents_are_natural_earths(gazetteer, polygons):
    assert len(gazetteer.countries) == 177
    assert set(names(gazetteer.countries)) == set(polygons)
    assert set(names(gazetteer.continents)) == NATURAL_EARTH_CONTINENTS
    assert {country.continent for country in gazetteer.countries} == NATURAL_EARTH_CONTINENTS
    for continent in gazetteer.continents:
        assert (
            continent.kind == "continent"
            and continent.country == ""
            and continent.continent == continent.name
        )
        members = [country for country in gazetteer.countries if country.continent == continent.name]
        assert continent.population == sum(country.population for country in members)
    assert gazetteer.places == [*gazetteer.continents, *gazetteer.countries, *gazetteer.cities()]


def test_cities_are_geonames_cities_largest_first(gazetteer):
    cities = gazetteer.cities()
    assert len(cities) > 30000
    populations = [city.population for city in cities]
    assert populations == sorted(populations, reverse=True)
    assert all(city.kind == "city" and city.continent in NATURAL_EARTH_CONTINENTS for city in cities)
    assert all(city.population >= 1_000_000 for city in gazetteer.cities(min_population=1_000_000))
    # National capitals stay even when small, as in GeoNames' own cities15000 list.
    valletta = gazetteer.lookup("Valletta")
    assert valletta.population < 15000 and valletta.country == "Malta" and valletta.continent == "Europe"


def test_a_larger_minimum_population_keeps_a_subset(gazetteer):
    big = Gazetteer.load(min_city_population=2_000_000)
    assert big is not gazetteer
    assert set(big.cities()) <= set(gazetteer.cities())
    assert {city for city in gazetteer.cities() if city.population >= 2_000_000} <= set(big.cities())
    assert big.countries == gazetteer.countries


@pytest.mark.parametrize("bad", [-1, 1.5, "15000", True])
def test_load_rejects_a_bad_minimum_population(bad):
    with pytest.raises(GeoInputError, match="min_city_population"):
        Gazetteer.load(bad)


def test_places_are_frozen_and_hashable(gazetteer):
    paris = gazetteer.lookup("Paris")
    with pytest.raises(dataclasses.FrozenInstanceError):
        paris.name = "Lutetia"  # type: ignore[misc]
    assert {paris, gazetteer.lookup("Paris")} == {paris}


# ---- France and Norway (iso_a3 = -99 in Natural Earth) ----


def test_france_and_norway_are_matched_by_name_despite_iso_minus_99(gazetteer):
    france, norway = gazetteer.lookup("France"), gazetteer.lookup("Norway")
    assert (france.kind, france.continent) == ("country", "Europe")
    assert gazetteer.lookup("FRA") == gazetteer.lookup("fr") == france
    assert gazetteer.lookup("NOR") == gazetteer.lookup("NO") == norway
    paris, oslo = gazetteer.lookup("Paris"), gazetteer.lookup("Oslo")
    assert paris.country == "France" and oslo.country == "Norway"
    assert gazetteer.country_of(paris.latlon_deg) == france
    assert gazetteer.country_of(oslo.latlon_deg) == norway
    assert gazetteer.contains(france, paris.latlon_deg) and not gazetteer.contains(norway, paris.latlon_deg)


def test_a_country_point_is_inside_its_largest_polygon(gazetteer, polygons):
    for country in gazetteer.countries:
        assert gazetteer.country_of(country.latlon_deg) == country, country.name
    # France's point is in metropolitan France, not in French Guiana.
    lat, lon = gazetteer.lookup("France").latlon_deg
    assert 42 < lat < 51 and -5 < lon < 8


# ---- extents ----


def test_the_methods_example_canada_does_not_contain_a_point_in_the_usa(gazetteer):
    canada = gazetteer.find_places("The maple trees and French signs point to Canada.")
    assert names(canada) == ["Canada"]
    kansas_city_deg, winnipeg_deg = (39.1, -94.58), (49.9, -97.14)
    assert not gazetteer.contains(canada[0], kansas_city_deg)
    assert gazetteer.contains(canada[0], winnipeg_deg)
    assert gazetteer.country_of(kansas_city_deg).name == "United States of America"


@pytest.mark.parametrize(
    ("latlon_deg", "country"),
    [
        ((-17.8, 178.0), "Fiji"),  # Viti Levu
        ((-16.3, 179.9), "Fiji"),  # Vanua Levu, west of the antimeridian
        ((-16.2, -179.9), "Fiji"),  # Vanua Levu, east of it
        ((-16.2, 180.1), "Fiji"),  # the same place written past 180°
        ((64.73, 177.5), "Russia"),  # Anadyr
        ((66.0, -175.0), "Russia"),  # Chukotka east of the antimeridian
        ((67.0, 180.0), "Russia"),
        ((67.0, -180.0), "Russia"),
        ((67.0, 540.0), "Russia"),
        ((64.5, -165.4), "United States of America"),  # Nome, across the Bering Strait
    ],
)
def test_points_near_the_antimeridian(gazetteer, latlon_deg, country):
    assert gazetteer.country_of(latlon_deg).name == country


@pytest.mark.parametrize(
    ("city", "country"),
    [("Recife", "Brazil"), ("Istanbul", "Turkey"), ("Montevideo", "Uruguay"), ("Durban", "South Africa")],
)
def test_coastal_cities_outside_the_coarse_polygons_get_the_nearest_country(
    gazetteer, polygons, city, country
):
    lat, lon = gazetteer.lookup(city).latlon_deg
    assert not polygons[country].intersects(shapely.Point(lon, lat))  # the 1:110m coast misses the city
    assert gazetteer.country_of((lat, lon)).name == country


def test_the_coast_tolerance_is_measured_in_km(gazetteer, polygons):
    coast = np.array(polygons["Brazil"].exterior.coords)
    east_lon, east_lat = coast[np.argmax(coast[:, 0])]  # Cabo Branco: open Atlantic to the east
    km_per_degree_lon = KM_PER_DEGREE_LAT * math.cos(math.radians(east_lat))
    inside_tolerance = (east_lat, east_lon + (COAST_TOLERANCE_KM - 5) / km_per_degree_lon)
    beyond_tolerance = (east_lat, east_lon + (COAST_TOLERANCE_KM + 5) / km_per_degree_lon)
    assert gazetteer.country_of(inside_tolerance).name == "Brazil"
    assert gazetteer.country_of(beyond_tolerance) is None


def test_open_sea_has_no_country(gazetteer):
    for sea_deg in [(0.0, -140.0), (30.0, -40.0), (-50.0, 90.0), (89.9, 0.0)]:
        assert gazetteer.country_of(sea_deg) is None


def test_continents_are_unions_of_their_countries(gazetteer):
    europe, asia = gazetteer.lookup("Europe"), gazetteer.lookup("Asia")
    paris, beijing = gazetteer.lookup("Paris").latlon_deg, gazetteer.lookup("Beijing").latlon_deg
    novosibirsk = gazetteer.lookup("Novosibirsk").latlon_deg
    assert gazetteer.contains(europe, paris) and not gazetteer.contains(europe, beijing)
    assert gazetteer.contains(asia, beijing) and not gazetteer.contains(asia, paris)
    assert gazetteer.contains(europe, novosibirsk)  # Natural Earth puts all of Russia in Europe
    assert not gazetteer.contains(europe, (0.0, -140.0))
    for continent in gazetteer.continents:
        assert gazetteer.contains(continent, continent.latlon_deg), continent.name


def test_contains_many_agrees_with_contains_and_country_of(gazetteer):
    rng = np.random.default_rng(0)
    points_deg = np.column_stack((rng.uniform(-60, 75, 300), rng.uniform(-180, 180, 300)))
    countries = gazetteer.countries_of(points_deg)
    assert len(countries) == len(points_deg)
    for place in [gazetteer.lookup("Brazil"), gazetteer.lookup("Africa"), gazetteer.lookup("Moscow")]:
        flags = gazetteer.contains_many(place, points_deg)
        assert flags.shape == (300,) and flags.dtype == bool
        assert flags[:40].tolist() == [gazetteer.contains(place, tuple(point)) for point in points_deg[:40]]
        if place.kind == "country":
            assert flags.tolist() == [country == place for country in countries]
        if place.kind == "continent":
            assert flags.tolist() == [
                country is not None and country.continent == place.name for country in countries
            ]
    assert sum(country is not None for country in countries) > 50  # the sample does hit land


def test_city_radius_rule():
    assert city_radius_km(0) == city_radius_km(15000) == 10.0
    assert city_radius_km(100_000) == pytest.approx(10.0)
    assert city_radius_km(1_000_000) == pytest.approx(10 * 10**0.4)
    assert city_radius_km(30_000_000) == 60.0
    radii = [city_radius_km(population) for population in np.logspace(3, 8, 50).astype(int)]
    assert radii == sorted(radii)


def test_a_city_holds_points_within_its_radius(gazetteer):
    for city in [gazetteer.lookup("Tokyo"), gazetteer.lookup("Nice"), gazetteer.lookup("Valletta")]:
        lat, lon = city.latlon_deg
        step_deg = city_radius_km(city.population) / KM_PER_DEGREE_LAT
        assert gazetteer.contains(city, (lat, lon))
        assert gazetteer.contains(city, (lat + 0.99 * step_deg, lon))
        assert not gazetteer.contains(city, (lat + 1.01 * step_deg, lon))


def test_unknown_places_and_bad_points_raise_typed_errors(gazetteer):
    atlantis = Place("Atlantis", "country", (0.0, -30.0), "Atlantis", "Europe", 0)
    with pytest.raises(GeoInputError, match="'Atlantis' is not a Natural Earth country"):
        gazetteer.contains(atlantis, (0.0, -30.0))
    mu = Place("Mu", "continent", (0.0, -150.0), "", "Mu", 0)
    with pytest.raises(GeoInputError, match="'Mu' is not a Natural Earth continent"):
        gazetteer.contains_many(mu, np.zeros((3, 2)))
    with pytest.raises(GeoInputError, match="latitude 120 outside"):
        gazetteer.country_of((120.0, 10.0))


# ---- names ----


def test_lookup_takes_any_alias_case_and_accents(gazetteer):
    usa = gazetteer.lookup("United States of America")
    for alias in ["USA", "usa", "U.S.A.", "United States", "united states", "US"]:
        assert gazetteer.lookup(alias) == usa, alias
    assert gazetteer.lookup("Sao Paulo") == gazetteer.lookup("São Paulo")
    assert gazetteer.lookup("Sao Paulo").country == "Brazil"
    assert gazetteer.lookup("Bombay").name == "Mumbai"
    assert gazetteer.lookup("Cologne").name == "Köln"
    assert gazetteer.lookup("Ivory Coast").name == "Côte d'Ivoire"
    assert gazetteer.lookup("Qwertyville") is None and gazetteer.lookup("") is None


def test_shared_names_go_to_the_bigger_kind_then_the_larger_population(gazetteer):
    assert gazetteer.lookup("Luxembourg").kind == "country"
    assert gazetteer.lookup("Mexico").kind == "country" and gazetteer.lookup("Mexico City").kind == "city"
    assert gazetteer.lookup("Paris").country == "France"  # not Paris, Texas
    assert gazetteer.lookup("London").country == "United Kingdom"  # not London, Ontario
    assert gazetteer.lookup("Antarctica").kind == "continent"


def test_every_country_and_continent_is_found_by_its_name(gazetteer):
    for place in [*gazetteer.countries, *gazetteer.continents]:
        found = gazetteer.find_places(f"Somewhere in {place.name}, probably.")
        assert names(found) == [place.name], place.name


def test_every_country_alias_is_found(gazetteer):
    for country, aliases in COUNTRY_ALIASES.items():
        for alias in aliases:
            assert names(gazetteer.find_places(f"I think this is {alias}.")) == [country], alias


def test_the_largest_cities_are_found_by_their_names(gazetteer):
    for city in gazetteer.cities()[:500]:
        (found,) = gazetteer.find_places(f"It sounds like {city.name}.")
        # A namesake may win the name, but only a bigger one.
        assert found == city or (found.name == city.name and found.population >= city.population), city


def test_find_places_in_a_reasoning_trace(gazetteer):
    trace = (
        "Portuguese speech, trams and azulejo tiles suggest Lisbon, Portugal, though Sao Paulo in Brazil "
        "is possible. Not Papua New Guinea; Guinea-Bissau and Côte d’Ivoire are unlikely, as is the U.S.A. "
        "Portugal's capital fits best: Lisbon."
    )
    assert names(gazetteer.find_places(trace)) == [
        "Lisbon", "Portugal", "São Paulo", "Brazil", "Papua New Guinea", "Guinea-Bissau", "Côte d'Ivoire",
        "United States of America",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nice weather and a mobile phone while reading", []),
        ("a long beach near a green bay", []),
        ("Nice, Mobile and Reading", ["Nice", "Mobile", "Reading"]),
        ("Long Beach and Green Bay", ["Long Beach", "Green Bay"]),
        ("NEW YORK CITY or New york", ["New York City"]),
        ("new york", []),
        ("Parisian cafés", []),
        ("Papua New Guinea", ["Papua New Guinea"]),
        ("Guinea", ["Guinea"]),
        ("Mexico City, Mexico", ["Mexico City", "Mexico"]),
        ("Canada's north", ["Canada"]),
        ("St. Louis", ["St. Louis"]),
        ("Paris, Texas", ["Paris"]),
        ("", []),
    ],
)
def test_find_places_matching_rules(gazetteer, text, expected):
    assert names(gazetteer.find_places(text)) == expected


def test_find_places_does_not_join_words_across_punctuation(gazetteer):
    # "New York" is a name, but a comma between the words ends it.
    assert names(gazetteer.find_places("a New, York-like street")) == []


def test_codes_and_shouted_words_do_not_match_in_text(gazetteer):
    # ISO codes are lookup-only; a word in capitals only matches an acronym ("CAN" is not Çan, Turkey).
    assert gazetteer.find_places("CAN ARE PER FRA IN NO PARIS NICE") == []
    assert gazetteer.lookup("CAN").name == "Canada"
    assert names(gazetteer.find_places("Can, Eswatini, eSwatini")) == ["Çan", "eSwatini"]
