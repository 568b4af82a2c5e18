"""Insects, frogs and mammals: buzzing insects, crickets, mosquitoes, frogs, dogs, cattle, sheep, goats.

Insects are periodic wing or stridulation sounds with characteristic rates; frogs pulse; mammals call
through a vocal tract, so their calls are a harmonic source under formants (`voiced_call`).
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import attack_decay, note_envelope, overlay, poisson_onsets, regular_onsets
from avgeo.data.soundbank.synthesis import SoundGenerator, filter_band, oscillator, slow_noise, voiced_call


def _flight(n: int, sample_rate: int, rng: np.random.Generator, depth: float) -> np.ndarray:
    """(n,) loudness of an insect flying around the microphone: log-normal swoops over ~1-2 s."""
    swoops = np.exp(depth * slow_noise(n, rng.uniform(0.5, 1.0) / sample_rate, rng))
    return swoops / swoops.max()


def insect(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A bee or fly buzzing about: a rich, sawtooth-like wingbeat tone at 150-260 Hz whose pitch and
    loudness wander as it flies."""
    wingbeat_hz = rng.uniform(150.0, 260.0) * (1.0 + 0.04 * slow_noise(n, 2.0 / sample_rate, rng))
    buzz = oscillator(wingbeat_hz, n, sample_rate, rng, highest_harmonic=30, slope_db_per_octave=-5.0)
    return filter_band(buzz, sample_rate, 120.0, 6000.0) * _flight(n, sample_rate, rng, 0.6)


def mosquito(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A mosquito's whine: a thin tone at 400-700 Hz, its pitch wobbling and its loudness swooping
    steeply as it circles close to the ear."""
    wingbeat_hz = rng.uniform(400.0, 700.0) * (1.0 + 0.06 * slow_noise(n, 1.5 / sample_rate, rng))
    whine = oscillator(wingbeat_hz, n, sample_rate, rng, highest_harmonic=8, slope_db_per_octave=-9.0)
    return whine * _flight(n, sample_rate, rng, 1.2)


def cricket(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Field crickets: a pure 3.5-5 kHz carrier in chirps of 3-5 pulses (pulse 12-20 ms, 25-40 pulses a
    second), 1.5-3 chirps a second, from one to three insects."""
    out = np.zeros(n, dtype=np.float32)
    for insect_index in range(int(rng.integers(1, 4))):
        carrier_hz = rng.uniform(3500.0, 5000.0)
        pulse = int(rng.uniform(0.012, 0.02) * sample_rate)
        pulse_period = int(sample_rate / rng.uniform(25.0, 40.0))
        pulses = int(rng.integers(3, 6))
        chirp_length = pulse_period * (pulses - 1) + pulse
        gate = np.zeros(chirp_length, dtype=np.float32)
        for index in range(pulses):
            overlay(gate, index * pulse_period, note_envelope(pulse, sample_rate, 0.003, 0.005))
        chirp = gate * oscillator(
            carrier_hz, chirp_length, sample_rate, rng, highest_harmonic=2, slope_db_per_octave=-20.0
        )
        level = 1.0 if insect_index == 0 else rng.uniform(0.3, 0.7)
        for onset in regular_onsets(n, sample_rate, rng.uniform(0.33, 0.66), 0.01, rng):
            overlay(out, onset, chirp, level)
    return out


def frog(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A frog chorus: each frog's "rib-bit" is two short pulsed croaks (a harmonic 250-600 Hz voice
    switched on and off 40-80 times a second under a 0.6-1.8 kHz formant), 1-3 calls a second."""
    out = np.zeros(n, dtype=np.float32)
    for frog_index in range(int(rng.integers(2, 5))):
        f0_hz = rng.uniform(250.0, 600.0)
        pulse_hz = rng.uniform(40.0, 80.0)
        formants = (rng.uniform(600.0, 1800.0), rng.uniform(2000.0, 3000.0))
        croak_length = int(rng.uniform(0.06, 0.12) * sample_rate)
        gap = int(rng.uniform(0.04, 0.08) * sample_rate)
        call_length = 2 * croak_length + gap
        contour = np.full(call_length, f0_hz, dtype=np.float32)
        voice = voiced_call(contour, sample_rate, rng, formants, (150.0, 300.0), -6.0, 0.2, 0.1)
        pulsing = np.maximum(oscillator(pulse_hz, call_length, sample_rate, rng), 0.0)
        gate = np.zeros(call_length, dtype=np.float32)
        overlay(gate, 0, note_envelope(croak_length, sample_rate, 0.005, 0.02))
        overlay(gate, croak_length + gap, note_envelope(croak_length, sample_rate, 0.005, 0.02))
        call = voice * pulsing * gate
        level = 1.0 if frog_index == 0 else rng.uniform(0.3, 0.8)
        for onset in poisson_onsets(n, sample_rate, rng.uniform(1.0, 3.0), rng):
            overlay(out, onset, call, level * rng.uniform(0.8, 1.0))
    return out


def dog(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A dog barking: series of 1-5 harsh, noisy barks (0.1-0.2 s, pitch falling from 300-650 Hz, sharp
    onset and quick decay), small dogs higher and brighter than big ones."""
    size = rng.uniform(0.0, 1.0)  # 0: small dog, 1: big dog
    f0_hz = 650.0 - 350.0 * size
    formants = ((900.0 - 400.0 * size), (2000.0 - 700.0 * size), 3000.0)
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 1.0 / rng.uniform(1.5, 3.5), rng):
        start = onset
        for _ in range(int(rng.integers(1, 6))):
            m = int(rng.uniform(0.1, 0.2) * sample_rate)
            contour = f0_hz * rng.uniform(0.9, 1.1) * np.linspace(1.0, 0.7, m, dtype=np.float32)
            bark = voiced_call(contour, sample_rate, rng, formants, (250.0, 350.0, 450.0), -4.0, 0.8, 1.0)
            overlay(
                out, start, bark * attack_decay(m, sample_rate, 0.004, m / sample_rate), rng.uniform(0.6, 1.0)
            )
            start += m + int(rng.uniform(0.15, 0.35) * sample_rate)
    return out


def _bleat(
    m: int, sample_rate: int, rng: np.random.Generator, f0_hz: float, quaver_hz: float, depth: float, formants
) -> np.ndarray:
    """(m,) a bleat: a voiced call whose pitch and loudness quaver together at `quaver_hz`."""
    quaver = np.sin(2 * np.pi * quaver_hz * np.arange(m, dtype=np.float32) / sample_rate)
    contour = f0_hz * (1.0 + 0.1 * depth * quaver) * np.linspace(1.0, 0.9, m, dtype=np.float32)
    call = voiced_call(contour, sample_rate, rng, formants, (120.0, 180.0, 250.0), -7.0, 0.2, 0.25)
    return call * (1.0 - 0.5 * depth * (1.0 - quaver) / 2.0) * note_envelope(m, sample_rate, 0.04, 0.12)


def sheep(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Sheep bleating "baa": 0.5-1 s at 180-280 Hz with an open "a" vowel and a slow 6-9 Hz quaver."""
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rng.uniform(0.2, 0.5), rng):
        m = int(rng.uniform(0.5, 1.0) * sample_rate)
        formants = (rng.uniform(700.0, 900.0), rng.uniform(1200.0, 1500.0), 2700.0)
        bleat = _bleat(m, sample_rate, rng, rng.uniform(180.0, 280.0), rng.uniform(6.0, 9.0), 0.7, formants)
        overlay(out, onset, bleat, rng.uniform(0.5, 1.0))
    return out


def goat(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Goats bleating "meh-eh-eh": 0.4-0.9 s at 400-650 Hz, a nasal "e" vowel and a fast 15-22 Hz tremble."""
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rng.uniform(0.2, 0.5), rng):
        m = int(rng.uniform(0.4, 0.9) * sample_rate)
        formants = (rng.uniform(450.0, 550.0), rng.uniform(1800.0, 2100.0), 2900.0)
        bleat = _bleat(m, sample_rate, rng, rng.uniform(400.0, 650.0), rng.uniform(15.0, 22.0), 1.0, formants)
        overlay(out, onset, bleat, rng.uniform(0.5, 1.0))
    return out


def cattle(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Cattle lowing: 1-2.5 s "mmm-ooo" moos, a low (100-170 Hz) rich voice rising quickly then sagging,
    the mouth opening from a nasal hum to an open vowel."""
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rng.uniform(0.12, 0.3), rng):
        m = int(rng.uniform(1.0, 2.5) * sample_rate)
        progress = np.linspace(0.0, 1.0, m, dtype=np.float32)
        contour = rng.uniform(100.0, 170.0) * (
            0.8 + 0.35 * np.sin(np.pi * np.minimum(progress * 1.6, 1.0)) - 0.1 * progress
        )
        # The mouth opens from a nasal hum to an open vowel over the first half of the moo.
        opening = np.clip(np.linspace(-0.5, 1.5, 8), 0.0, 1.0)[:, None]
        formants = (1.0 - opening) * np.array([280.0, 1000.0, 2300.0]) + opening * np.array(
            [rng.uniform(550.0, 750.0), 1150.0, 2400.0]
        )
        moo = voiced_call(contour, sample_rate, rng, formants, (80.0, 150.0, 250.0), -9.0, 0.1, 0.05)
        overlay(out, onset, moo * note_envelope(m, sample_rate, 0.1, 0.3), rng.uniform(0.6, 1.0))
    return filter_band(out, sample_rate, 60.0, None)


GENERATORS: dict[str, SoundGenerator] = {
    "Insect": insect,
    "Mosquito": mosquito,
    "Cricket": cricket,
    "Frog": frog,
    "Dog": dog,
    "Cattle, bovinae": cattle,
    "Sheep": sheep,
    "Goat": goat,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
