"""Transport: road traffic, cars, buses, trucks, motorcycles, trains, metros, aircraft, helicopters, boats.

Engines are pulse trains at the firing rate (rpm / 60 * cylinders / 2 for four-stroke engines) with
cycle-to-cycle irregularity, shaped by a muffler low-pass; diesels add clatter (noise gated by each
firing). What separates the classes is the engine's rate and rhythm and what surrounds it: tyre roar,
air brakes, rail joints, blade slap, water.
"""

from __future__ import annotations

import numpy as np

from avgeo.data.soundbank.events import attack_decay, note_envelope, overlay, pass_by, poisson_onsets
from avgeo.data.soundbank.synthesis import (
    SoundGenerator,
    at_frames,
    band_gain,
    breakpoints,
    coloured_noise,
    echo,
    filter_band,
    frame_rate_hz,
    frame_times_s,
    oscillator,
    slow_noise,
    stft_frames,
    stft_hz,
    stft_noise,
    unit_rms,
    white_noise,
)


def _engine(
    firing_hz: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    muffler_hz: float,
    roughness: float,
    clatter: float,
) -> np.ndarray:
    """(n,) unit-RMS engine at `firing_hz` (n,): exhaust pulses through a muffler low-pass, amplitude
    jittered cycle to cycle by `roughness`, plus `clatter` (diesel knock: 1-5 kHz noise at each firing)."""
    n = firing_hz.size
    pulses = oscillator(firing_hz, n, sample_rate, rng, highest_harmonic=60, slope_db_per_octave=-2.0)
    irregular = 1.0 + roughness * slow_noise(n, float(firing_hz.mean()) / sample_rate, rng)
    exhaust = unit_rms(filter_band(pulses * irregular, sample_rate, 20.0, muffler_hz))
    if clatter == 0.0:
        return exhaust
    knock = filter_band(white_noise(n, rng), sample_rate, 1000.0, 5000.0) * np.maximum(pulses, 0.0)
    return unit_rms(exhaust + clatter * unit_rms(knock))


def _road_roar(
    level: np.ndarray, sample_rate: int, n: int, rng: np.random.Generator, low_hz: float, high_hz: float
) -> np.ndarray:
    """(n,) unit-RMS tyre-and-air roar (pink, `low_hz`-`high_hz`) whose amplitude follows `level`, one
    value per `stft_noise` frame."""
    spectrum = band_gain(stft_hz(sample_rate), low_hz, high_hz, order=2, slope_db_per_octave=-3.0)
    return stft_noise(level[:, None] * spectrum[None, :], n, rng)


def _gear_pulls(
    n: int, sample_rate: int, rng: np.random.Generator, idle_rpm: float, top_rpm: float
) -> np.ndarray:
    """(n,) rpm: idle, then pulls through the gears (each climbing to near `top_rpm`, the shift dropping
    it by a third), or a steady cruise with small throttle changes."""
    clip_s = n / sample_rate
    if rng.random() < 0.5:
        cruise = rng.uniform(0.45, 0.7) * top_rpm
        times = np.arange(0.0, clip_s + 2.0, 1.5)
        return breakpoints(n, sample_rate, times, cruise * (1.0 + 0.06 * rng.standard_normal(times.size)))
    times, rpms = [0.0], [idle_rpm]
    t = rng.uniform(0.3, 2.0)
    times.append(t)
    rpms.append(idle_rpm)
    while t < clip_s:
        t += rng.uniform(1.2, 2.8)
        times.append(t)
        rpms.append(top_rpm * rng.uniform(0.75, 1.0))
        t += 0.25
        times.append(t)
        rpms.append(rpms[-1] * rng.uniform(0.6, 0.72))
    return breakpoints(n, sample_rate, np.array(times), np.array(rpms))


def car(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A nearby car: four-cylinder petrol engine (idle ~800 rpm, pulls to 3-4.5k) and tyre roar with speed."""
    rpm = _gear_pulls(n, sample_rate, rng, rng.uniform(700, 900), rng.uniform(3000, 4500))
    engine = _engine(rpm / 60.0 * 2.0, sample_rate, rng, rng.uniform(500, 1000), 0.15, 0.0)
    tyres = _road_roar(at_frames(rpm) / rpm.max(), sample_rate, n, rng, 150.0, 2500.0)
    return engine + rng.uniform(0.2, 0.5) * tyres


def car_passing_by(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One or two cars driving past: a tyre roar swelling to its closest point and fading, engine pitch
    dropping through the Doppler shift."""
    clip_s = n / sample_rate
    frame_s = frame_times_s(n, sample_rate)
    level = np.full(frame_s.size, 0.02, dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        closest_s = rng.uniform(0.15, 0.85) * clip_s
        speed_mps, distance_m = rng.uniform(10.0, 25.0), rng.uniform(3.0, 10.0)
        gain, doppler = pass_by(n, sample_rate, closest_s, speed_mps, distance_m)
        level += pass_by(frame_s.size, frame_rate_hz(sample_rate), closest_s, speed_mps, distance_m)[0] ** 1.5
        firing_hz = rng.uniform(1800, 3000) / 60.0 * 2.0 * doppler
        out += 0.4 * gain**1.5 * _engine(firing_hz, sample_rate, rng, rng.uniform(500, 900), 0.15, 0.0)
    return out + _road_roar(level, sample_rate, n, rng, 200.0, 4000.0) * float(np.sqrt(np.mean(level**2)))


def traffic_noise(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Road traffic at a distance: a continuous low roar, swelling with each of many passing vehicles
    (a new one every 0.7-2 s), with a faint engine drone underneath."""
    clip_s = n / sample_rate
    frame_s = frame_times_s(n, sample_rate)
    level = np.full(frame_s.size, 0.15, dtype=np.float32)
    rate_hz = rng.uniform(0.5, 1.4)
    frame_rate = frame_rate_hz(sample_rate)
    for closest_s in np.cumsum(rng.exponential(1.0 / rate_hz, int(clip_s * rate_hz * 2) + 6)) - 3.0:
        speed_mps, distance_m = rng.uniform(8.0, 20.0), rng.uniform(15.0, 60.0)
        level += pass_by(frame_s.size, frame_rate, closest_s, speed_mps, distance_m)[0] ** 2
    roar = _road_roar(np.sqrt(level), sample_rate, n, rng, 50.0, rng.uniform(1200.0, 2000.0))
    drone_hz = rng.uniform(25, 45) * (1.0 + 0.1 * slow_noise(n, 0.3 / sample_rate, rng))
    return roar + 0.25 * _engine(drone_hz, sample_rate, rng, 250.0, 0.3, 0.0)


def _air_hiss(n: int, sample_rate: int, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    """(n,) bursts of compressed air (brakes, doors, suspension): bright noise, sharp start, 0.4-1.5 s."""
    gate = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rate_hz, rng):
        length = int(rng.uniform(0.4, 1.5) * sample_rate)
        overlay(
            gate, onset, attack_decay(length, sample_rate, 0.01, length / sample_rate), rng.uniform(0.5, 1.0)
        )
    return filter_band(white_noise(n, rng), sample_rate, 2500.0, 10000.0) * gate


def bus(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A city bus at a stop: six-cylinder diesel clattering at idle (30-45 Hz firing), pulling away
    smoothly, with hisses of its air brakes and doors."""
    idle_rpm = rng.uniform(600, 850)
    pull_s = rng.uniform(0.3, 0.8) * n / sample_rate
    rpm = breakpoints(
        n, sample_rate, np.array([0.0, pull_s, pull_s + 3.0]), np.array([idle_rpm, idle_rpm, 1600.0])
    )
    engine = _engine(rpm / 60.0 * 3.0, sample_rate, rng, rng.uniform(300, 500), 0.25, 0.6)
    return engine + 1.2 * _air_hiss(n, sample_rate, rng, rng.uniform(0.15, 0.3))


def truck(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A heavy truck under load: low, growling diesel (50-95 Hz firing) through slow gear changes, and
    bursts of engine braking: a loud staccato bark as the rpm falls."""
    clip_s = n / sample_rate
    times, rpms, t = [0.0], [rng.uniform(1000, 1300)], 0.0
    while t < clip_s:
        t += rng.uniform(2.0, 4.0)
        times.append(t)
        rpms.append(rng.uniform(1600, 1900))
        t += 0.6
        times.append(t)
        rpms.append(rng.uniform(1000, 1250))
    rpm = breakpoints(n, sample_rate, np.array(times), np.array(rpms))
    engine = _engine(rpm / 60.0 * 3.0, sample_rate, rng, rng.uniform(350, 600), 0.3, 0.3)
    barking = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, 0.12, rng):
        length = min(n - onset, int(rng.uniform(1.0, 2.5) * sample_rate))
        bark = _engine(rpm[onset : onset + length] / 60.0 * 3.0, sample_rate, rng, 2500.0, 0.6, 0.2)
        overlay(barking, onset, bark * note_envelope(length, sample_rate, 0.05, 0.3))
    rumble = coloured_noise(n, sample_rate, rng, -6.0, 30.0, 500.0)
    return engine + 1.5 * barking + 0.3 * rumble


def motorcycle(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A V-twin: loping uneven firing (every other beat stronger), raspy open exhaust, fast throttle
    blips from ~1000 to 4000-7000 rpm."""
    clip_s = n / sample_rate
    idle_rpm = rng.uniform(900, 1200)
    times, rpms, t = [0.0], [idle_rpm], rng.uniform(0.2, 1.5)
    while t < clip_s:
        times += [t, t + rng.uniform(0.25, 0.6)]
        rpms += [idle_rpm, rng.uniform(4000, 7000)]
        t = times[-1] + rng.uniform(0.6, 1.4)
        times.append(t)
        rpms.append(idle_rpm * rng.uniform(1.0, 1.6))
        t += rng.uniform(0.3, 1.5)
    rpm = breakpoints(n, sample_rate, np.array(times), np.array(rpms))
    firing_hz = rpm / 60.0
    engine = _engine(firing_hz, sample_rate, rng, rng.uniform(1500, 3000), 0.5, 0.3)
    lope = 1.0 + 0.6 * oscillator(firing_hz / 2.0, n, sample_rate, rng)
    return engine * lope


def _clack(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(M,) a wheel crossing a rail joint: a ringing metallic hit over a dull thump."""
    length = int(0.08 * sample_rate)
    ring = filter_band(white_noise(length, rng), sample_rate, 500.0, 3500.0)
    thump = filter_band(white_noise(length, rng), sample_rate, None, 200.0)
    return ring * attack_decay(length, sample_rate, 0.001, 0.03) + 2.0 * thump * attack_decay(
        length, sample_rate, 0.002, 0.08
    )


def train(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A passing train: a diesel locomotive swelling past, then the wagons' rumble and the rhythmic
    "da-dum" of wheel pairs over rail joints, one pair of pairs per wagon length."""
    clip_s = n / sample_rate
    speed_mps = rng.uniform(12.0, 30.0)
    arrive_s = rng.uniform(-0.3, 0.4) * clip_s
    frame_s = frame_times_s(n, sample_rate)
    # The wagons keep rumbling after the locomotive has passed: a step up at its arrival.
    wagons = np.where(frame_s >= arrive_s, np.float32(1.0), np.float32(0.05))
    level = wagons + pass_by(frame_s.size, frame_rate_hz(sample_rate), arrive_s, speed_mps, 15.0)[0]
    rumble = _road_roar(level, sample_rate, n, rng, 30.0, 1500.0)
    gain, doppler = pass_by(n, sample_rate, arrive_s, speed_mps, 15.0)
    locomotive = gain * _engine(rng.uniform(60, 110) * doppler, sample_rate, rng, 600.0, 0.4, 0.0)
    clacks = np.zeros(n, dtype=np.float32)
    wagon_s = rng.uniform(18.0, 26.0) / speed_mps
    axle_s = 2.5 / speed_mps
    variants = [_clack(sample_rate, rng) for _ in range(3)]
    wagon_start = arrive_s
    while wagon_start < clip_s:
        for bogie_s in (0.0, wagon_s - 4.0 * axle_s):
            for axle in (0.0, axle_s):
                onset = int((wagon_start + bogie_s + axle) * sample_rate)
                if 0 <= onset < n:
                    overlay(clacks, onset, variants[int(rng.integers(3))], rng.uniform(0.6, 1.0))
        wagon_start += wagon_s
    return rumble + 0.8 * locomotive + 1.5 * unit_rms(clacks)


def rail_transport(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An electric train or tram pulling away (or braking): the traction inverter "sings" a rising
    staircase of tones, over a motor whine and rolling noise that grow with speed."""
    if rng.random() < 0.6:
        speed = np.linspace(0.05, rng.uniform(0.7, 1.0), n, dtype=np.float32)
    else:
        speed = np.linspace(rng.uniform(0.7, 1.0), 0.1, n, dtype=np.float32)
    steps = np.array([1.0, 9 / 8, 5 / 4, 4 / 3, 3 / 2, 5 / 3, 15 / 8, 2.0])
    step_index = np.minimum((speed * steps.size * rng.uniform(0.9, 1.2)).astype(np.int64), steps.size - 1)
    inverter = oscillator(rng.uniform(300, 500) * steps[step_index], n, sample_rate, rng, 5, -8.0)
    motor = oscillator(80.0 + speed * rng.uniform(600, 1200), n, sample_rate, rng, highest_harmonic=3)
    rolling = _road_roar(0.05 + at_frames(speed), sample_rate, n, rng, 80.0, 2000.0)
    return 0.6 * inverter + 0.4 * motor * speed + 0.8 * rolling


def subway(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A metro in its tunnel: heavy low rumble rattling at 5-15 Hz, wheels squealing (drifting 1.5-5 kHz
    tones) on curves, all reverberating off the tunnel walls."""
    frames = stft_frames(n)
    rattle = 1.0 + 0.35 * slow_noise(frames, rng.uniform(5.0, 15.0) / frame_rate_hz(sample_rate), rng)
    swell = 0.7 + 0.3 * slow_noise(frames, 0.2 / frame_rate_hz(sample_rate), rng)
    rumble = _road_roar(np.abs(rattle * swell), sample_rate, n, rng, 25.0, 600.0)
    squeal = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rng.uniform(0.15, 0.35), rng):
        length = min(n - onset, int(rng.uniform(1.0, 3.5) * sample_rate))
        pitch_hz = rng.uniform(1500, 5000) * (1.0 + 0.01 * slow_noise(length, 2.0 / sample_rate, rng))
        stick_slip = 1.0 + 0.5 * oscillator(rng.uniform(8, 20), length, sample_rate, rng)
        tone = oscillator(pitch_hz, length, sample_rate, rng, highest_harmonic=3, slope_db_per_octave=-10.0)
        overlay(
            squeal,
            onset,
            tone * stick_slip * note_envelope(length, sample_rate, 0.2, 0.4),
            rng.uniform(0.3, 0.8),
        )
    return echo(rumble + squeal, sample_rate, (0.045, 0.11, 0.23), (0.5, 0.35, 0.2))


def aircraft(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A jet airliner flying over: a broadband roar that swells and fades over the clip, duller the
    farther it is, with a fan whine on the approach and the moving notches of the ground reflection."""
    clip_s = n / sample_rate
    closest_s = rng.uniform(0.2, 0.8) * clip_s
    speed_mps, height_m = rng.uniform(70.0, 110.0), rng.uniform(300.0, 900.0)
    frame_s = frame_times_s(n, sample_rate)
    closeness = pass_by(frame_s.size, frame_rate_hz(sample_rate), closest_s, speed_mps, height_m)[
        0
    ]  # height / range
    freq_hz = stft_hz(sample_rate)
    roar = band_gain(freq_hz, 60.0, None, order=2, slope_db_per_octave=-4.0)[None, :]
    absorption_hz = 1500.0 + 6000.0 * closeness[:, None] ** 2  # air absorbs highs over a long path
    dull = 1.0 / np.sqrt(1.0 + (freq_hz[None, :] / absorption_hz) ** 4)
    # Direct sound plus its ground reflection, whose extra path shrinks as the plane climbs overhead.
    delay_s = rng.uniform(0.004, 0.008) * closeness[:, None]
    ground = np.abs(1.0 + 0.6 * np.exp(-2j * np.pi * freq_hz[None, :] * delay_s)).astype(np.float32)
    magnitude = (closeness[:, None] ** 1.5) * roar * dull * ground
    out = stft_noise(magnitude.astype(np.float32), n, rng)
    gain, doppler = pass_by(n, sample_rate, closest_s, speed_mps, height_m)
    whine = oscillator(rng.uniform(1800, 3200) * doppler, n, sample_rate, rng, highest_harmonic=2)
    approaching = np.clip(doppler - 1.0, 0.0, None) * 4.0
    return out * float(np.sqrt(np.mean(closeness**3))) + 0.15 * whine * gain**1.5 * approaching


def helicopter(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A helicopter: main-rotor blade slap at 15-25 Hz (impulsive broadband thuds), the tail rotor's
    buzz at ~5x that rate and a faint turbine whine, drifting nearer or farther."""
    clip_s = n / sample_rate
    gain, doppler = pass_by(
        n, sample_rate, rng.uniform(0.0, 1.0) * clip_s, rng.uniform(10, 40), rng.uniform(60, 200)
    )
    blade_hz = rng.uniform(15.0, 25.0) * doppler
    blade = oscillator(blade_hz, n, sample_rate, rng, highest_harmonic=40, slope_db_per_octave=-1.0)
    slap = np.maximum(blade, 0.0) ** 2
    slap_noise = filter_band(white_noise(n, rng), sample_rate, 80.0, 1500.0) * slap
    thump = filter_band(blade, sample_rate, None, 250.0)
    tail = oscillator(
        blade_hz * rng.uniform(4.5, 6.0), n, sample_rate, rng, highest_harmonic=12, slope_db_per_octave=-6.0
    )
    turbine = oscillator(rng.uniform(6000, 8000) * doppler, n, sample_rate, rng)
    body = (
        unit_rms(slap_noise)
        + 0.7 * unit_rms(thump)
        + 0.3 * filter_band(tail, sample_rate, 200.0, 2000.0)
        + 0.04 * turbine
    )
    return body * gain


def boat(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A motor boat under way: an inboard diesel chugging (20-45 Hz firing) over the hiss of the bow
    wave, rising and falling with the swell, and the slap of waves on the hull."""
    firing_hz = rng.uniform(20, 45) * (1.0 + 0.03 * slow_noise(n, 0.7 / sample_rate, rng))
    engine = _engine(firing_hz, sample_rate, rng, rng.uniform(300, 700), 0.5, 0.0)
    swell_hz = rng.uniform(0.5, 1.2)
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * swell_hz * frame_times_s(n, sample_rate) + rng.uniform(0, 6.3))
    wash = _road_roar(swell.astype(np.float32), sample_rate, n, rng, 300.0, 6000.0)
    slaps = np.zeros(n, dtype=np.float32)
    for onset in poisson_onsets(n, sample_rate, rng.uniform(0.6, 1.5), rng):
        length = int(rng.uniform(0.15, 0.4) * sample_rate)
        splash = filter_band(white_noise(length, rng), sample_rate, 150.0, 2500.0)
        overlay(
            slaps,
            onset,
            splash * attack_decay(length, sample_rate, 0.005, length / sample_rate),
            rng.uniform(0.5, 1.0),
        )
    return engine + 0.7 * wash + 0.8 * unit_rms(slaps)


GENERATORS: dict[str, SoundGenerator] = {
    "Traffic noise, roadway noise": traffic_noise,
    "Car": car,
    "Car passing by": car_passing_by,
    "Bus": bus,
    "Truck": truck,
    "Motorcycle": motorcycle,
    "Train": train,
    "Rail transport": rail_transport,
    "Subway, metro, underground": subway,
    "Aircraft": aircraft,
    "Helicopter": helicopter,
    "Boat, Water vehicle": boat,
}
"""Display name (exactly as in the AudioSet class table) -> generator."""
