"""Birds: songbird phrases, sparrow-like chirps, crows, owls, doves and a crowing rooster.

Each render draws a "bird": its pitch range, note shapes and rhythm, so two renders of a class
differ as two individuals of a species (or of related species) do.
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import note_envelope, overlay, poisson_onsets
from avgeo.data.soundbank.synthesis import SoundGenerator, filter_band, oscillator, slow_noise, voiced_call

_NOTE_SHAPES = ("whistle", "up", "down", "trill", "arch")


def _note_pitch(
    shape: str, m: int, sample_rate: int, base_hz: float, span: float, trill_hz: float
) -> np.ndarray:
    """(m,) pitch contour in Hz of one song note of `shape`, around `base_hz`, moving by `span` * base."""
    progress = np.linspace(0.0, 1.0, m, dtype=np.float32)
    if shape == "up":
        return base_hz * (1.0 - span / 2 + span * progress)
    if shape == "down":
        return base_hz * (1.0 + span / 2 - span * progress)
    if shape == "trill":
        return base_hz * (
            1.0 + span / 2 * np.sin(2 * np.pi * trill_hz * np.arange(m, dtype=np.float32) / sample_rate)
        )
    if shape == "arch":
        return base_hz * (1.0 + span * np.sin(np.pi * progress))
    return base_hz * (1.0 + 0.01 * np.sin(2 * np.pi * 30.0 * np.arange(m, dtype=np.float32) / sample_rate))


def _whistle(pitch_hz: np.ndarray, sample_rate: int, rng: np.random.Generator, attack_s: float) -> np.ndarray:
    """(m,) a near-pure whistled note following `pitch_hz`, with a faint second harmonic."""
    tone = oscillator(
        pitch_hz, pitch_hz.size, sample_rate, rng, highest_harmonic=2, slope_db_per_octave=-14.0
    )
    return tone * note_envelope(pitch_hz.size, sample_rate, attack_s, attack_s * 2)


def bird_song(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A songbird's song: phrases of 5-12 whistled notes (steady, sweeping, arched or trilled, 2-5 kHz,
    40-200 ms) drawn from the bird's small repertoire, one phrase every 1.5-4 s."""
    repertoire = [
        (
            _NOTE_SHAPES[int(rng.integers(len(_NOTE_SHAPES)))],
            rng.uniform(2000.0, 5000.0),
            rng.uniform(0.15, 0.6),
            rng.uniform(0.04, 0.2),
            rng.uniform(20.0, 40.0),
        )
        for _ in range(int(rng.integers(3, 6)))
    ]
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 1.0 / rng.uniform(1.5, 4.0), rng):
        start = onset
        for _ in range(int(rng.integers(5, 13))):
            shape, base_hz, span, duration_s, trill_hz = repertoire[int(rng.integers(len(repertoire)))]
            m = int(duration_s * rng.uniform(0.85, 1.15) * sample_rate)
            pitch = _note_pitch(shape, m, sample_rate, base_hz * rng.uniform(0.97, 1.03), span, trill_hz)
            overlay(out, start, _whistle(pitch, sample_rate, rng, 0.005), rng.uniform(0.5, 1.0))
            start += m + int(rng.uniform(0.02, 0.08) * sample_rate)
    return out


def chirp_tweet(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Sparrow-like chirps: very short (15-40 ms) steep down-sweeps from 6-8 kHz to 2.5-4 kHz, in
    irregular runs, from one to three birds."""
    out = np.zeros(n, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        top_hz, bottom_hz = rng.uniform(6000.0, 8000.0), rng.uniform(2500.0, 4000.0)
        for onset in poisson_onsets(n, sample_rate, rng.uniform(2.0, 6.0), rng):
            m = int(rng.uniform(0.015, 0.04) * sample_rate)
            sweep = np.geomspace(top_hz, bottom_hz, m).astype(np.float32) * rng.uniform(0.93, 1.07)
            chirp = oscillator(sweep, m, sample_rate, rng, highest_harmonic=2, slope_db_per_octave=-10.0)
            overlay(out, onset, chirp * note_envelope(m, sample_rate, 0.002, 0.008), rng.uniform(0.4, 1.0))
    return filter_band(out, sample_rate, 1500.0, None)


def crow(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Crows cawing: series of 2-5 harsh, nasal "caws" (0.25-0.45 s, ~350-650 Hz, rough), 0.5-0.8 s apart."""
    f0_hz = rng.uniform(350.0, 650.0)
    formants = (rng.uniform(1100.0, 1600.0), rng.uniform(2100.0, 2800.0), 3500.0)
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 1.0 / rng.uniform(2.0, 5.0), rng):
        start = onset
        for _ in range(int(rng.integers(2, 6))):
            m = int(rng.uniform(0.25, 0.45) * sample_rate)
            contour = f0_hz * (1.0 + 0.12 * np.sin(np.pi * np.linspace(0.0, 1.0, m, dtype=np.float32)))
            caw = voiced_call(contour, sample_rate, rng, formants, (200.0, 300.0, 400.0), -4.0, 0.7, 0.4)
            overlay(out, start, caw * note_envelope(m, sample_rate, 0.015, 0.06), rng.uniform(0.6, 1.0))
            start += m + int(rng.uniform(0.2, 0.4) * sample_rate)
    return filter_band(out, sample_rate, 300.0, 6000.0)


def owl(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An owl at night: soft, low, pure hoots (200-400 Hz): a long "hoo", a pause, then a run of three
    or four shorter hoots ending in a long wavering one."""
    f0_hz = rng.uniform(200.0, 400.0)
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 1.0 / rng.uniform(4.0, 7.0), rng):
        notes = [(rng.uniform(0.5, 0.8), rng.uniform(1.0, 2.0))]
        notes += [(rng.uniform(0.12, 0.2), rng.uniform(0.08, 0.15)) for _ in range(int(rng.integers(2, 4)))]
        notes.append((rng.uniform(0.7, 1.1), 0.0))
        start = onset
        for index, (duration_s, gap_s) in enumerate(notes):
            m = int(duration_s * sample_rate)
            wavering = 0.03 if index == len(notes) - 1 else 0.005
            vibrato = 1.0 + wavering * np.sin(2 * np.pi * 7.0 * np.arange(m, dtype=np.float32) / sample_rate)
            drop = 1.0 - 0.06 * np.linspace(0.0, 1.0, m, dtype=np.float32)
            hoot = oscillator(
                f0_hz * vibrato * drop, m, sample_rate, rng, highest_harmonic=3, slope_db_per_octave=-18.0
            )
            overlay(out, start, hoot * note_envelope(m, sample_rate, 0.06, 0.12), rng.uniform(0.7, 1.0))
            start += m + int(gap_s * sample_rate)
    return out


def pigeon_dove(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A dove's coo: "coo-COO-coo" (short, long and arched, short), ~450-700 Hz, throaty (a 25-40 Hz
    flutter), repeated every 2-4 s."""
    f0_hz = rng.uniform(450.0, 700.0)
    flutter_hz = rng.uniform(25.0, 40.0)
    out = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 1.0 / rng.uniform(2.0, 4.0), rng):
        start = onset
        for duration_s, arch in ((0.25, 0.05), (0.6, 0.18), (0.35, 0.05)):
            m = int(duration_s * rng.uniform(0.8, 1.2) * sample_rate)
            progress = np.linspace(0.0, 1.0, m, dtype=np.float32)
            contour = f0_hz * (1.0 + arch * np.sin(np.pi * progress))
            tone = oscillator(contour, m, sample_rate, rng, highest_harmonic=4, slope_db_per_octave=-10.0)
            throat = 1.0 + 0.5 * oscillator(flutter_hz, m, sample_rate, rng)
            overlay(
                out, start, tone * throat * note_envelope(m, sample_rate, 0.04, 0.08), rng.uniform(0.7, 1.0)
            )
            start += m + int(rng.uniform(0.06, 0.14) * sample_rate)
    return filter_band(out, sample_rate, None, 2500.0)


def rooster_crowing(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A rooster's cock-a-doodle-doo: three short rising syllables and a long final one falling from
    ~800 Hz, harsh and bright; sometimes a second, farther rooster answers."""
    out = np.zeros(n, dtype=np.float32)
    first = int(rng.uniform(0.0, 0.4) * min(n, 3 * sample_rate))
    onsets = [first] + ([first + int(rng.uniform(3.0, 5.0) * sample_rate)] if rng.random() < 0.5 else [])
    for bird, onset in enumerate(onsets):
        peak_hz = rng.uniform(650.0, 850.0)
        formants = (rng.uniform(1200.0, 1800.0), rng.uniform(2500.0, 3200.0), 4000.0)
        start = onset
        syllables = ((0.14, 0.65, 0.8), (0.1, 0.8, 0.9), (0.18, 0.9, 1.0), (rng.uniform(0.7, 1.1), 1.0, 0.65))
        for duration_s, from_ratio, to_ratio in syllables:
            m = int(duration_s * sample_rate)
            contour = peak_hz * np.linspace(from_ratio, to_ratio, m, dtype=np.float32)
            wobble = 1.0 + 0.02 * slow_noise(m, 12.0 / sample_rate, rng)
            call = voiced_call(
                contour * wobble, sample_rate, rng, formants, (250.0, 350.0, 500.0), -3.0, 0.5, 0.3
            )
            overlay(out, start, call * note_envelope(m, sample_rate, 0.01, 0.05), 0.35 if bird else 1.0)
            start += m + int(0.03 * sample_rate)
    return filter_band(out, sample_rate, 400.0, 7000.0)


GENERATORS: dict[str, SoundGenerator] = {
    "Bird vocalization, bird call, bird song": bird_song,
    "Chirp, tweet": chirp_tweet,
    "Crow": crow,
    "Owl": owl,
    "Pigeon, dove": pigeon_dove,
    "Crowing, cock-a-doodle-doo": rooster_crowing,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
