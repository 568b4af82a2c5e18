"""The sound bank: isolated sounds of AudioSet classes, rendered on demand at a fixed RMS.

MART's data factory mixes renders of several classes with decreasing gains; the avg-synth benchmark
layers region-specific sources into soundscapes. Both ask the bank for `render(mid, duration_s, rng)`,
whether the sounds come from procedural generators (`SoundBank.procedural()`, the embedded default) or
from real AudioSet clips on disk (`SoundBank.from_folder(root, labels_csv)`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from avgeo.data.audioset import AudioSetClass, class_by_mid, class_by_name
from avgeo.data.soundbank import animals, bells, birds, construction, human, nature, signals, vehicles
from avgeo.data.soundbank.errors import ClassNotInBankError, SoundBankError
from avgeo.data.soundbank.folder import FolderClips, clips_by_class, read_labels_csv
from avgeo.data.soundbank.synthesis import SoundGenerator

REFERENCE_RMS = 0.1
"""RMS of every render (-20 dBFS): loud enough to keep float32 precision, quiet enough that mixing a few
sources rarely peaks past 1.0. Sparse sounds (a few barks in silence) can still peak above 1.0 on
their own; renders are never clipped, so gains applied afterwards stay exact."""

MIN_PROCEDURAL_SAMPLE_RATE = 16000
"""The generators place content up to ~8 kHz; below this rate they would lose defining parts."""

_FAMILIES = (animals, bells, birds, construction, human, nature, signals, vehicles)


def procedural_generators() -> dict[str, SoundGenerator]:
    """mid -> generator for every class the procedural families cover (display names checked)."""
    return {
        class_by_name(name).mid: generator
        for family in _FAMILIES
        for name, generator in family.GENERATORS.items()
    }


class SoundBank:
    """Renders isolated sounds of AudioSet classes (addressed by mid) as float32 mono at `sample_rate`."""

    def __init__(self, sources: Mapping[str, SoundGenerator], sample_rate: int):
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise SoundBankError(f"sample_rate {sample_rate!r}: give a positive integer in Hz, e.g. 48000")
        self._sources = dict(sources)
        self._sample_rate = sample_rate
        self._classes = tuple(sorted((class_by_mid(mid) for mid in self._sources), key=lambda c: c.index))

    @classmethod
    def procedural(cls, sample_rate: int = 48000) -> SoundBank:
        """The built-in generators: every class in `procedural_generators()`, at `sample_rate` Hz."""
        if isinstance(sample_rate, int) and sample_rate < MIN_PROCEDURAL_SAMPLE_RATE:
            raise SoundBankError(
                f"sample_rate {sample_rate}: the procedural bank needs at least "
                f"{MIN_PROCEDURAL_SAMPLE_RATE} Hz"
            )
        return cls(procedural_generators(), sample_rate)

    @classmethod
    def from_folder(cls, root: str | Path, labels_csv: str | Path, sample_rate: int = 48000) -> SoundBank:
        """Real clips: the audio files under `root` listed in `labels_csv` (format: `avgeo.data.soundbank.
        folder`). A class draws from its single-label clips where it has any."""
        clips = read_labels_csv(labels_csv, root)
        return cls({mid: FolderClips(paths) for mid, paths in clips_by_class(clips).items()}, sample_rate)

    @property
    def classes(self) -> tuple[AudioSetClass, ...]:
        """The classes this bank can render, in AudioSet classifier order."""
        return self._classes

    @property
    def sample_rate(self) -> int:
        """Sample rate of every render, Hz."""
        return self._sample_rate

    def has(self, mid: str) -> bool:
        """Whether `render(mid, ...)` has a source."""
        return mid in self._sources

    def render(self, mid: str, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        """(round(duration_s * sample_rate),) float32 sound of class `mid` at RMS `REFERENCE_RMS`.

        Each render is a new instance of the class (pitch, rate, timbre, rhythm drawn from `rng`), and
        a pure function of `rng`'s state: the same state gives the same samples.
        """
        source = self._sources.get(mid)
        if source is None:
            raise ClassNotInBankError(self._missing_message(mid))
        if not (isinstance(duration_s, numbers.Real) and math.isfinite(duration_s) and duration_s > 0):
            raise SoundBankError(f"duration_s {duration_s!r}: give a positive number of seconds")
        n = max(1, round(duration_s * self._sample_rate))
        clip = source(n, self._sample_rate, rng)
        rms = math.sqrt(float(np.mean(np.square(clip, dtype=np.float64))))
        if not math.isfinite(rms) or rms == 0.0:
            name = class_by_mid(mid).name
            raise SoundBankError(
                f"{name!r} ({mid}): {duration_s} s rendered silent or non-finite; render a longer clip"
            )
        return (clip * (REFERENCE_RMS / rms)).astype(np.float32)

    def _missing_message(self, mid: str) -> str:
        try:
            name = class_by_mid(mid).name
        except KeyError as error:
            return str(error)
        return f"{name!r} ({mid}) has no source in this bank; see SoundBank.classes for those it has"
