"""Weather and water: ocean, breaking surf, streams, rain, thunder, wind and rustling leaves.

Most are noise whose spectrum and level move in time (`stft_noise`); what tells them apart is the
timescale of that movement (ocean swell over 8-15 s, a wave every 5-11 s, wind gusts, a thunder roll)
and the fine texture on top (bubbles in a stream, drops in rain, crackles in leaves).
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import attack_decay, impulses, overlay_many, poisson_onsets, regular_onsets
from avgeo.data.soundbank.synthesis import (
    SoundGenerator,
    band_gain,
    coloured_noise,
    filter_band,
    frame_rate_hz,
    frame_times_s,
    slow_noise,
    stft_frames,
    stft_hz,
    stft_noise,
    unit_rms,
    white_noise,
)


def _gusts(
    frames: int, sample_rate: int, rate_hz: float, depth: float, rng: np.random.Generator
) -> np.ndarray:
    """(T,) positive, log-normally fluctuating strength per frame: gusts changing about `rate_hz` times a
    second, `depth` the spread in natural-log units."""
    return np.exp(depth * slow_noise(frames, rate_hz / frame_rate_hz(sample_rate), rng))


def ocean(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The open sea from the shore or a boat: a deep, continuous roar (mostly below 500 Hz) heaving with
    the swell every 8-15 s, without distinct breakers."""
    frames = stft_frames(n)
    time_s = frame_times_s(n, sample_rate)
    swell = 0.65 + 0.35 * np.sin(2 * np.pi * time_s / rng.uniform(8.0, 15.0) + rng.uniform(0, 2 * np.pi))
    level = swell * _gusts(frames, sample_rate, 0.5, 0.15, rng)
    freq_hz = stft_hz(sample_rate)
    spectrum = band_gain(freq_hz, 20.0, rng.uniform(300.0, 600.0), order=2, slope_db_per_octave=-3.0)
    spectrum += 0.03 * band_gain(freq_hz, 1000.0, 5000.0)  # far-off surf
    return stft_noise((level[:, None] * spectrum[None, :]).astype(np.float32), n, rng)


def waves_surf(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Surf on a beach: every 5-11 s a wave breaks (a broadband crash rising in half a second), then its
    foam washes up and drains away as a hiss over 2-4 s."""
    frames = stft_frames(n)
    crash = np.zeros(frames, dtype=np.float32)
    fizz = np.zeros(frames, dtype=np.float32)
    frame_rate = frame_rate_hz(sample_rate)
    for onset in regular_onsets(frames, frame_rate, rng.uniform(5.0, 11.0), 1.0, rng):
        strength = rng.uniform(0.6, 1.0)
        crash_env = attack_decay(frames - onset, frame_rate, rng.uniform(0.3, 0.8), rng.uniform(1.5, 3.0))
        fizz_env = attack_decay(frames - onset, frame_rate, rng.uniform(0.6, 1.2), rng.uniform(2.5, 5.0))
        crash[onset:] += strength * crash_env
        fizz[onset:] += strength * fizz_env
    freq_hz = stft_hz(sample_rate)
    crash_spectrum = band_gain(freq_hz, 60.0, 2500.0, order=1)
    fizz_spectrum = band_gain(freq_hz, 1500.0, 12000.0, order=2)
    bed = 0.12 * band_gain(freq_hz, 30.0, 800.0, slope_db_per_octave=-3.0)
    magnitude = crash[:, None] * crash_spectrum + 0.6 * fizz[:, None] * fizz_spectrum + bed
    return stft_noise(magnitude.astype(np.float32), n, rng)


def stream(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A babbling brook: a dense patter of bubbles (short rising sine chirps, 300 Hz-2 kHz, 60-200 a
    second) over a soft mid-band water noise."""
    onsets = poisson_onsets(n, sample_rate, rng.uniform(60.0, 200.0), rng)
    count = onsets.size
    length = int(0.02 * sample_rate)
    time_s = (np.arange(length, dtype=np.float32) / np.float32(sample_rate))[None, :]
    base_hz = np.exp(rng.uniform(np.log(300.0), np.log(2000.0), count)).astype(np.float32)[:, None]
    # A bubble's resonance rises as it nears the surface; small bubbles ring higher and die faster.
    rise_per_s = rng.uniform(20.0, 120.0, count).astype(np.float32)[:, None]
    decay_s = (2.0 / base_hz).astype(np.float32) * rng.uniform(1.0, 3.0, (count, 1)).astype(np.float32)
    phase = np.float32(2 * np.pi) * base_hz * (time_s + 0.5 * rise_per_s * time_s * time_s)
    amplitude = rng.uniform(0.2, 1.0, (count, 1)).astype(np.float32)
    bubbles = amplitude * np.sin(phase) * np.exp(-time_s / decay_s)
    out = np.zeros(n, dtype=np.float32)
    overlay_many(out, onsets, bubbles)
    water = coloured_noise(n, sample_rate, rng, -3.0, 200.0, 3000.0)
    return unit_rms(out) + 0.5 * water


def rain(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Steady rain: an even, broadband hiss and patter (drops on hard surfaces down to ~200 Hz) under a
    dense crackle of drops (300-1500 a second, a few loud ones close by) ringing at 1-5 kHz."""
    hiss = coloured_noise(n, sample_rate, rng, -2.0, 200.0, 14000.0)
    onsets = poisson_onsets(n, sample_rate, rng.uniform(300.0, 1500.0), rng)
    # Drop sizes are heavy-tailed: most are faint ticks, a few near the microphone are loud (to a point).
    drops = impulses(n, onsets, np.minimum(rng.pareto(2.5, onsets.size), 4.0))
    crackle = filter_band(drops, sample_rate, rng.uniform(900.0, 1500.0), rng.uniform(3500.0, 6000.0))
    return hiss + rng.uniform(0.5, 0.9) * unit_rms(crackle)


def thunder(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A thunderclap: for near strikes a sharp crack, then a rolling rumble of several overlapping
    bursts below ~300 Hz, losing its highs first, dying over 3-8 s."""
    frames = stft_frames(n)
    frame_rate = frame_rate_hz(sample_rate)
    freq_hz = stft_hz(sample_rate)
    magnitude = np.full((frames, freq_hz.size), 0.003, dtype=np.float32)
    for onset in poisson_onsets(frames, frame_rate, 0.1, rng)[:2]:
        near = rng.random() < 0.5
        rest = frames - onset
        roll = np.zeros(rest, dtype=np.float32)
        for start in (rng.uniform(0.0, 1.5, int(rng.integers(3, 8))) * frame_rate).astype(np.int64):
            if start < rest:
                roll[start:] += attack_decay(
                    rest - start, frame_rate, rng.uniform(0.05, 0.4), rng.uniform(1.5, 5.0)
                )
        time_s = np.arange(rest, dtype=np.float32) / np.float32(frame_rate)
        cutoff_hz = 90.0 + (2500.0 if near else 400.0) * np.exp(-time_s / rng.uniform(0.2, 0.6))
        dull = 1.0 / np.sqrt(1.0 + (freq_hz[None, :] / cutoff_hz[:, None]) ** 4)
        magnitude[onset:] += roll[:, None] * dull * band_gain(freq_hz, 20.0, None, slope_db_per_octave=-3.0)
    return stft_noise(magnitude, n, rng)


def wind(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Gusty wind: low rushing noise swelling and dropping by +-10 dB every few seconds, with a whistle
    (a narrow resonance around obstacles) that rises in pitch with each gust."""
    frames = stft_frames(n)
    gust = _gusts(frames, sample_rate, rng.uniform(0.15, 0.5), 0.6, rng)
    freq_hz = stft_hz(sample_rate)
    rush = band_gain(freq_hz, 25.0, rng.uniform(500.0, 1200.0), order=1, slope_db_per_octave=-3.0)
    whistle_hz = rng.uniform(300.0, 900.0) * (0.6 + 0.4 * gust / gust.max())
    width_hz = 0.06 * whistle_hz
    whistle = 1.0 / (1.0 + ((freq_hz[None, :] - whistle_hz[:, None]) / width_hz[:, None]) ** 2)
    magnitude = gust[:, None] * rush[None, :] + rng.uniform(0.2, 0.5) * (gust**2)[:, None] * whistle
    return stft_noise(magnitude.astype(np.float32), n, rng)


def rustling_leaves(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Leaves stirred by the breeze: bursts of fine, high crackle (many tiny clicks, 3-10 kHz) that
    come and go with each gust, near-silent in the lulls."""
    gust = np.exp(1.5 * slow_noise(n, rng.uniform(0.4, 1.0) / sample_rate, rng))
    gust /= gust.max()
    onsets = poisson_onsets(n, sample_rate, rng.uniform(400.0, 1000.0), rng)
    # Thinning: a click survives with probability equal to the gust strength at its time.
    kept = onsets[rng.random(onsets.size) < gust[onsets]]
    if kept.size == 0:
        kept = onsets[:1]
    clicks = impulses(n, kept, rng.uniform(0.3, 1.0, kept.size))
    crackle = unit_rms(filter_band(clicks, sample_rate, 3000.0, 10000.0))
    rustle = filter_band(white_noise(n, rng), sample_rate, 3000.0, 9000.0) * gust**2
    return crackle + 0.4 * unit_rms(rustle)


GENERATORS: dict[str, SoundGenerator] = {
    "Ocean": ocean,
    "Waves, surf": waves_surf,
    "Stream": stream,
    "Rain": rain,
    "Thunder": thunder,
    "Wind": wind,
    "Rustling leaves": rustling_leaves,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
