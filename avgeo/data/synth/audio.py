"""The soundtrack of a clip: the scene's sources rendered by the sound bank and mixed at their levels."""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank import REFERENCE_RMS, SoundBank
from avgeo.data.synth.scene import ClipScene

FADE_S = 0.2
"""Raised-cosine fade in and out of every source, seconds (no clicks at event edges)."""

PEAK_LIMIT = 0.99
"""A mix peaking above this is scaled down as a whole, keeping the sources' relative levels."""


def mix_soundscape(
    scene: ClipScene, bank: SoundBank, duration_s: float, sample_rate: int, noise_floor_db: float
) -> np.ndarray:
    """(round(duration_s * sample_rate),) float32 mono mix of the scene's sources over a noise floor.

    A source at 0 dB has the bank's RMS, `REFERENCE_RMS` (-20 dBFS); the floor is white noise.
    """
    rng = np.random.default_rng([scene.render_seed, 1])
    n_samples = round(duration_s * sample_rate)
    mix = np.zeros(n_samples, np.float32)
    for source in scene.sources:
        start = min(round(source.onset_s * sample_rate), n_samples - 1)
        length = min(max(1, round(source.duration_s * sample_rate)), n_samples - start)
        signal = bank.render(source.audioset_class.mid, length / sample_rate, rng)[:length]
        gain = 10 ** (source.gain_db / 20)
        mix[start : start + signal.size] += gain * signal * _fade(signal.size, round(FADE_S * sample_rate))
    mix += REFERENCE_RMS * 10 ** (noise_floor_db / 20) * rng.standard_normal(n_samples, dtype=np.float32)
    peak = float(np.abs(mix).max())
    return mix * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else mix


def _fade(n_samples: int, fade_samples: int) -> np.ndarray:
    """(n_samples,) envelope rising over `fade_samples`, flat, then falling (shorter fades if needed)."""
    fade_samples = min(fade_samples, n_samples // 2)
    envelope = np.ones(n_samples, np.float32)
    if fade_samples:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade_samples, dtype=np.float32) / fade_samples)
        envelope[:fade_samples] = ramp
        envelope[n_samples - fade_samples :] = ramp[::-1]
    return envelope
