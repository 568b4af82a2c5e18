"""Building sites: jackhammers, hammering and drills."""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import attack_decay, note_envelope, overlay
from avgeo.data.soundbank.synthesis import (
    SoundGenerator,
    decaying_partials,
    filter_band,
    oscillator,
    unit_rms,
    white_noise,
)


def _impact(
    sample_rate: int, rng: np.random.Generator, low_hz: float, high_hz: float, t60_s: float, partials: int
) -> np.ndarray:
    """(M,) a hard hit: inharmonic ring of `partials` modes in `low_hz`-`high_hz` plus a click."""
    length = int(1.2 * t60_s * sample_rate)
    freqs_hz = np.exp(rng.uniform(np.log(low_hz), np.log(high_hz), partials))
    ring = decaying_partials(
        length,
        sample_rate,
        freqs_hz,
        rng.uniform(0.3, 1.0, partials),
        t60_s * rng.uniform(0.5, 1.0, partials),
        rng.uniform(0.0, 2 * np.pi, partials),
    )
    click = white_noise(length, rng) * attack_decay(length, sample_rate, 0.0002, 0.006)
    return unit_rms(ring) + 1.5 * click


def _bursts(
    n: int, sample_rate: int, rng: np.random.Generator, on_s: tuple[float, float], off_s: tuple[float, float]
):
    """Yield (start, length) of work bursts lasting `on_s` with pauses of `off_s` (uniform ranges)."""
    start = int(rng.uniform(0.0, min(off_s[1] * sample_rate, n / 2)))
    while start < n:
        length = int(rng.uniform(*on_s) * sample_rate)
        yield start, length
        start += length + int(rng.uniform(*off_s) * sample_rate)


def jackhammer(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A pneumatic breaker: bursts of 1-4 s of hammering at 18-25 blows a second (each a ringing
    metallic impact), its exhaust hissing, the compressor droning throughout."""
    blow = _impact(sample_rate, rng, 1200.0, 4500.0, rng.uniform(0.02, 0.04), 6)
    rate_hz = rng.uniform(18.0, 25.0)
    out = np.zeros(n, dtype=np.float32)
    gate = np.zeros(n, dtype=np.float32)
    for start, length in _bursts(n, sample_rate, rng, (1.0, 4.0), (0.3, 1.5)):
        for onset in range(start, min(n, start + length), int(sample_rate / rate_hz)):
            overlay(out, onset, blow, rng.uniform(0.7, 1.0))
        overlay(gate, start, note_envelope(length, sample_rate, 0.05, 0.1))
    exhaust = filter_band(white_noise(n, rng), sample_rate, 2000.0, 8000.0) * gate
    compressor = filter_band(
        oscillator(rng.uniform(22, 30), n, sample_rate, rng, 20, -4.0), sample_rate, None, 300.0
    )
    return unit_rms(out) + 0.3 * exhaust + 0.2 * unit_rms(compressor)


def hammer(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Hammering nails: series of 3-10 blows 0.35-0.7 s apart, each a bright ring of the nail over the
    thud of the wood, pausing between series."""
    ring = _impact(sample_rate, rng, 1500.0, 5000.0, rng.uniform(0.06, 0.2), 5)
    thud = _impact(sample_rate, rng, 150.0, 400.0, 0.05, 3)
    out = np.zeros(n, dtype=np.float32)
    start = int(rng.uniform(0.0, min(1.0 * sample_rate, n / 2)))
    while start < n:
        interval = rng.uniform(0.35, 0.7)
        for blow in range(int(rng.integers(3, 11))):
            onset = start + int(blow * interval * sample_rate * rng.uniform(0.9, 1.1))
            strength = rng.uniform(0.5, 1.0)
            overlay(out, onset, ring, strength)
            overlay(out, onset, thud, 0.8 * strength)
        start = onset + int(rng.uniform(1.0, 3.0) * sample_rate)
    return out


def drill(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An electric drill: trigger pulls of 1-4 s, the motor whining up to 150-350 Hz (gear whine at
    5-8x), its pitch sagging and a grinding noise appearing while it bites."""
    top_hz = rng.uniform(150.0, 350.0)
    spin = np.zeros(n, dtype=np.float32)
    biting = np.zeros(n, dtype=np.float32)
    for start, length in _bursts(n, sample_rate, rng, (1.0, 4.0), (0.5, 2.0)):
        # The rotor spins up in ~0.15 s but coasts down over ~0.5 s.
        held_s = np.arange(length, dtype=np.float32) / np.float32(sample_rate)
        coast_s = np.arange(int(1.5 * sample_rate), dtype=np.float32) / np.float32(sample_rate)
        spin_up = 1.0 - np.exp(-held_s / np.float32(0.15))
        curve = np.concatenate((spin_up, spin_up[-1] * np.exp(-coast_s / np.float32(0.5))))[: n - start]
        np.maximum(spin[start : start + curve.size], curve, out=spin[start : start + curve.size])
        bite_start = start + int(rng.uniform(0.2, 0.5) * length)
        overlay(
            biting, bite_start, note_envelope(max(1, start + length - bite_start), sample_rate, 0.1, 0.05)
        )
    motor_hz = 1.0 + top_hz * spin * (1.0 - 0.15 * biting)
    motor = oscillator(motor_hz, n, sample_rate, rng, highest_harmonic=12, slope_db_per_octave=-5.0)
    gears = oscillator(motor_hz * rng.uniform(5.0, 8.0), n, sample_rate, rng, highest_harmonic=3)
    grind = filter_band(white_noise(n, rng), sample_rate, 500.0, 5000.0) * biting * (1.0 + 0.5 * motor)
    return (motor + 0.4 * gears) * spin + 0.6 * grind


GENERATORS: dict[str, SoundGenerator] = {
    "Jackhammer": jackhammer,
    "Hammer": hammer,
    "Drill": drill,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
