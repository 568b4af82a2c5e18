"""Struck metal: church bells, small bells, bicycle bells and gongs, as sums of decaying partials.

A bell's identity lies in its partial ratios (a church bell's hum, prime, minor-third tierce, quint and
nominal), their decay times, and how it is rung (tolled, pealed, shaken, flicked twice).
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import attack_decay, overlay, poisson_onsets, regular_onsets
from avgeo.data.soundbank.synthesis import SoundGenerator, decaying_partials, echo, filter_band, white_noise

_CHURCH_RATIOS = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.67, 3.0, 4.0])
"""Partials of a tuned church bell relative to its prime: hum, prime, tierce, quint, nominal, ..."""
_CHURCH_AMPLITUDES = np.array([0.5, 0.6, 0.8, 0.4, 1.0, 0.6, 0.5, 0.6, 0.5])
_CHURCH_T60_S = np.array([14.0, 8.0, 6.0, 4.0, 4.0, 2.5, 2.0, 1.5, 1.0])
"""For a 250 Hz prime; smaller (higher) bells ring shorter."""

_MAJOR_SCALE = np.array([1.0, 9 / 8, 5 / 4, 4 / 3, 3 / 2, 5 / 3, 15 / 8, 2.0])


def _strike(
    length: int,
    sample_rate: int,
    freqs_hz: np.ndarray,
    amplitudes: np.ndarray,
    t60_s: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(length,) one strike: the partials (each doubled by a slightly detuned twin, as real bells are
    not perfectly round, which makes them beat) plus the clapper's click."""
    detune = 1.0 + rng.normal(0.0, 0.004, freqs_hz.size)
    twin = detune * (1.0 + rng.uniform(0.0005, 0.004, freqs_hz.size))
    freqs = np.concatenate((freqs_hz * detune, freqs_hz * twin))
    amps = np.concatenate((amplitudes, 0.5 * amplitudes)) * rng.uniform(0.7, 1.0, 2 * freqs_hz.size)
    phases = rng.uniform(0.0, 2.0 * np.pi, freqs.size)
    ring = decaying_partials(length, sample_rate, freqs, amps, np.concatenate((t60_s, t60_s)), phases)
    click_length = min(length, int(0.004 * sample_rate))
    click = white_noise(click_length, rng) * attack_decay(click_length, sample_rate, 0.0003, 0.004)
    ring[:click_length] += 0.3 * float(amps.max()) * click
    return ring


def church_bell(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A big tuned bell tolled every 1.8-3 s, or a peal of four to six bells rung in rounds, from afar."""
    out = np.zeros(n, dtype=np.float32)
    if rng.random() < 0.5:
        prime_hz = rng.uniform(180, 450)
        t60_s = _CHURCH_T60_S * (250.0 / prime_hz) ** 0.7
        length = min(n, int(t60_s.max() * sample_rate))
        bell = _strike(length, sample_rate, prime_hz * _CHURCH_RATIOS, _CHURCH_AMPLITUDES, t60_s, rng)
        for onset in regular_onsets(n, sample_rate, rng.uniform(1.8, 3.0), 0.05, rng):
            overlay(out, onset, bell, rng.uniform(0.8, 1.0))
    else:
        tenor_hz = rng.uniform(280, 420)
        count = int(rng.integers(4, 7))
        interval = int(rng.uniform(0.22, 0.35) * sample_rate)
        bells = []
        for step in _MAJOR_SCALE[:count][::-1]:  # rounds run from the treble down to the tenor
            prime_hz = tenor_hz * step
            t60_s = _CHURCH_T60_S * (250.0 / prime_hz) ** 0.7 * 0.5
            length = min(n, int(3.0 * sample_rate))
            bells.append(
                _strike(length, sample_rate, prime_hz * _CHURCH_RATIOS, _CHURCH_AMPLITUDES, t60_s, rng)
            )
        onset = int(rng.integers(max(1, min(interval * count, n // 2))))
        ring = 0
        while onset < n:
            overlay(out, onset, bells[ring % count], rng.uniform(0.7, 1.0))
            ring += 1
            # Change ringers leave a gap (the "handstroke gap") after every full round.
            onset += interval * (2 if ring % count == 0 else 1)
    distant = filter_band(out, sample_rate, 80.0, 8000.0)
    return echo(distant, sample_rate, (0.19, 0.47), (0.3, 0.15))


def bell(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A hand or tower bell (prime 0.5-1.2 kHz, bright inharmonic partials, 2.5-4 s ring) swung
    steadily every 0.5-1 s, or shaken in bursts, so its rings overlap into a shimmering wash."""
    prime_hz = rng.uniform(500, 1200)
    ratios = np.array([1.0, 2.32, 3.02, 4.13, 5.4, 6.8, 8.3]) * (1.0 + rng.normal(0.0, 0.01, 7))
    amplitudes = np.array([1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
    t60_s = rng.uniform(2.5, 4.0) / ratios**0.5
    length = min(n, int(t60_s.max() * sample_rate))
    strike = _strike(length, sample_rate, prime_hz * ratios, amplitudes, t60_s, rng)
    out = np.zeros(n, dtype=np.float32)
    if rng.random() < 0.5:
        swing_s = rng.uniform(0.5, 1.0)
        for index, onset in enumerate(regular_onsets(n, sample_rate, swing_s, 0.02 * swing_s, rng)):
            overlay(out, onset, strike, 1.0 if index % 2 == 0 else rng.uniform(0.5, 0.8))
    else:
        for onset in poisson_onsets(n, sample_rate, rng.uniform(0.4, 0.8), rng):
            spacing = int(sample_rate / rng.uniform(5.0, 9.0))
            for hit in range(int(rng.integers(4, 11))):
                overlay(out, onset + hit * spacing, strike, rng.uniform(0.4, 1.0))
    return out


def bicycle_bell(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A thin dome at 2-3.2 kHz flicked twice ("ding-ding") or spun into a 15-25 Hz "brrring" trill."""
    base_hz = rng.uniform(2000, 3200)
    ratios = np.array([1.0, 1.46, 2.2, 2.8])
    t60_s = rng.uniform(0.6, 1.2) / ratios**0.5
    length = min(n, int(t60_s.max() * sample_rate))
    strike = _strike(length, sample_rate, base_hz * ratios, np.array([1.0, 0.6, 0.4, 0.25]), t60_s, rng)
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rng.uniform(0.25, 0.5), rng):
        if rng.random() < 0.5:
            hits, spacing = 2, int(rng.uniform(0.12, 0.2) * sample_rate)
        else:
            hits, spacing = int(rng.integers(6, 16)), int(sample_rate / rng.uniform(15.0, 25.0))
        for hit in range(hits):
            overlay(out, onset + hit * spacing, strike, rng.uniform(0.5, 1.0))
    return out


def gong(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A large gong (50-110 Hz) struck once or twice: a dense inharmonic cluster reaching to ~4 kHz whose
    upper partials bloom for a fraction of a second after the strike, then a long shimmering decay."""
    fundamental_hz = rng.uniform(50, 110)
    count = 32
    ratios = np.sort(np.exp(rng.uniform(0.0, np.log(40.0), count)))
    ratios[0] = 1.0
    # A tam-tam's energy gathers in a shimmering band several octaves above its fundamental.
    amplitudes = 0.3 + np.exp(-((np.log(ratios) - np.log(rng.uniform(6.0, 12.0))) ** 2))
    t60_s = rng.uniform(5.0, 9.0) / ratios**0.35
    phases = rng.uniform(0.0, 2.0 * np.pi, count)
    freqs_hz = fundamental_hz * ratios
    length = min(n, int(t60_s.max() * sample_rate))
    # Upper partials start from zero: the same partial minus a fast-decaying copy of itself.
    bloom = np.where(ratios > 2.5, 1.0, 0.0) * amplitudes
    ring = decaying_partials(length, sample_rate, freqs_hz, amplitudes, t60_s, phases)
    ring -= decaying_partials(
        length, sample_rate, freqs_hz, bloom, np.full(count, rng.uniform(0.4, 1.0)), phases
    )
    thump_length = min(length, int(0.04 * sample_rate))
    thump = filter_band(white_noise(thump_length, rng), sample_rate, None, 300.0)
    ring[:thump_length] += 0.5 * thump * attack_decay(thump_length, sample_rate, 0.002, 0.04)
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 0.15, rng)[:2]:
        overlay(out, onset, ring, rng.uniform(0.7, 1.0))
    return out


GENERATORS: dict[str, SoundGenerator] = {
    "Church bell": church_bell,
    "Bell": bell,
    "Bicycle bell": bicycle_bell,
    "Gong": gong,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
