"""The MLLM's response format and its strict parser.

A response is one reasoning trace and one answer, in signed decimal degrees:

    <think>Signs in French and English: this is Canada.</think><answer>45.50, -73.57</answer>

Rules (anything else is a parse failure, reported in `ParsedAnswer.error`, never raised):
- whitespace is allowed before `<think>`, between `</think>` and `<answer>`, around the numbers and after
  `</answer>`; any other text outside the two blocks is refused, since text after the answer could hold
  a second answer or reasoning that the answer ignores, and generation stops at `</answer>`;
- each of the four tags occurs exactly once, so the trace cannot hide a tag or an answer;
- the answer is `lat, lon`: two plain decimals (`48.85`, `-2`, `+0.5`; no exponent, NaN, infinity or
  N/S/E/W letters) joined by one comma, latitude in [-90, 90] and longitude in [-180, 180];
- the trace may be empty (R_align then gives its value for a trace that names no place).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_RESPONSE = re.compile(r"\s*<think>(?P<trace>.*)</think>\s*<answer>(?P<answer>.*)</answer>\s*", re.DOTALL)
_DECIMAL = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_LATLON = re.compile(rf"\s*(?P<lat>{_DECIMAL})\s*,\s*(?P<lon>{_DECIMAL})\s*")


class AnswerFormatError(ValueError):
    """`format_answer` was given a trace or coordinates that the response format cannot carry."""


@dataclass(frozen=True)
class ParsedAnswer:
    """One parsed response: the trace and the answer, or the reason it could not be read."""

    trace: str
    """The reasoning trace, stripped of surrounding whitespace ("" on a parse failure)."""
    latlon_deg: tuple[float, float] | None
    """(latitude, longitude) in degrees, None on a parse failure."""
    error: str | None
    """Why the response is malformed, None when it parsed."""

    @property
    def ok(self) -> bool:
        """Whether the response parsed."""
        return self.error is None


def parse_response(text: str) -> ParsedAnswer:
    """Read `<think>trace</think><answer>lat, lon</answer>`; malformed: `error` is set, nothing raised."""
    for tag in _TAGS:
        count = text.count(tag)
        if count != 1:
            return _failure(f"{tag} occurs {count} times; the response needs it exactly once")
    response = _RESPONSE.fullmatch(text)
    if response is None:
        return _failure("expected <think>…</think><answer>lat, lon</answer> with nothing else around them")
    latlon = _LATLON.fullmatch(response["answer"])
    if latlon is None:
        return _failure(f"answer {response['answer'].strip()!r} is not 'lat, lon' in decimal degrees")
    lat_deg, lon_deg = float(latlon["lat"]), float(latlon["lon"])
    if not (-90.0 <= lat_deg <= 90.0 and -180.0 <= lon_deg <= 180.0):
        return _failure(f"answer ({lat_deg:g}, {lon_deg:g}) is outside lat [-90, 90], lon [-180, 180]")
    return ParsedAnswer(response["trace"].strip(), (lat_deg, lon_deg), None)


def format_answer(trace: str, latlon_deg: tuple[float, float], decimals: int = 4) -> str:
    """The response `parse_response` reads back as (trace.strip(), latlon rounded to `decimals` places).

    Four decimals are about 11 m, far finer than R_geo's finest cell (level 12, about 2.3 km).
    """
    tags_in_trace = [tag for tag in _TAGS if tag in trace]
    if tags_in_trace:
        raise AnswerFormatError(f"trace contains {tags_in_trace[0]}; remove the response tags from the trace")
    lat_deg, lon_deg = latlon_deg
    if not (math.isfinite(lat_deg) and math.isfinite(lon_deg)) or abs(lat_deg) > 90 or abs(lon_deg) > 180:
        raise AnswerFormatError(
            f"latlon_deg=({lat_deg}, {lon_deg}): expected finite degrees, lat in [-90, 90], "
            "lon in [-180, 180]"
        )
    return f"<think>{trace.strip()}</think><answer>{lat_deg:.{decimals}f}, {lon_deg:.{decimals}f}</answer>"


def _failure(error: str) -> ParsedAnswer:
    return ParsedAnswer("", None, error)
