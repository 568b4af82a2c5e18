"""Real AudioSet-style clips as a sound source: a folder of audio files and a CSV of their labels.

The labels CSV has a header row naming (at least) the columns `filename` and `labels`:

    filename,labels
    dog/clip_0001.wav,/m/0bt9lr
    street/clip_0002.flac,"/m/0btp2,/m/0k4j"
    street/clip_0003.ogg,/m/0btp2;/m/03kmc9

`filename` is relative to the folder (or absolute). `labels` holds one or more AudioSet mids separated by
`;` or `,` (a comma-separated list must be quoted, as CSV requires); spaces around mids are ignored.
Other columns are ignored, as are lines whose first field starts with `#`. Building the source checks
every row (known mids, existing files) but decodes nothing; a clip is decoded when it is drawn.

Audio is decoded with soundfile (WAV, FLAC, OGG/Vorbis, MP3, ...) or, for containers it does not read
(M4A/AAC, MP4, WebM, ...), with PyAV; channels are averaged and the result resampled to the bank's rate.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import scipy.signal
import soundfile

from avgeo.data.audioset import UnknownAudioSetClassError, class_by_mid
from avgeo.data.soundbank.errors import SoundBankError

_LABEL_SEPARATOR = re.compile(r"[;,]")


def read_labels_csv(labels_csv: str | Path, root: str | Path) -> dict[Path, tuple[str, ...]]:
    """Audio file -> its mids, from a labels CSV (see the module docstring); every row is validated."""
    labels_csv, root = Path(labels_csv), Path(root)
    if not labels_csv.is_file():
        raise SoundBankError(f"{labels_csv}: labels CSV not found")
    with labels_csv.open(newline="", encoding="utf-8-sig") as fh:  # tolerate a spreadsheet BOM
        rows = [row for row in csv.reader(fh) if row and not row[0].lstrip().startswith("#")]
    if not rows or not {"filename", "labels"} <= {cell.strip() for cell in rows[0]}:
        raise SoundBankError(
            f"{labels_csv}: the first row must be a header naming the columns 'filename' and 'labels'"
        )
    header = [cell.strip() for cell in rows[0]]
    file_column, labels_column = header.index("filename"), header.index("labels")
    clips: dict[Path, tuple[str, ...]] = {}
    for line, row in enumerate(rows[1:], start=2):
        where = f"{labels_csv}, row {line}"
        if len(row) <= max(file_column, labels_column):
            raise SoundBankError(
                f"{where}: expected the columns {header}, got {row}; quote a comma-separated label list"
            )
        path = root / row[file_column].strip()
        mids = tuple(mid.strip() for mid in _LABEL_SEPARATOR.split(row[labels_column]) if mid.strip())
        if not mids:
            raise SoundBankError(f"{where}: {path.name} has no labels; give at least one AudioSet mid")
        for mid in mids:
            try:
                class_by_mid(mid)
            except UnknownAudioSetClassError as error:
                raise SoundBankError(f"{where}: {error}") from None
        if not path.is_file():
            raise SoundBankError(f"{where}: audio file {path} not found (filenames are relative to {root})")
        clips[path] = mids
    if not clips:
        raise SoundBankError(f"{labels_csv}: no clips listed")
    return clips


def clips_by_class(clips: dict[Path, tuple[str, ...]]) -> dict[str, tuple[Path, ...]]:
    """mid -> the files to draw it from: its single-label clips where it has any (a clip that is only
    that sound), else every clip that carries the label."""
    single: dict[str, list[Path]] = defaultdict(list)
    any_label: dict[str, list[Path]] = defaultdict(list)
    for path, mids in clips.items():
        for mid in mids:
            any_label[mid].append(path)
        if len(set(mids)) == 1:
            single[mids[0]].append(path)
    return {mid: tuple(single.get(mid) or paths) for mid, paths in any_label.items()}


def decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    """(S,) float32 mono samples of an audio file at `sample_rate`."""
    try:
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError:
        return _decode_with_pyav(path, sample_rate)
    mono = samples.mean(axis=1)
    if file_rate != sample_rate:
        common = math.gcd(int(file_rate), sample_rate)
        mono = scipy.signal.resample_poly(mono, sample_rate // common, int(file_rate) // common)
    return mono.astype(np.float32)


def _decode_with_pyav(path: Path, sample_rate: int) -> np.ndarray:
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SoundBankError(f"{path}: no audio stream; give a file with sound")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(container.streams.audio[0]):
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.FFmpegError as error:
        raise SoundBankError(f"{path}: cannot decode audio ({error}); convert it to WAV or FLAC") from None
    if not chunks:
        raise SoundBankError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32)


class FolderClips:
    """A `SoundGenerator` over real clips of one class: each call decodes a randomly drawn file and cuts
    a random n-sample stretch from it, looping the clip when it is shorter than n."""

    def __init__(self, paths: tuple[Path, ...]):
        self.paths = paths

    def __call__(self, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        path = self.paths[int(rng.integers(len(self.paths)))]
        samples = decode_audio(path, sample_rate)
        if samples.size == 0:
            raise SoundBankError(f"{path}: holds no samples; remove it from the labels CSV")
        if samples.size >= n:
            offset = int(rng.integers(samples.size - n + 1))
            return samples[offset : offset + n]
        offset = int(rng.integers(samples.size))
        return np.take(samples, (offset + np.arange(n)) % samples.size)
