"""Warning signals: sirens (wail, yelp, two-tone hi-lo, mechanical, civil defence), horns and beepers.

Each siren family has its own pitch pattern, the cue a listener (or the IC-SAE) uses to tell a
European two-tone ambulance from an American yelping police car.
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import note_envelope, overlay, pass_by, poisson_onsets
from avgeo.data.soundbank.synthesis import (
    SoundGenerator,
    echo,
    filter_band,
    oscillator,
    slow_noise,
    smooth,
    unit_rms,
    white_noise,
)


def _moving_vehicle(n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(gain (n,), doppler (n,)) of an emergency vehicle driving past somewhere in or near the clip."""
    clip_s = n / sample_rate
    return pass_by(
        n,
        sample_rate,
        closest_s=rng.uniform(-0.2, 1.2) * clip_s,
        speed_mps=rng.uniform(8.0, 20.0),
        distance_m=rng.uniform(8.0, 40.0),
    )


def _cyclic_sweep(
    n: int, sample_rate: int, period_s: float, low_hz: float, high_hz: float, rng
) -> np.ndarray:
    """(n,) frequency in Hz rising and falling smoothly between `low_hz` and `high_hz` every `period_s`."""
    period = int(period_s * sample_rate)
    cycle = ((np.arange(n) + rng.integers(period)) % period).astype(np.float32) / np.float32(period)
    return low_hz + (high_hz - low_hz) * (0.5 - 0.5 * np.cos(np.float32(2.0 * np.pi) * cycle))


def _horn_speaker(tone: np.ndarray, sample_rate: int) -> np.ndarray:
    """Electronic sirens play through a horn loudspeaker: little below 300 Hz or above 5 kHz."""
    return filter_band(tone, sample_rate, 300.0, 5000.0)


def siren(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Electronic wail: a slow smooth sweep, 3-6 s per cycle, between ~650 and ~1500 Hz."""
    gain, doppler = _moving_vehicle(n, sample_rate, rng)
    sweep = _cyclic_sweep(
        n, sample_rate, rng.uniform(3.0, 6.0), rng.uniform(550, 800), rng.uniform(1250, 1650), rng
    )
    tone = oscillator(sweep * doppler, n, sample_rate, rng, highest_harmonic=9, slope_db_per_octave=-9.0)
    return _horn_speaker(tone, sample_rate) * gain


def police_car_siren(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Yelp: the same sweep as the wail, but 3-4.5 cycles a second and with a brighter, squarer tone."""
    gain, doppler = _moving_vehicle(n, sample_rate, rng)
    sweep = _cyclic_sweep(
        n, sample_rate, rng.uniform(0.22, 0.33), rng.uniform(650, 850), rng.uniform(1450, 1750), rng
    )
    tone = oscillator(
        sweep * doppler, n, sample_rate, rng, highest_harmonic=11, slope_db_per_octave=-6.0, odd_only=True
    )
    return _horn_speaker(tone, sample_rate) * gain


def ambulance_siren(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """European two-tone hi-lo: two steady pitches a major third to a fourth apart, 0.4-0.7 s each."""
    gain, doppler = _moving_vehicle(n, sample_rate, rng)
    low_hz = rng.uniform(400, 480)
    high_hz = low_hz * rng.uniform(1.25, 1.34)
    half_period = int(rng.uniform(0.4, 0.7) * sample_rate)
    high_half = ((np.arange(n) + rng.integers(2 * half_period)) // half_period) % 2 == 1
    # The oscillator slews between the two pitches in ~15 ms rather than jumping.
    steps = smooth(np.where(high_half, high_hz, low_hz), sample_rate, 0.005)
    tone = oscillator(steps * doppler, n, sample_rate, rng, highest_harmonic=15, slope_db_per_octave=-6.0)
    return _horn_speaker(tone, sample_rate) * gain


def fire_engine_siren(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mechanical siren: a rotor spun up over ~2 s then left to coast down, rich in harmonics and chopped
    air, over the truck's diesel rumble and the odd blast of its air horn."""
    gain, doppler = _moving_vehicle(n, sample_rate, rng)
    top_hz = rng.uniform(450, 700)
    rotor_hz = np.empty(n)
    t = 0
    speed = top_hz * rng.uniform(0.2, 1.0)
    while t < n:
        spin_up = int(rng.uniform(1.5, 3.0) * sample_rate)
        coast = int(rng.uniform(2.0, 4.0) * sample_rate)
        up_time = np.arange(spin_up) / sample_rate
        rising = top_hz - (top_hz - speed) * np.exp(-up_time / rng.uniform(0.5, 0.9))
        coast_time = np.arange(1, coast + 1) / sample_rate
        falling = rising[-1] * np.exp(-coast_time / rng.uniform(2.5, 4.0))
        cycle = np.concatenate((rising, falling))[: n - t]
        rotor_hz[t : t + cycle.size] = cycle
        speed = cycle[-1]
        t += cycle.size
    rotor_hz *= doppler
    tone = oscillator(rotor_hz, n, sample_rate, rng, highest_harmonic=24, slope_db_per_octave=-5.0)
    chopped_air = filter_band(white_noise(n, rng), sample_rate, 800.0, 6000.0)
    siren_sound = tone + 0.35 * unit_rms(chopped_air * (1.0 + tone))
    diesel = unit_rms(
        filter_band(oscillator(rng.uniform(35, 50), n, sample_rate, rng, 30, -4.0), sample_rate, None, 400)
    )
    horn = np.zeros(n, dtype=np.float32)
    horn_hz = rng.uniform(240, 300)
    for onset in poisson_onsets(n, sample_rate, 0.25, rng)[1:]:
        length = int(rng.uniform(0.4, 1.2) * sample_rate)
        blast = _rich_chord((horn_hz,), 1.26, length, sample_rate, rng)
        overlay(horn, onset, blast * note_envelope(length, sample_rate, 0.03, 0.08))
    return (siren_sound + 0.15 * diesel + 0.8 * horn) * gain


def civil_defense_siren(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Outdoor warning siren: a low two-note chord spinning up over seconds, swelling as the rotating head
    turns (8-14 s a turn), heard from afar: dull and echoing off buildings."""
    base_hz = rng.uniform(330, 470)
    ratio = rng.choice([1.19, 1.26])
    time_s = np.arange(n) / sample_rate
    already_spinning = rng.random() < 0.5
    spin = 1.0 if already_spinning else 1.0 - 0.7 * np.exp(-time_s / rng.uniform(1.5, 3.0))
    wobble = 1.0 + 0.004 * slow_noise(n, 0.5 / sample_rate, rng)
    tones = [oscillator(base_hz * r * spin * wobble, n, sample_rate, rng, 8, -8.0) for r in (1.0, ratio)]
    rotation = 0.6 + 0.4 * np.cos(2.0 * np.pi * (time_s / rng.uniform(8.0, 14.0) + rng.random()))
    distant = filter_band((tones[0] + tones[1]) * rotation, sample_rate, 150.0, 2500.0)
    return echo(distant, sample_rate, (0.31, 0.74, 1.37), (0.45, 0.3, 0.2))


def _rich_chord(
    roots_hz: tuple[float, ...], ratio: float, n: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """(n,) unit-RMS sum of buzzy horn tones: each root and root * ratio (a horn pair)."""
    tones = [
        oscillator(root * r, n, sample_rate, rng, highest_harmonic=20, slope_db_per_octave=-4.0)
        for root in roots_hz
        for r in (1.0, ratio)
    ]
    return unit_rms(filter_band(np.sum(tones, axis=0), sample_rate, 250.0, 7000.0))


def car_horn(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Honking: one to three cars, each a buzzy pair of disc horns a third apart, in short beeps,
    double beeps and long blasts."""
    out = np.zeros(n, dtype=np.float32)
    for _ in range(rng.integers(1, 4)):
        root_hz, ratio, level = rng.uniform(360, 500), rng.uniform(1.19, 1.3), rng.uniform(0.4, 1.0)
        for onset in poisson_onsets(n, sample_rate, rng.uniform(0.3, 0.9), rng):
            if rng.random() < 0.4:
                beeps = [int(rng.uniform(0.4, 1.5) * sample_rate)]
            else:
                beeps = [int(rng.uniform(0.1, 0.2) * sample_rate)] * int(rng.integers(1, 4))
            gap = int(rng.uniform(0.07, 0.12) * sample_rate)
            gate = np.zeros(sum(beeps) + gap * (len(beeps) - 1), dtype=np.float32)
            for index, length in enumerate(beeps):
                overlay(gate, index * (length + gap), note_envelope(length, sample_rate, 0.01, 0.03))
            overlay(out, onset, _rich_chord((root_hz,), ratio, gate.size, sample_rate, rng) * gate, level)
    return out


def train_horn(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Locomotive air horn: a three- to five-chime chord in long-long-short-long blasts, heard at a
    distance (dull, with echoes) while the train passes."""
    base_hz = rng.uniform(250, 340)
    ratios = (1.0, 1.19, 1.41, 1.68, 2.0)[: int(rng.integers(3, 6))]
    gain, doppler = pass_by(
        n, sample_rate, rng.uniform(0.0, 1.0) * n / sample_rate, rng.uniform(15, 30), 60.0
    )
    chord = np.sum(
        [oscillator(base_hz * r * doppler, n, sample_rate, rng, 15, -6.0) for r in ratios], axis=0
    ).astype(np.float32)
    gate = np.zeros(n, dtype=np.float32)
    start = int(rng.uniform(0.0, min(1.5 * sample_rate, n / 2)))
    while start < n:
        for long_blast in (True, True, False, True):
            length = int((rng.uniform(1.2, 2.2) if long_blast else rng.uniform(0.4, 0.7)) * sample_rate)
            overlay(gate, start, note_envelope(length, sample_rate, 0.06, 0.15))
            start += length + int(rng.uniform(0.25, 0.5) * sample_rate)
        start += int(rng.uniform(1.5, 4.0) * sample_rate)
    distant = filter_band(chord * gate * gain, sample_rate, 150.0, 4000.0)
    return echo(distant, sample_rate, (0.23, 0.61), (0.35, 0.2))


def reversing_beeps(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Reversing alarm: a ~1 kHz square-ish beep, on and off at the same 0.35-0.5 s, without pause."""
    beep_hz = rng.uniform(950, 1250)
    half_period = int(rng.uniform(0.35, 0.5) * sample_rate)
    on = ((np.arange(n) + rng.integers(2 * half_period)) // half_period) % 2 == 0
    tone = oscillator(
        beep_hz, n, sample_rate, rng, highest_harmonic=7, slope_db_per_octave=-10.0, odd_only=True
    )
    return tone * smooth(on.astype(np.float32), sample_rate, 0.003)


GENERATORS: dict[str, SoundGenerator] = {
    "Siren": siren,
    "Police car (siren)": police_car_siren,
    "Ambulance (siren)": ambulance_siren,
    "Fire engine, fire truck (siren)": fire_engine_siren,
    "Civil defense siren": civil_defense_siren,
    "Vehicle horn, car horn, honking": car_horn,
    "Train horn": train_horn,
    "Reversing beeps": reversing_beeps,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
