"""People: speech, crowds, children at play, chant, footsteps and applause.

Voices are a source-filter model: a glottal pulse train at the speaker's pitch, through three formant
resonators that move from vowel to vowel, plus fricative noise for consonants. A plan of syllables
(timing, pitch, vowel, fricative, loudness) is what distinguishes talking, shouting and chanting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avgeo.data.soundbank.events import attack_decay, note_envelope, overlay, poisson_onsets, regular_onsets
from avgeo.data.soundbank.synthesis import (
    SoundGenerator,
    band_gain,
    breakpoints,
    echo,
    filter_band,
    formant_filter,
    frame_rate_hz,
    oscillator,
    slow_noise,
    stft_frames,
    stft_hz,
    stft_noise,
    unit_rms,
    white_noise,
)

_VOWEL_FORMANTS_HZ = np.array(
    [
        [730.0, 1090.0, 2440.0],  # a
        [530.0, 1840.0, 2480.0],  # e
        [270.0, 2290.0, 3010.0],  # i
        [570.0, 840.0, 2410.0],  # o
        [300.0, 870.0, 2240.0],  # u
        [660.0, 1720.0, 2410.0],  # ae
    ]
)
"""F1-F3 of six vowels for an adult male voice (Peterson & Barney means); women and children scale up."""
_OPEN_VOWELS = (0, 3, 4)
"""a, o, u: the vowels of chant and of shouting."""
_FORMANT_BANDWIDTHS_HZ = np.array([90.0, 110.0, 170.0])


@dataclass(frozen=True)
class _Syllable:
    """One syllable of a voice plan; times in samples, pitch in Hz."""

    start: int
    consonant: int
    vowel: int
    f0_start_hz: float
    f0_end_hz: float
    vowel_index: int
    fricative: bool
    level: float


def _render_voice(
    syllables: list[_Syllable],
    n: int,
    sample_rate: int,
    rng: np.random.Generator,
    formant_scale: float,
    breathiness: float,
    unison: tuple[float, ...] = (1.0,),
) -> np.ndarray:
    """(n,) unit-RMS voice speaking (or singing) `syllables`; `formant_scale` 1 for men, ~1.15 for
    women, ~1.3 for children. Each factor in `unison` adds a singer at that pitch ratio; singers of one
    vowel share its formants, so they share one vocal-tract filter."""
    pitch_times, pitch_hz = [0.0], [syllables[0].f0_start_hz]
    voiced = np.zeros(n, dtype=np.float32)
    frication = np.zeros(n, dtype=np.float32)
    boundaries, formants = [0], [_VOWEL_FORMANTS_HZ[syllables[0].vowel_index]]
    for syllable in syllables:
        if syllable.start >= n:
            break
        vowel_start = syllable.start + syllable.consonant
        pitch_times += [vowel_start, vowel_start + syllable.vowel]
        pitch_hz += [syllable.f0_start_hz, syllable.f0_end_hz]
        envelope = note_envelope(syllable.vowel, sample_rate, 0.015, 0.03)
        overlay(voiced, vowel_start, envelope, syllable.level)
        if syllable.fricative:
            overlay(
                frication,
                syllable.start,
                note_envelope(syllable.consonant, sample_rate, 0.01, 0.01),
                syllable.level,
            )
        if syllable.start > boundaries[-1]:
            boundaries.append(syllable.start)
            formants.append(_VOWEL_FORMANTS_HZ[syllable.vowel_index])
    boundaries.append(n)
    f0_hz = breakpoints(n, sample_rate, np.array(pitch_times) / sample_rate, np.array(pitch_hz))
    f0_hz *= 1.0 + 0.01 * slow_noise(n, 8.0 / sample_rate, rng)  # jitter: no voice holds pitch exactly
    glottal = sum(oscillator(f0_hz * ratio, n, sample_rate, rng, 50, -12.0) for ratio in unison)
    source = (glottal + breathiness * white_noise(n, rng)) * voiced
    vocal_tract = formant_filter(
        source, sample_rate, np.array(boundaries), np.array(formants) * formant_scale, _FORMANT_BANDWIDTHS_HZ
    )
    radiated = np.diff(vocal_tract, prepend=np.float32(0.0))  # lip radiation: +6 dB per octave
    # Differenced white noise rises 6 dB per octave: the bright hiss of "s" and "sh", at no filter cost.
    hiss = np.diff(white_noise(n + 1, rng)) * frication
    return unit_rms(unit_rms(radiated) + 0.3 * hiss)


def _talk(n: int, sample_rate: int, rng: np.random.Generator, f0_hz: float, shout_probability: float = 0.0):
    """Syllables of running speech: phrases of 3-11 syllables (4-8 a second) with falling pitch and the
    odd accent, 0.15-0.7 s pauses between phrases; some syllables shouted (higher, longer, louder)."""
    syllables: list[_Syllable] = []
    t = int(rng.uniform(0.0, min(0.5 * sample_rate, n / 2)))
    while t < n:
        count = int(rng.integers(3, 12))
        declination = np.linspace(rng.uniform(1.05, 1.2), rng.uniform(0.8, 0.9), count)
        for index in range(count):
            shout = rng.random() < shout_probability
            consonant = int(rng.uniform(0.03, 0.09) * sample_rate)
            vowel = int((rng.uniform(0.25, 0.6) if shout else rng.uniform(0.08, 0.2)) * sample_rate)
            pitch = f0_hz * declination[index] * (rng.uniform(1.4, 1.8) if shout else 1.0)
            accent = rng.uniform(1.1, 1.2) if rng.random() < 0.3 else 1.0
            vowel_choice = _OPEN_VOWELS if shout else range(len(_VOWEL_FORMANTS_HZ))
            syllables.append(
                _Syllable(
                    start=t,
                    consonant=consonant,
                    vowel=vowel,
                    f0_start_hz=pitch * accent,
                    f0_end_hz=pitch * (1.0 if accent == 1.0 else 0.95),
                    vowel_index=int(rng.choice(vowel_choice)),
                    # The first is fricated so that even the shortest clip starts with sound.
                    fricative=not syllables or rng.random() < 0.4,
                    level=1.0 if shout else rng.uniform(0.6, 1.0),
                )
            )
            t += consonant + vowel
        t += int(rng.uniform(0.15, 0.7) * sample_rate)
    return syllables


def _adult_voice(rng: np.random.Generator) -> tuple[float, float]:
    """(f0_hz, formant_scale) of a random adult: men ~95-140 Hz, women ~170-240 Hz."""
    if rng.random() < 0.5:
        return rng.uniform(95.0, 140.0), rng.uniform(0.95, 1.05)
    return rng.uniform(170.0, 240.0), rng.uniform(1.1, 1.2)


def _babble(n: int, sample_rate: int, rng: np.random.Generator, brightness_hz: float) -> np.ndarray:
    """(n,) unit-RMS bed of many distant voices: speech-shaped noise with a faint syllabic flutter."""
    frames = stft_frames(n)
    flutter = 1.0 + 0.2 * slow_noise(frames, 4.0 / frame_rate_hz(sample_rate), rng)
    swell = np.exp(0.3 * slow_noise(frames, 0.2 / frame_rate_hz(sample_rate), rng))
    spectrum = band_gain(stft_hz(sample_rate), 150.0, brightness_hz, order=1, slope_db_per_octave=-2.0)
    return stft_noise(((flutter * swell)[:, None] * spectrum[None, :]).astype(np.float32), n, rng)


def speech(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One person talking: a man or a woman, in phrases with pauses, at a natural syllable rate."""
    f0_hz, formant_scale = _adult_voice(rng)
    return _render_voice(_talk(n, sample_rate, rng, f0_hz), n, sample_rate, rng, formant_scale, 0.03)


def _passing(
    n: int,
    sample_rate: int,
    rng: np.random.Generator,
    window_s: tuple[float, float],
    voice: Callable[[int], np.ndarray],
) -> np.ndarray:
    """(n,) someone heard for a stretch of `window_s` seconds (all of a shorter clip) as they pass by,
    fading in and out; `voice(m)` renders their m samples."""
    m = min(n, int(rng.uniform(*window_s) * sample_rate))
    out = np.zeros(n, dtype=np.float32)
    overlay(out, int(rng.integers(n - m + 1)), voice(m) * note_envelope(m, sample_rate, 0.3, 0.3))
    return out


def crowd(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A crowd: the murmur of many voices (speech-shaped babble, swelling and easing) with two nearer
    talkers standing out as they pass."""
    out = _babble(n, sample_rate, rng, rng.uniform(2500.0, 4000.0))
    for _ in range(2):
        f0_hz, formant_scale = _adult_voice(rng)

        def talker(m: int, f0_hz=f0_hz, formant_scale=formant_scale) -> np.ndarray:
            return _render_voice(_talk(m, sample_rate, rng, f0_hz), m, sample_rate, rng, formant_scale, 0.03)

        out += rng.uniform(0.3, 0.6) * _passing(n, sample_rate, rng, (3.0, 6.0), talker)
    return out


def _laugh(sample_rate: int, rng: np.random.Generator, f0_hz: float, start: int) -> list[_Syllable]:
    """A burst of laughter: 4-8 breathy "ha"s, ~5 a second, falling in pitch."""
    count = int(rng.integers(4, 9))
    spacing = int(sample_rate / rng.uniform(4.0, 6.0))
    pitches = f0_hz * np.linspace(1.5, 1.1, count)
    return [
        _Syllable(
            start + i * spacing, int(0.05 * sample_rate), int(0.08 * sample_rate), p, p * 0.95, 0, True, 0.8
        )
        for i, p in enumerate(pitches)
    ]


def _child(m: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(m,) a child at play: chatter with shouts (30% of syllables) and, now and then, a laugh."""
    f0_hz = rng.uniform(230.0, 330.0)
    syllables = _talk(m, sample_rate, rng, f0_hz, shout_probability=0.3)
    for onset in poisson_onsets(m, sample_rate, 0.15, rng)[:1]:
        laugh = _laugh(sample_rate, rng, f0_hz, int(onset))
        laugh_end = laugh[-1].start + laugh[-1].consonant + laugh[-1].vowel
        # A child laughing is not talking: drop the syllables the laugh overlaps.
        talk = [s for s in syllables if s.start + s.consonant + s.vowel < onset or s.start > laugh_end]
        syllables = sorted(talk + laugh, key=lambda s: s.start)
    return _render_voice(syllables, m, sample_rate, rng, rng.uniform(1.25, 1.35), 0.08)


def children_playing(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A playground: high children's voices (230-330 Hz, short vocal tracts) chattering, shouting and
    laughing as they run past, over the bright hubbub of the rest."""
    out = 0.3 * _babble(n, sample_rate, rng, 5000.0)
    for _ in range(2):
        out += rng.uniform(0.6, 1.0) * _passing(
            n, sample_rate, rng, (3.0, 7.0), lambda m: _child(m, sample_rate, rng)
        )
    return out


def chant(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Chant: one to three voices in unison, sustaining open vowels (0.3-1.2 s notes) on a reciting tone
    and a few neighbouring degrees of a mode, gliding between notes, breathing between phrases, in a
    reverberant hall."""
    tonic_hz = rng.uniform(100.0, 170.0)
    mode_semitones = np.array([0, 2, 3, 5, 7, -2])
    weights = np.array([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    plan: list[tuple[int, int, int, float, int, bool]] = []
    t = int(rng.uniform(0.0, min(0.4 * sample_rate, n / 2)))
    while t < n:
        phrase_end = t + int(rng.uniform(3.0, 8.0) * sample_rate)
        while t < phrase_end:
            consonant = int(rng.uniform(0.03, 0.08) * sample_rate) if rng.random() < 0.3 else 1
            note = int(rng.uniform(0.3, 1.2) * sample_rate)
            degree = float(2.0 ** (rng.choice(mode_semitones, p=weights) / 12.0))
            plan.append((t, consonant, note, degree, int(rng.choice(_OPEN_VOWELS)), consonant > 1))
            t += consonant + note
        t += int(rng.uniform(0.5, 1.0) * sample_rate)
    syllables = [
        _Syllable(start, consonant, note, tonic_hz * degree, tonic_hz * degree, vowel, fricative, 1.0)
        for start, consonant, note, degree, vowel, fricative in plan
    ]
    unison = tuple(rng.uniform(0.99, 1.01, int(rng.integers(1, 4))))
    out = _render_voice(syllables, n, sample_rate, rng, rng.uniform(0.95, 1.05), 0.02, unison)
    return echo(out, sample_rate, (0.083, 0.19, 0.37, 0.61), (0.5, 0.35, 0.25, 0.15))


def _step_sound(sample_rate: int, rng: np.random.Generator, gravel: bool) -> np.ndarray:
    """(M,) one footfall: heel then toe, on a hard floor (a click and a thud) or on gravel (a crunch),
    with the soft scuff of the sole rolling between them."""
    length = int(0.2 * sample_rate)
    step = np.zeros(length, dtype=np.float32)
    toe_delay = int(rng.uniform(0.05, 0.09) * sample_rate)
    for offset, strength in ((0, 1.0), (toe_delay, 0.6)):
        part = length - offset
        if gravel:
            crunch = filter_band(white_noise(part, rng), sample_rate, 1000.0, 6000.0)
            grains = np.tanh(slow_noise(part, 400.0 / sample_rate, rng)) ** 2
            sound = crunch * grains * attack_decay(part, sample_rate, 0.005, rng.uniform(0.08, 0.15))
        else:
            click = filter_band(white_noise(part, rng), sample_rate, 1000.0, 3000.0)
            thud = filter_band(white_noise(part, rng), sample_rate, None, 200.0)
            sound = 0.5 * click * attack_decay(part, sample_rate, 0.0005, 0.03)
            sound += 2.0 * thud * attack_decay(part, sample_rate, 0.002, 0.06)
        step[offset:] += strength * sound
    scuff = filter_band(white_noise(length, rng), sample_rate, 300.0, 4000.0)
    return step + 0.1 * scuff * note_envelope(length, sample_rate, 0.02, 0.1)


def walk_footsteps(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Someone walking: a footfall every 0.45-0.65 s, heel then toe, on a hard floor or on gravel,
    getting nearer or farther."""
    gravel = rng.random() < 0.5
    variants = [_step_sound(sample_rate, rng, gravel) for _ in range(4)]
    out = np.zeros(n, dtype=np.float32)
    onsets = regular_onsets(n, sample_rate, rng.uniform(0.45, 0.65), 0.02, rng)
    approach = np.linspace(rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0), onsets.size)
    for index, onset in enumerate(onsets):
        overlay(out, onset, variants[index % 4], approach[index] * rng.uniform(0.8, 1.0))
    return out


def applause(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An audience clapping: 20-60 claps a second (each a 1-3 kHz noise snap of a few ms) merging into
    a crackling roar that swells and eases."""
    length = int(0.03 * sample_rate)
    claps = [
        filter_band(white_noise(length, rng), sample_rate, centre * 0.6, centre * 1.6)
        * attack_decay(length, sample_rate, 0.0005, rng.uniform(0.01, 0.03))
        for centre in rng.uniform(800.0, 2500.0, 12)
    ]
    onsets = poisson_onsets(n, sample_rate, rng.uniform(20.0, 60.0), rng)
    level = np.exp(0.3 * slow_noise(n, 0.3 / sample_rate, rng))
    out = np.zeros(n, dtype=np.float32)
    for onset, choice in zip(onsets, rng.integers(len(claps), size=onsets.size), strict=True):
        overlay(out, onset, claps[choice], level[onset] * rng.uniform(0.5, 1.0))
    return out


GENERATORS: dict[str, SoundGenerator] = {
    "Speech": speech,
    "Crowd": crowd,
    "Children playing": children_playing,
    "Chant": chant,
    "Walk, footsteps": walk_footsteps,
    "Applause": applause,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
