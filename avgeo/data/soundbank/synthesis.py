"""Shared DSP primitives of the procedural sound bank: noise colours, control signals, oscillators and
filters (envelopes and event placement: `avgeo.data.soundbank.events`).

Conventions: signals are float32 arrays `(S,)` at `sample_rate` Hz. Noise and oscillator primitives
return unit RMS, so a generator mixes its components with explicit weights. Randomness comes only from
the `rng` argument: a render is a pure function of the generator's state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import scipy.fft
import scipy.signal

SoundGenerator = Callable[[int, int, np.random.Generator], np.ndarray]
"""`generator(n_samples, sample_rate, rng) -> (n_samples,) float32`: one class's procedural source."""

TABLE_SIZE = 4096
"""Samples per single-cycle wavetable (a power of two, so phase indices wrap with a bit mask)."""

T60_DECAY = math.log(1000.0)
"""Amplitude decays by exp(-T60_DECAY) = -60 dB over a t60 time."""


def unit_rms(signal: np.ndarray) -> np.ndarray:
    """(S,) -> (S,) float32 scaled to RMS 1; an all-zero signal stays zero."""
    rms = math.sqrt(float(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0
    return (signal / rms).astype(np.float32) if rms > 0 else signal.astype(np.float32)


# ---------------------------------------------------------------- noise colours


def rfft_hz(n: int, sample_rate: float) -> np.ndarray:
    """(n // 2 + 1,) float32 centre frequency in Hz of each rfft bin of an n-sample signal."""
    return np.fft.rfftfreq(n, 1.0 / sample_rate).astype(np.float32)


def band_gain(
    freq_hz: np.ndarray,
    low_hz: float | None = None,
    high_hz: float | None = None,
    order: int = 2,
    slope_db_per_octave: float = 0.0,
) -> np.ndarray:
    """Amplitude response (same shape as `freq_hz`): Butterworth-like edges at `low_hz` / `high_hz` of
    `order`, times a power-law tilt of `slope_db_per_octave` relative to 1 kHz (-3 pink, -6 brown)."""
    freq = np.maximum(freq_hz, 1.0)
    gain = (freq / 1000.0) ** np.float32(slope_db_per_octave / (20.0 * math.log10(2.0)))
    if low_hz is not None:
        gain = gain / np.sqrt(1.0 + (low_hz / freq) ** (2 * order))
    if high_hz is not None:
        gain = gain / np.sqrt(1.0 + (freq / high_hz) ** (2 * order))
    return gain.astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 unit-RMS white noise, uniform in [-sqrt(3), sqrt(3)]: several times cheaper to draw
    than Gaussian noise, and indistinguishable from it once filtered."""
    return (rng.random(n, dtype=np.float32) - np.float32(0.5)) * np.float32(2.0 * math.sqrt(3.0))


def complex_gaussian(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """complex64 array of `shape`, real and imaginary parts standard normal (Box-Muller from uniforms,
    which is faster than numpy's normal sampler for float32)."""
    radius = np.sqrt(np.float32(-2.0) * np.log1p(-rng.random(shape, dtype=np.float32)))
    angle = rng.random(shape, dtype=np.float32) * np.float32(2.0 * np.pi)
    values = np.empty(shape, dtype=np.complex64)
    values.real = radius * np.cos(angle)
    values.imag = radius * np.sin(angle)
    return values


def shaped_noise(gain: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) unit-RMS Gaussian noise whose rfft amplitude follows `gain` (n // 2 + 1,); circular in time."""
    return unit_rms(scipy.fft.irfft(complex_gaussian((n // 2 + 1,), rng) * gain, n))


def coloured_noise(
    n: int,
    sample_rate: float,
    rng: np.random.Generator,
    slope_db_per_octave: float = 0.0,
    low_hz: float | None = None,
    high_hz: float | None = None,
    order: int = 2,
) -> np.ndarray:
    """(n,) unit-RMS stationary noise with a power-law colour and optional band edges (see `band_gain`)."""
    return shaped_noise(
        band_gain(rfft_hz(n, sample_rate), low_hz, high_hz, order, slope_db_per_octave), n, rng
    )


NOISE_HOP = 512
"""Hop of `stft_noise` frames (FFT size twice that): 10.7 ms at 48 kHz, finer than any swell, gust or
syllable the families shape with it."""


def stft_hz(sample_rate: float) -> np.ndarray:
    """(NOISE_HOP + 1,) float32 bin frequencies in Hz of the frames `stft_noise` synthesises."""
    return rfft_hz(2 * NOISE_HOP, sample_rate)


def stft_frames(n: int) -> int:
    """Number of `stft_noise` frames covering n samples; frame t is centred on sample t * NOISE_HOP."""
    return -(-n // NOISE_HOP) + 1


def frame_rate_hz(sample_rate: float) -> float:
    """`stft_noise` frames per second."""
    return sample_rate / NOISE_HOP


def frame_times_s(n: int, sample_rate: float) -> np.ndarray:
    """(T,) float64 time in seconds of each `stft_noise` frame covering n samples."""
    return np.arange(stft_frames(n)) / frame_rate_hz(sample_rate)


def at_frames(control: np.ndarray) -> np.ndarray:
    """(n,) audio-rate control -> (T,) its value at each `stft_noise` frame centre."""
    return control[np.minimum(np.arange(stft_frames(control.size)) * NOISE_HOP, control.size - 1)]


def stft_noise(magnitude: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Time-varying coloured noise: (T, NOISE_HOP + 1) amplitude per frame and bin -> (n,) unit RMS.

    Random-phase frames of twice the hop are overlap-added under a square-root Hann window, whose
    squares sum to one, so a constant `magnitude` gives stationary noise.
    """
    hop = NOISE_HOP
    frames, bins = magnitude.shape
    if bins != hop + 1 or frames < stft_frames(n):
        raise ValueError(f"magnitude {magnitude.shape} does not cover {n} samples at hop {hop}")
    spectrum = complex_gaussian((frames, bins), rng)
    spectrum *= magnitude
    window = np.sqrt(scipy.signal.get_window("hann", 2 * hop)).astype(np.float32)
    grains = scipy.fft.irfft(spectrum, 2 * hop, axis=1) * window
    out = np.zeros((frames + 1) * hop, dtype=np.float32)
    out[: frames * hop] += grains[:, :hop].ravel()
    out[hop:] += grains[:, hop:].ravel()
    return unit_rms(out[hop : hop + n])


# ---------------------------------------------------------------- control signals


def _join_knots(knots: np.ndarray, spacing: int, start: int, n: int) -> np.ndarray:
    """(n,) float32 straight lines between `knots` placed every `spacing` samples, from sample `start`."""
    knots = knots.astype(np.float32)
    fraction = np.arange(spacing, dtype=np.float32) / np.float32(spacing)
    joined = knots[:-1, None] + (knots[1:] - knots[:-1])[:, None] * fraction[None, :]
    return joined.ravel()[start : start + n]


def slow_noise(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 smooth random control: standard-normal knots every round(1 / rate) samples, linearly
    joined, starting at a random point between two knots.

    `rate` is in knots per sample; pass `rate_hz / sample_rate` for audio-rate signals, or
    `rate_hz / frame_rate_hz(sample_rate)` for one value per `stft_noise` frame.
    """
    spacing = max(1, round(1.0 / rate))
    start = int(rng.integers(spacing))
    return _join_knots(rng.standard_normal((start + n) // spacing + 2), spacing, start, n)


def breakpoints(n: int, sample_rate: float, times_s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n,) float32 piecewise-linear curve through (`times_s`, `values`), held flat past either end.

    Evaluated every 32 samples (0.7 ms at 48 kHz) and joined linearly: control curves need no more.
    """
    spacing = 32
    grid_s = np.arange(n // spacing + 2) * (spacing / sample_rate)
    return _join_knots(np.interp(grid_s, times_s, values), spacing, 0, n)


# ---------------------------------------------------------------- oscillators


@functools.cache
def harmonic_table(highest_harmonic: int, slope_db_per_octave: float, odd_only: bool) -> np.ndarray:
    """(TABLE_SIZE,) float32 unit-RMS single cycle with partials 1..highest_harmonic (odd ones only if
    `odd_only`), amplitudes falling by `slope_db_per_octave` (-6: sawtooth / square, -12: glottal)."""
    harmonics = np.arange(1, highest_harmonic + 1, 2 if odd_only else 1, dtype=np.float64)
    amplitudes = harmonics ** (slope_db_per_octave / (20.0 * math.log10(2.0)))
    cycle = np.arange(TABLE_SIZE) / TABLE_SIZE
    return unit_rms(amplitudes @ np.sin(2.0 * np.pi * np.outer(harmonics, cycle)))


def oscillator(
    freq_hz: np.ndarray | float,
    n: int,
    sample_rate: float,
    rng: np.random.Generator,
    highest_harmonic: int = 1,
    slope_db_per_octave: float = -6.0,
    odd_only: bool = False,
) -> np.ndarray:
    """(n,) unit-RMS band-limited periodic tone following `freq_hz` (scalar or (n,)), random start phase.

    Partials above 0.45 * sample_rate at the highest frequency are dropped, so nothing aliases.
    """
    freq = np.asarray(freq_hz)
    top_hz = max(float(freq.max(initial=1.0)), 1.0)
    highest = max(1, min(highest_harmonic, int(0.45 * sample_rate / top_hz)))
    table = harmonic_table(highest, slope_db_per_octave, odd_only)
    # Phase is accumulated in float64 (float32 would drift audibly over seconds), in table units.
    if freq.ndim == 0:
        phase = np.arange(n, dtype=np.float64) * (float(freq) * TABLE_SIZE / sample_rate)
    else:
        phase = np.cumsum(freq, dtype=np.float64)
        phase *= TABLE_SIZE / sample_rate
    phase += rng.random() * TABLE_SIZE
    index = phase.astype(np.int64)
    index &= TABLE_SIZE - 1
    return table[index]


def decaying_partials(
    m: int,
    sample_rate: float,
    freqs_hz: np.ndarray,
    amplitudes: np.ndarray,
    t60_s: np.ndarray,
    phases_rad: np.ndarray,
) -> np.ndarray:
    """(m,) float32 struck-object ring: sum over partials of a * exp(-t / tau) * sin(2 pi f t + phase),
    each argument (P,), with tau set by the partial's t60. Partials at or above 0.45 * sample_rate are
    left out; amplitudes are absolute (no normalisation).

    Computed exactly in blocks: a partial at block start t0 plus offset u splits into
    sin(w t0 + phase) cos(w u) + cos(w t0 + phase) sin(w u), so the whole sum is two small matrix
    products instead of P full-length transcendental evaluations.
    """
    audible = np.asarray(freqs_hz) < 0.45 * sample_rate
    omega = 2.0 * np.pi * np.asarray(freqs_hz, dtype=np.float64)[audible] / sample_rate  # rad / sample
    damping = T60_DECAY / (np.asarray(t60_s, dtype=np.float64)[audible] * sample_rate)  # 1 / sample
    block = 256
    starts = np.arange(0, m, block, dtype=np.float64)[:, None]  # (B, 1)
    offsets = np.arange(block, dtype=np.float64)[None, :]  # (1, U)
    scale = np.asarray(amplitudes, dtype=np.float64)[audible] * np.exp(-damping * starts)  # (B, P)
    # Reduced modulo 2 pi before sin/cos: large arguments take numpy's slow path.
    angle = np.mod(omega * starts + np.asarray(phases_rad, dtype=np.float64)[audible], 2.0 * np.pi)
    within = np.exp(-damping[:, None] * offsets)  # (P, U)
    blocks = (scale * np.sin(angle)).astype(np.float32) @ (within * np.cos(omega[:, None] * offsets)).astype(
        np.float32
    )
    blocks += (scale * np.cos(angle)).astype(np.float32) @ (within * np.sin(omega[:, None] * offsets)).astype(
        np.float32
    )
    return blocks.ravel()[:m]


def echo(
    signal: np.ndarray, sample_rate: float, delays_s: tuple[float, ...], gains: tuple[float, ...]
) -> np.ndarray:
    """(S,) -> (S,) float32 signal plus delayed, scaled copies: the cheap stand-in for a large space."""
    out = signal.astype(np.float32, copy=True)
    for delay_s, gain in zip(delays_s, gains, strict=True):
        shift = int(delay_s * sample_rate)
        if shift < out.size:
            out[shift:] += gain * signal[: out.size - shift]
    return out


# ---------------------------------------------------------------- filters


@functools.lru_cache(maxsize=4)
def _ripple(n: int) -> np.ndarray:
    ripple = np.tile(np.array([1e-20, 0.0, -1e-20, 0.0], dtype=np.float32), n // 4 + 1)[:n]
    ripple.flags.writeable = False
    return ripple


def _guarded(signal: np.ndarray) -> np.ndarray:
    """`signal` plus an inaudible (-400 dB) ripple at a quarter of the sample rate, for IIR filters: after
    silence their state would otherwise decay into subnormal floats and slow the filter a hundredfold.
    (Not at Nyquist or DC: Butterworth low-, high- and band-passes have zeros there.)"""
    return signal + _ripple(signal.size)


def filter_band(
    signal: np.ndarray,
    sample_rate: float,
    low_hz: float | None = None,
    high_hz: float | None = None,
    order: int = 2,
) -> np.ndarray:
    """(S,) -> (S,) float32 Butterworth high-pass (`low_hz`), low-pass (`high_hz`) or band-pass (both).

    Edges are clamped below Nyquist, so generators written for 48 kHz also run at lower rates.
    """
    nyquist_hz = 0.49 * sample_rate
    high = None if high_hz is None or high_hz >= nyquist_hz else high_hz
    if low_hz is not None and high is not None:
        sos = scipy.signal.butter(order, (low_hz, high), btype="bandpass", fs=sample_rate, output="sos")
    elif low_hz is not None:
        sos = scipy.signal.butter(
            order, min(low_hz, 0.9 * nyquist_hz), btype="highpass", fs=sample_rate, output="sos"
        )
    elif high is not None:
        sos = scipy.signal.butter(order, high, btype="lowpass", fs=sample_rate, output="sos")
    else:
        return signal.astype(np.float32)
    return scipy.signal.sosfilt(sos, _guarded(signal)).astype(np.float32)


def smooth(signal: np.ndarray, sample_rate: float, time_constant_s: float) -> np.ndarray:
    """(S,) -> (S,) float32 one-pole low-pass (a control-signal slew), started at the first value."""
    pole = math.exp(-1.0 / (time_constant_s * sample_rate))
    smoothed, _ = scipy.signal.lfilter([1.0 - pole], [1.0, -pole], _guarded(signal), zi=[pole * signal[0]])
    return smoothed.astype(np.float32)


def resonator_section(freq_hz: float, bandwidth_hz: float, sample_rate: float) -> np.ndarray:
    """(6,) second-order-section row of a two-pole resonator with unit gain at 0 Hz (a formant)."""
    radius = math.exp(-math.pi * bandwidth_hz / sample_rate)
    theta = 2.0 * math.pi * min(freq_hz, 0.45 * sample_rate) / sample_rate
    a1, a2 = -2.0 * radius * math.cos(theta), radius * radius
    return np.array([1.0 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])


def formant_filter(
    source: np.ndarray,
    sample_rate: float,
    boundaries: np.ndarray,
    formants_hz: np.ndarray,
    bandwidths_hz: np.ndarray,
) -> np.ndarray:
    """(S,) -> (S,) float32 cascade of resonators whose centres change at segment `boundaries`.

    `boundaries` (K + 1,) sample indices from 0 to S; `formants_hz` (K, F) one formant set per segment;
    `bandwidths_hz` (F,). The filter state carries across segments, so changes do not click.
    """
    out = np.empty(source.shape, dtype=np.float32)
    source = _guarded(source)
    state = np.zeros((formants_hz.shape[1], 2))
    for start, stop, formants in zip(boundaries[:-1], boundaries[1:], formants_hz, strict=True):
        if stop <= start:
            continue
        sos = np.stack(
            [resonator_section(f, b, sample_rate) for f, b in zip(formants, bandwidths_hz, strict=True)]
        )
        out[start:stop], state = scipy.signal.sosfilt(sos, source[start:stop], zi=state)
    return out


def voiced_call(
    f0_hz: np.ndarray,
    sample_rate: float,
    rng: np.random.Generator,
    formants_hz: np.ndarray | tuple[float, ...],
    bandwidths_hz: tuple[float, ...],
    slope_db_per_octave: float = -9.0,
    roughness: float = 0.0,
    breathiness: float = 0.0,
) -> np.ndarray:
    """(m,) unit-RMS animal or human call following `f0_hz` (m,): a harmonic source (rough: amplitude
    jittered at ~100 Hz by up to +-roughness; breathy: noise added) through formant resonators, (F,)
    fixed or (K, F) moving through K equal steps (a mouth opening or closing)."""
    m = f0_hz.size
    source = oscillator(
        f0_hz, m, sample_rate, rng, highest_harmonic=60, slope_db_per_octave=slope_db_per_octave
    )
    if roughness:
        source = source * (1.0 + roughness * np.tanh(slow_noise(m, 100.0 / sample_rate, rng)))
    if breathiness:
        source = source + breathiness * white_noise(m, rng)
    formants = np.atleast_2d(np.asarray(formants_hz, dtype=np.float64))
    boundaries = np.linspace(0, m, formants.shape[0] + 1).astype(np.int64)
    return unit_rms(formant_filter(source, sample_rate, boundaries, formants, np.array(bandwidths_hz)))
