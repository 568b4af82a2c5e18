"""Per-clip scenes: when and how a location is filmed, and which sounds are heard at which levels.

A scene is the ground-truth "story" of a clip. Its sounds come from four pools:
- regional: the location's region palette (informative, often quiet);
- landscape: what its landscape and weather make audible anywhere (surf on a coast, traffic in town,
  crickets at a tropical night, rain), as aliased as the frames;
- distractors: heard everywhere (speech, footsteps, a crowd, a dog), often loudest;
- confuser: now and then one regional sound of another, random region that the location's own
  region never makes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from avgeo.data.audioset import AudioSetClass, class_by_name
from avgeo.data.synth.config import AudioKnobs
from avgeo.data.synth.regions import ANY, NATURE, REGIONS, URBAN, SourceRule
from avgeo.data.synth.world import CLIMATES, SCENE_STREAM, Climate, Landscape, SynthLocation, keyed_rng

Weather = Literal["clear", "cloudy", "rain", "fog", "snow"]
Role = Literal["regional", "landscape", "distractor", "confuser"]

WEATHERS: tuple[Weather, ...] = ("clear", "cloudy", "rain", "fog", "snow")
_WEATHER_PROBS = {
    "tropical": (0.45, 0.25, 0.25, 0.05, 0.0),
    "arid": (0.75, 0.15, 0.03, 0.07, 0.0),
    "temperate": (0.35, 0.35, 0.2, 0.1, 0.0),
    "cold": (0.3, 0.3, 0.1, 0.1, 0.2),
}

# How likely an "urban" or "nature" source is, relative to its palette probability, by urbanity.
_SETTING_SCALE = {
    URBAN: {"urban": 1.0, "suburban": 0.6, "rural": 0.25},
    NATURE: {"urban": 0.4, "suburban": 0.8, "rural": 1.0},
    ANY: {"urban": 1.0, "suburban": 1.0, "rural": 1.0},
}

DISTRACTORS = (
    "Speech",
    "Walk, footsteps",
    "Crowd",
    "Children playing",
    "Dog",
    "Car",
    "Car passing by",
)
"""AudioSet classes heard everywhere, whatever the place."""

MAX_ZOOM = 1.4
"""Largest camera zoom factor over the full view."""


@dataclass(frozen=True)
class Source:
    """One sound in a clip's mix."""

    audioset_class: AudioSetClass
    """What it is."""
    role: Role
    """Why it is there (regional, landscape, distractor, confuser)."""
    gain_db: float
    """Level in dB relative to the sound bank's render level (`REFERENCE_RMS`, -20 dBFS)."""
    onset_s: float
    """When it starts, seconds from the clip start."""
    duration_s: float
    """How long it lasts, seconds."""


@dataclass(frozen=True)
class ClipScene:
    """Everything a clip is rendered from."""

    clip_id: str
    """"loc0042_c07": location id and clip number."""
    location: SynthLocation
    """Where."""
    clip_index: int
    """Number of the clip within its location."""
    time_of_day_h: float
    """Local solar time, hours in [0, 24)."""
    weather: Weather
    """clear, cloudy, rain, fog or snow."""
    pan_start: float
    """Camera centre at the first frame, as a fraction of the location's panorama width."""
    pan_end: float
    """Camera centre at the last frame, same units."""
    zoom_start: float
    """Zoom at the first frame (1 shows the panorama's full height)."""
    zoom_end: float
    """Zoom at the last frame."""
    sources: tuple[Source, ...]
    """The sounds, loudest first."""
    render_seed: int
    """Seeds the pixel noise, rain streaks and the sound bank's renders of this clip."""


def sample_scene(
    location: SynthLocation, clip_index: int, duration_s: float, knobs: AudioKnobs, seed: int
) -> ClipScene:
    """Clip `clip_index` of `location`: a function of (seed, location index, clip_index) alone."""
    rng = keyed_rng(seed, SCENE_STREAM, location.index, clip_index)
    landscape = location.landscape
    time_of_day_h = _time_of_day_h(rng)
    weather = WEATHERS[rng.choice(len(WEATHERS), p=_WEATHER_PROBS[landscape.climate])]
    pan_start, pan_end = rng.uniform(0.2, 0.8, size=2)
    zoom_start, zoom_end = rng.uniform(1.0, MAX_ZOOM, size=2)
    night = time_of_day_h < 6 or time_of_day_h >= 20
    picks: list[tuple[SourceRule, Role, tuple[float, float]]] = []
    for rule in location.region.palette:
        if rng.random() < knobs.regional_presence * _scaled_prob(rule, landscape):
            picks.append((rule, "regional", knobs.regional_gain_db))
    for rule in landscape_rules(landscape.climate, landscape.coast, landscape.mountains, weather, night):
        if rng.random() < _scaled_prob(rule, landscape):
            picks.append((rule, "landscape", knobs.landscape_gain_db))
    low, high = knobs.distractors_per_clip
    for name in rng.choice(DISTRACTORS, size=int(rng.integers(low, high + 1)), replace=False):
        picks.append((SourceRule(str(name), 1.0), "distractor", knobs.distractor_gain_db))
    if rng.random() < knobs.confuser_prob:
        # A sound the location's own region never makes, and that the clip does not already hold.
        excluded = {rule.name for rule, _, _ in picks} | {rule.name for rule in location.region.palette}
        others = [r for r in REGIONS if r is not location.region]
        palette = [rule for rule in others[rng.integers(len(others))].palette if rule.name not in excluded]
        if palette:
            weights = np.array([rule.prob for rule in palette])
            picks.append(
                (
                    palette[rng.choice(len(palette), p=weights / weights.sum())],
                    "confuser",
                    knobs.regional_gain_db,
                )
            )
    sources = [
        _place_in_time(rule, role, gain_range_db, duration_s, rng) for rule, role, gain_range_db in picks
    ]
    return ClipScene(
        clip_id=f"{location.location_id}_c{clip_index:02d}",
        location=location,
        clip_index=clip_index,
        time_of_day_h=time_of_day_h,
        weather=weather,
        pan_start=float(pan_start),
        pan_end=float(pan_end),
        zoom_start=float(zoom_start),
        zoom_end=float(zoom_end),
        sources=tuple(sorted(sources, key=lambda s: -s.gain_db)),
        render_seed=int(rng.integers(2**63)),
    )


def landscape_rules(
    climate: Climate, coast: bool, mountains: bool, weather: Weather, night: bool
) -> list[SourceRule]:
    """Sounds any place with this look, weather and time may have: they alias like the frames do."""
    rules = [SourceRule("Traffic noise, roadway noise", 0.8, URBAN)]
    if coast:
        rules.append(SourceRule("Waves, surf", 0.7))
    if mountains:
        rules.append(SourceRule("Stream", 0.25, NATURE))
    if climate in ("tropical", "temperate"):
        rules.append(SourceRule("Bird vocalization, bird call, bird song", 0.15 if night else 0.5, NATURE))
        rules.append(SourceRule("Rustling leaves", 0.25, NATURE))
        cricket_prob = {"tropical": (0.35, 0.7), "temperate": (0.1, 0.4)}[climate][int(night)]
        rules.append(SourceRule("Cricket", cricket_prob, NATURE))
    else:
        rules.append(SourceRule("Wind", 0.5))
    if weather == "rain":
        rules.append(SourceRule("Rain", 1.0))
        rules.append(SourceRule("Thunder", 0.3 if climate == "tropical" else 0.1))
    return rules


def heard_class_names() -> list[str]:
    """Every AudioSet class a scene can contain (the sound bank must render them all), sorted."""
    names = {rule.name for region in REGIONS for rule in region.palette} | set(DISTRACTORS)
    for look_and_time in itertools.product(CLIMATES, (False, True), (False, True), WEATHERS, (False, True)):
        names |= {rule.name for rule in landscape_rules(*look_and_time)}
    return sorted(names)


def _scaled_prob(rule: SourceRule, landscape: Landscape) -> float:
    return rule.prob * _SETTING_SCALE[rule.setting][landscape.urbanity]


def _time_of_day_h(rng: np.random.Generator) -> float:
    """Mostly daytime, as filmed footage is; some twilight and night."""
    kind = rng.choice(3, p=(0.75, 0.15, 0.1))
    if kind == 0:
        return float(rng.uniform(7.0, 18.0))
    if kind == 1:
        dawn_h = float(rng.uniform(5.0, 7.0))
        return dawn_h if rng.random() < 0.5 else dawn_h + 13.0
    return float(rng.uniform(20.0, 29.0) % 24.0)


def _place_in_time(
    rule: SourceRule,
    role: Role,
    gain_range_db: tuple[float, float],
    duration_s: float,
    rng: np.random.Generator,
) -> Source:
    """Landscape sounds last the whole clip; the others are events covering 35-100% of it."""
    length_s = duration_s if role == "landscape" else duration_s * float(rng.uniform(0.35, 1.0))
    return Source(
        audioset_class=class_by_name(rule.name),
        role=role,
        gain_db=float(rng.uniform(*gain_range_db)),
        onset_s=float(rng.uniform(0.0, duration_s - length_s)),
        duration_s=length_s,
    )
