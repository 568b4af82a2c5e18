"""SynthConfig: the size of avg-synth and the knobs of its generative model, with the three presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from avgeo.config import ConfigError


@dataclass
class VisualKnobs:
    """How much the frames say about the place (docs/avg-synth.md, "What each modality can tell")."""

    landscape_noise: float = 0.1
    """Chance that a location's landscape is drawn from the global prior instead of its geography."""
    facade_share: float = 0.7
    """Share of a location's buildings in its facade style, the rest in random styles (0: facades say
    nothing about the region)."""
    pixel_noise: float = 0.02
    """Standard deviation of per-frame sensor noise, in [0, 1] intensity units."""


@dataclass
class AudioKnobs:
    """How much the soundtrack says about the place (docs/avg-synth.md, "What each modality can tell")."""

    regional_presence: float = 0.8
    """Multiplier on every regional source's per-clip probability (0: audio carries no regional cue)."""
    regional_gain_db: tuple[float, float] = (-18.0, -2.0)
    """Range of regional (informative) source levels, dB relative to the reference level."""
    landscape_gain_db: tuple[float, float] = (-16.0, -4.0)
    """Range of landscape and weather source levels (surf, insects, traffic, rain), dB."""
    distractor_gain_db: tuple[float, float] = (-10.0, 0.0)
    """Range of distractor levels (wind, speech, footsteps, crowd: heard everywhere), dB."""
    distractors_per_clip: tuple[int, int] = (1, 3)
    """Inclusive range of how many distinct distractors a clip mixes in."""
    confuser_prob: float = 0.3
    """Chance that a clip also carries one regional source of a different, random region."""
    noise_floor_db: float = -40.0
    """Level of the broadband noise floor under every mix, dB."""


@dataclass
class SynthConfig:
    """Size, layout and generative knobs of one avg-synth build (`run_synth`)."""

    n_locations: int = 1000
    """Distinct locations (real GeoNames cities), spread over every inhabited continent."""
    clips_per_location: int = 20
    """Clips rendered per location; they differ in time of day, weather, viewpoint and sounds."""
    clip_duration_s: float = 10.0
    """Length of every clip, seconds."""
    val_fraction: float = 0.2
    """Share of locations (and so of clips) in the validation split; splits are location-disjoint."""
    test_fraction: float = 0.2
    """Share of locations in the test split; the rest is train."""
    min_population: int = 100_000
    """Smallest city population eligible as a location."""
    min_separation_km: float = 50.0
    """Minimum great-circle distance between two locations, km (keeps city-level cells apart)."""
    frame_size_px: int = 96
    """Width and height of the square frames, pixels (even, for H.264); encoders resize anyway."""
    fps: int = 4
    """Video frame rate, frames per second."""
    sample_rate: int = 48_000
    """Audio sample rate, Hz (CLAP's)."""
    crf: int = 28
    """H.264 constant rate factor (lower: larger, sharper files)."""
    num_workers: int = 2
    """Processes rendering clips; 1 renders in the calling process."""
    chunk_size: int = 4
    """Clips handed to a worker at a time."""
    visual: VisualKnobs = field(default_factory=VisualKnobs)
    """Knobs of the frame renderer."""
    audio: AudioKnobs = field(default_factory=AudioKnobs)
    """Knobs of the soundscape mixer."""

    def __post_init__(self) -> None:
        if self.n_locations < 6:
            raise ConfigError(
                f"n_locations: {self.n_locations} cannot cover the 6 inhabited continents; use >= 6"
            )
        for name in ("clips_per_location", "clip_duration_s", "fps", "num_workers", "chunk_size"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: {getattr(self, name)!r}; it must be positive")
        if not (
            self.val_fraction > 0 and self.test_fraction > 0 and self.val_fraction + self.test_fraction < 1
        ):
            raise ConfigError(
                f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} must be positive "
                "and leave a train split (sum < 1)"
            )
        if self.frame_size_px < 16 or self.frame_size_px % 2:
            raise ConfigError(f"frame_size_px: {self.frame_size_px}; H.264 needs an even size >= 16")
        for name in ("regional_gain_db", "landscape_gain_db", "distractor_gain_db", "distractors_per_clip"):
            low, high = getattr(self.audio, name)
            if low > high:
                raise ConfigError(f"audio.{name}: ({low}, {high}) is not a (low, high) range")


_PRESETS = {
    "ci": {"n_locations": 24, "clips_per_location": 2, "clip_duration_s": 3.0},
    "demo": {"n_locations": 150, "clips_per_location": 4, "clip_duration_s": 5.0},
    "full": {},
}


def synth_preset(name: str) -> SynthConfig:
    """The `ci` (tiny, for tests), `demo` (the embedded demo) or `full` (AVG-sized) config."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown avg-synth preset {name!r}; choose one of {', '.join(_PRESETS)}")
    return dataclasses.replace(SynthConfig(), **_PRESETS[name])
