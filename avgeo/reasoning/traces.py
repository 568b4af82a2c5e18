"""Reasoning traces written from avg-synth's ground truth: the targets of the MLLM's supervised warm-up.

A tiny random language model cannot reason, so before GRPO it is taught to write responses of the right
shape from each clip's story (the manifest's extra columns, `avgeo.data.synth.build.manifest_row`):

    <think>I hear church bell and pigeon, dove. It looks temperate, urban, coastal, with stucco
    facades. That points to Portugal.</think><answer>38.7, -9.1</answer>

- **Heard**: the clip's *regional* sources (those its region's palette put there), loudest first, at
  most `MAX_SOUNDS_HEARD`; landscape sounds, distractors and confusers say nothing about the region.
  Names are AudioSet display names in lower case: capitalised, a few of them are also place names
  ("Bell", California; "Police", Poland) that `Gazetteer.find_places` would pick up.
- **Seen**: the location's look (climate, urbanity, coast, mountains, facade style).
- **Implied place**: a real place of the gazetteer that holds the answer, so that R_align is 1 for the
  target itself: the manifest's country, else the country the gazetteer puts the answer in (cities by
  a border), else the city itself (islands that the 1:110m map leaves out: Port Louis, Nassau).
  avg-synth's region names are not used: they are not gazetteer places, and some name places that do
  not hold every location of the region ("Japan and Korea").
- **Answer**: the true location rounded to 0.1 degree (`ANSWER_DECIMALS`). The story fixes a region,
  not a street, so further digits would only teach the model to write noise; rounding moves the point
  by at most 8 km, inside the true city's extent (`city_radius_km` is at least 10 km).

Each sentence has a few wordings; which one a clip gets is a function of (seed, clip_id) alone, so the
same seed always gives the same trace, and the warmed-up model is not fixed on a single string.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from avgeo.geo.gazetteer import Gazetteer, Place
from avgeo.reasoning.answer import format_answer

STORY_COLUMNS = (
    "clip_id",
    "lat",
    "lon",
    "place",
    "country",
    "climate",
    "urbanity",
    "coast",
    "mountains",
    "facade",
    "source_names",
    "source_roles",
)
"""The manifest columns a trace is written from (avg-synth's story columns among them)."""

MAX_SOUNDS_HEARD = 2
"""Most regional sources a trace names; more would lengthen it without adding much."""

ANSWER_DECIMALS = 1
"""Decimals of the answer's degrees (0.1 degree is about 11 km)."""

_HEARD = ("I hear {sounds}.", "Heard: {sounds}.")
_NOTHING_HEARD = ("No regional sound stands out.", "I hear nothing regional.")
_SEEN = ("It looks {look}.", "The scene is {look}.")
_IMPLIED = ("That points to {place}.", "This suggests {place}.", "So, {place}.")


class TraceError(ValueError):
    """A manifest row that no trace can be written for; the message names the clip and the fix."""


def answer_latlon_deg(story_row: Mapping[str, Any]) -> tuple[float, float]:
    """The answer a trace ends with: the row's (lat, lon) rounded to `ANSWER_DECIMALS` places, degrees."""
    # + 0.0 turns a rounded -0.0 into 0.0, which reads better in the answer.
    lat_deg, lon_deg = (round(float(story_row[key]), ANSWER_DECIMALS) + 0.0 for key in ("lat", "lon"))
    return lat_deg, lon_deg


def implied_place(story_row: Mapping[str, Any], gazetteer: Gazetteer) -> Place:
    """The place a trace names: the first of the row's country, the gazetteer's country of the answer
    and the row's city (`place`) that holds `answer_latlon_deg(story_row)`."""
    answer = answer_latlon_deg(story_row)
    named_country = gazetteer.lookup(story_row["country"])
    candidates = [
        named_country if named_country is not None and named_country.kind == "country" else None,
        gazetteer.country_of(answer),
        gazetteer.lookup(story_row["place"]),
    ]
    for place in candidates:
        if place is not None and gazetteer.contains(place, answer):
            return place
    raise TraceError(
        f"{story_row['clip_id']}: no country of the gazetteer holds ({answer[0]}, {answer[1]}) and the city "
        f"{story_row['place']!r} is not in it; load the gazetteer with a lower min_city_population"
    )


def reasoning_trace(story_row: Mapping[str, Any], gazetteer: Gazetteer, seed: int = 0) -> str:
    """The trace (what is heard, what is seen, the place implied) of a manifest row with avg-synth's
    story columns (`STORY_COLUMNS`); deterministic in (seed, clip_id)."""
    missing = [name for name in STORY_COLUMNS if story_row.get(name) is None]
    if missing:
        raise TraceError(
            f"{story_row.get('clip_id', '<no clip_id>')}: no {', '.join(missing)} in the manifest row; "
            "traces are written from avg-synth's story columns: build the data with `avgeo synth`"
        )
    rng = random.Random(f"{seed}/{story_row['clip_id']}")
    regional = [
        name.lower()
        for name, role in zip(story_row["source_names"], story_row["source_roles"], strict=True)
        if role == "regional"
    ]
    sounds = list(dict.fromkeys(regional))[:MAX_SOUNDS_HEARD]
    heard = rng.choice(_HEARD).format(sounds=" and ".join(sounds)) if sounds else rng.choice(_NOTHING_HEARD)
    look = [story_row["climate"], story_row["urbanity"]]
    look += ["coastal"] * bool(story_row["coast"]) + ["mountainous"] * bool(story_row["mountains"])
    seen = rng.choice(_SEEN).format(look=f"{', '.join(look)}, with {story_row['facade']} facades")
    # A name ending in a period ("Central African Rep.") ends the sentence with it.
    implied = rng.choice(_IMPLIED).format(place=implied_place(story_row, gazetteer).name).replace("..", ".")
    return f"{heard} {seen} {implied}"


def target_response(story_row: Mapping[str, Any], gazetteer: Gazetteer, seed: int = 0) -> str:
    """The whole warm-up target: `<think>reasoning_trace</think><answer>lat, lon</answer>`."""
    return format_answer(
        reasoning_trace(story_row, gazetteer, seed), answer_latlon_deg(story_row), decimals=ANSWER_DECIMALS
    )
