"""The response parser: well-formed responses, each kind of malformed one, the format_answer round trip."""

import math

import pytest
import torch

from avgeo.geo.sphere import sample_uniform, xyz_to_latlon
from avgeo.reasoning.answer import AnswerFormatError, format_answer, parse_response


def test_reads_trace_and_answer():
    parsed = parse_response("<think>Signs in French: this is Paris.</think><answer>48.85, 2.35</answer>")
    assert parsed.ok and parsed.error is None
    assert parsed.trace == "Signs in French: this is Paris."
    assert parsed.latlon_deg == (48.85, 2.35)


@pytest.mark.parametrize(
    ("text", "latlon_deg"),
    [
        ("  <think>\n a\n b \n</think>\n\n<answer>  -33.9 ,151.2 </answer>\n", (-33.9, 151.2)),
        ("<think>x</think><answer>+0.5,-0</answer>", (0.5, 0.0)),
        ("<think>x</think><answer>90, -180</answer>", (90.0, -180.0)),
        ("<think>x</think><answer>-90., .25</answer>", (-90.0, 0.25)),
        ("<think></think><answer>1, 2</answer>", (1.0, 2.0)),
    ],
)
def test_tolerates_whitespace_signs_and_bare_decimals(text, latlon_deg):
    parsed = parse_response(text)
    assert parsed.ok, parsed.error
    assert parsed.latlon_deg == latlon_deg


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("48.85, 2.35", "<think> occurs 0 times"),
        ("<think>a</think>", "<answer> occurs 0 times"),
        ("<think>a <think> b</think><answer>1, 2</answer>", "<think> occurs 2 times"),
        ("<think>a</think><answer>1, 2</answer><answer>3, 4</answer>", "<answer> occurs 2 times"),
        ("<think>a</think><answer>1, 2</answer> so Lyon", "nothing else around them"),
        ("Sure! <think>a</think><answer>1, 2</answer>", "nothing else around them"),
        ("<think>a</think> Paris <answer>1, 2</answer>", "nothing else around them"),
        ("<answer>1, 2</answer><think>a</think>", "nothing else around them"),
        ("<think>a</think><answer>nan, 2</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>inf, 2</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>1e1, 2</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>48.85N, 2.35E</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>48.85 2.35</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>1, 2, 3</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer></answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>Paris</answer>", "is not 'lat, lon'"),
        ("<think>a</think><answer>90.01, 0</answer>", "outside"),
        ("<think>a</think><answer>0, -180.5</answer>", "outside"),
    ],
)
def test_malformed_responses_are_failures_with_a_reason_not_exceptions(text, reason):
    parsed = parse_response(text)
    assert not parsed.ok
    assert parsed.latlon_deg is None and parsed.trace == ""
    assert reason in parsed.error


def test_format_then_parse_round_trips_on_random_points_and_traces():
    latlon_deg = xyz_to_latlon(sample_uniform(500, torch.Generator().manual_seed(3), dtype=torch.float64))
    extremes = torch.tensor([[90.0, 180.0], [-90.0, -180.0], [0.0, -0.0], [-1e-9, 179.99996]])
    traces = ["", "  padded trace \n", "Multi\nline: São Paulo, 'quoted' <b>html</b>", "Canada, 45° N"]
    for index, (lat_deg, lon_deg) in enumerate(torch.cat([latlon_deg, extremes]).tolist()):
        trace = traces[index % len(traces)]
        text = format_answer(trace, (lat_deg, lon_deg))
        parsed = parse_response(text)
        assert parsed.ok, (text, parsed.error)
        assert parsed.trace == trace.strip()
        assert math.isclose(parsed.latlon_deg[0], lat_deg, abs_tol=0.5e-4)
        assert math.isclose(parsed.latlon_deg[1], lon_deg, abs_tol=0.5e-4)
        # Formatting the parsed answer again gives the same text: one spelling per rounded point.
        assert format_answer(parsed.trace, parsed.latlon_deg) == text


def test_format_keeps_the_decimals_asked_for():
    text = format_answer("t", (48.856613, 2.352222), decimals=2)
    assert text == "<think>t</think><answer>48.86, 2.35</answer>"


@pytest.mark.parametrize(
    ("trace", "latlon_deg"),
    [
        ("a </think> b", (0.0, 0.0)),
        ("<answer>1, 2</answer>", (0.0, 0.0)),
        ("ok", (91.0, 0.0)),
        ("ok", (0.0, 180.5)),
        ("ok", (math.nan, 0.0)),
        ("ok", (0.0, math.inf)),
    ],
)
def test_format_refuses_what_the_format_cannot_carry(trace, latlon_deg):
    with pytest.raises(AnswerFormatError):
        format_answer(trace, latlon_deg)
