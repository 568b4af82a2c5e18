"""Envelopes and event placement of the procedural sound bank: note and decay envelopes, onset times,
a source passing by, and adding events into a signal.

The conventions of `avgeo.data.soundbank.synthesis` hold: float32 signals `(S,)` at `sample_rate` Hz,
randomness only from the `rng` argument.
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.synthesis import T60_DECAY

SPEED_OF_SOUND_MPS = 343.0
"""In air at 20 degrees C."""


def attack_decay(m: int, sample_rate: float, attack_s: float, t60_s: float) -> np.ndarray:
    """(m,) float32 linear rise over `attack_s`, then exponential decay to -60 dB after `t60_s`."""
    time_s = np.arange(m, dtype=np.float32) / np.float32(sample_rate)
    rise = np.minimum(time_s / max(attack_s, 1e-4), 1.0)
    return rise * np.exp(-np.float32(T60_DECAY / t60_s) * np.maximum(time_s - attack_s, 0.0))


def note_envelope(m: int, sample_rate: float, attack_s: float, release_s: float) -> np.ndarray:
    """(m,) float32 gate: raised-cosine rise over `attack_s`, hold at 1, raised-cosine fall over
    `release_s`."""
    envelope = np.ones(m, dtype=np.float32)
    rise = min(m, max(1, int(attack_s * sample_rate)))
    fall = min(m, max(1, int(release_s * sample_rate)))
    envelope[:rise] *= 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, rise, dtype=np.float32))
    envelope[m - fall :] *= 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, fall, dtype=np.float32))
    return envelope


def poisson_onsets(n: int, sample_rate: float, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """(E,) sorted int64 onsets in [0, n), E >= 1: exponential gaps of mean 1 / rate_hz seconds.

    The first onset falls within the first mean gap, or the first half of a shorter clip, so every clip
    has an event with room to sound.
    """
    mean_gap = sample_rate / rate_hz
    count = int(n / mean_gap * 1.5) + 8
    first = rng.uniform(0, min(mean_gap, n / 2))
    onsets = first + np.concatenate(([0.0], np.cumsum(rng.exponential(mean_gap, size=count))))
    while onsets[-1] < n:  # rare: the gaps drawn fell short of the clip
        onsets = np.concatenate((onsets, onsets[-1] + np.cumsum(rng.exponential(mean_gap, size=count))))
    return onsets[onsets < n].astype(np.int64)


def regular_onsets(
    n: int, sample_rate: float, period_s: float, jitter_s: float, rng: np.random.Generator
) -> np.ndarray:
    """(E,) sorted int64 onsets in [0, n), E >= 1, every `period_s` give or take uniform `jitter_s`; the
    first within the first period, or the first half of a shorter clip."""
    period = period_s * sample_rate
    count = int(n / period) + 2
    onsets = rng.uniform(0, min(period, n / 2)) + period * np.arange(count)
    onsets[1:] += rng.uniform(-jitter_s, jitter_s, size=count - 1) * sample_rate  # the first stays inside
    onsets = np.sort(np.clip(onsets, 0, None))
    return onsets[onsets < n].astype(np.int64)


def pass_by(
    n: int, sample_rate: float, closest_s: float, speed_mps: float, distance_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """A source moving in a straight line past a listener: (gain (n,), doppler (n,)) float32.

    `gain` is distance_m / range (1 at the closest point, `closest_s` seconds into the clip); `doppler` is
    the factor on emitted frequencies, above 1 while approaching and below 1 after.
    """
    along_m = (np.arange(n, dtype=np.float32) / np.float32(sample_rate) - np.float32(closest_s)) * speed_mps
    range_m = np.sqrt(along_m * along_m + np.float32(distance_m * distance_m))
    approach_mps = -speed_mps * along_m / range_m
    return distance_m / range_m, SPEED_OF_SOUND_MPS / (SPEED_OF_SOUND_MPS - approach_mps)


def overlay(out: np.ndarray, onset: int, event: np.ndarray, gain: float = 1.0) -> None:
    """Add `gain * event` (M,) into `out` (S,) starting at sample `onset`, cut at the end of `out`."""
    stop = min(out.size, onset + event.size)
    if stop > onset:
        out[onset:stop] += gain * event[: stop - onset]


def overlay_many(out: np.ndarray, onsets: np.ndarray, events: np.ndarray) -> None:
    """Add each row of `events` (E, M) into `out` (S,) at its onset (E,), in place; cut at the end."""
    positions = (onsets[:, None] + np.arange(events.shape[1])[None, :]).ravel()
    inside = positions < out.size
    np.add.at(out, positions[inside], events.ravel()[inside])


def impulses(n: int, onsets: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """(n,) float32 silence with `amplitudes` (E,) at `onsets` (E,): excitation for dense events."""
    train = np.zeros(n, dtype=np.float32)
    np.add.at(train, onsets, amplitudes.astype(np.float32))
    return train
