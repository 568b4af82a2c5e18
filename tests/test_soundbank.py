"""The sound bank: procedural renders (contract, determinism, separability) and the real-clip loader."""

import csv
import itertools
import math
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import scipy.signal
import soundfile

from avgeo.data.audioset import class_by_name
from avgeo.data.soundbank import REFERENCE_RMS, ClassNotInBankError, SoundBank, SoundBankError

REQUIRED = [
    "Siren",
    "Police car (siren)",
    "Ambulance (siren)",
    "Fire engine, fire truck (siren)",
    "Civil defense siren",
    "Bird vocalization, bird call, bird song",
    "Chirp, tweet",
    "Crow",
    "Owl",
    "Pigeon, dove",
    "Insect",
    "Cricket",
    "Mosquito",
    "Frog",
    "Church bell",
    "Bell",
    "Gong",
    "Traffic noise, roadway noise",
    "Car",
    "Car passing by",
    "Bus",
    "Motorcycle",
    "Truck",
    "Vehicle horn, car horn, honking",
    "Train",
    "Rail transport",
    "Subway, metro, underground",
    "Aircraft",
    "Helicopter",
    "Boat, Water vehicle",
    "Ocean",
    "Waves, surf",
    "Stream",
    "Rain",
    "Thunder",
    "Wind",
    "Rustling leaves",
    "Speech",
    "Crowd",
    "Children playing",
    "Walk, footsteps",
    "Dog",
    "Crowing, cock-a-doodle-doo",
    "Cattle, bovinae",
    "Sheep",
    "Goat",
    "Jackhammer",
    "Chant",
]


@pytest.fixture(scope="module")
def bank() -> SoundBank:
    return SoundBank.procedural()


def _rms(signal: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(signal, dtype=np.float64))))


def test_procedural_bank_covers_the_required_classes_by_real_mid(bank):
    assert len(bank.classes) >= 40
    assert [c.index for c in bank.classes] == sorted(c.index for c in bank.classes)
    for name in REQUIRED:
        assert bank.has(class_by_name(name).mid), name
    assert not bank.has(class_by_name("Music").mid)


def test_every_class_renders_the_contract_and_is_a_pure_function_of_the_rng(bank):
    for cls in bank.classes:
        clip = bank.render(cls.mid, 2.0, np.random.default_rng(7))
        assert clip.shape == (96000,) and clip.dtype == np.float32, cls.name
        assert np.isfinite(clip).all(), cls.name
        assert _rms(clip) == pytest.approx(REFERENCE_RMS, rel=1e-4), cls.name
        np.testing.assert_array_equal(
            clip, bank.render(cls.mid, 2.0, np.random.default_rng(7)), err_msg=cls.name
        )
        other = bank.render(cls.mid, 2.0, np.random.default_rng(8))
        assert np.abs(clip - other).max() > 0.1 * REFERENCE_RMS, cls.name


@pytest.mark.parametrize("duration_s", [0.01, 0.25, 1.37])
def test_short_and_odd_durations_are_exact_and_never_silent(bank, duration_s):
    expected = round(duration_s * bank.sample_rate)
    for cls in bank.classes:
        for seed in range(3):
            clip = bank.render(cls.mid, duration_s, np.random.default_rng(seed))
            assert clip.shape == (expected,), cls.name
            assert _rms(clip) == pytest.approx(REFERENCE_RMS, rel=1e-4), (cls.name, seed)


def test_bank_pickles_for_worker_processes_and_renders_the_same(bank):
    clone = pickle.loads(pickle.dumps(bank))
    assert clone.classes == bank.classes
    for name in ("Church bell", "Speech", "Ambulance (siren)"):
        mid = class_by_name(name).mid
        np.testing.assert_array_equal(
            clone.render(mid, 1.0, np.random.default_rng(3)), bank.render(mid, 1.0, np.random.default_rng(3))
        )


def test_renders_at_16_khz_and_refuses_lower_rates():
    low = SoundBank.procedural(16000)
    for cls in low.classes:
        clip = low.render(cls.mid, 1.0, np.random.default_rng(0))
        assert clip.shape == (16000,) and np.isfinite(clip).all(), cls.name
    with pytest.raises(SoundBankError, match="at least 16000 Hz"):
        SoundBank.procedural(8000)


def _band_features(clip: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log energies in 32 log-spaced bands (60 Hz-16 kHz): mean and spread over the clip's active frames
    (within 40 dB of its loudest), mean frame-to-frame change, and the active fraction."""
    freq_hz, _, spectrum = scipy.signal.stft(clip, sample_rate, nperseg=1024, noverlap=512)
    power = np.abs(spectrum) ** 2
    edges = np.geomspace(60.0, 16000.0, 33)
    bands = np.stack([power[(freq_hz >= lo) & (freq_hz < hi)].sum(0) for lo, hi in itertools.pairwise(edges)])
    log_bands = np.log(bands + 1e-10)
    loudness = np.log(bands.sum(0) + 1e-10)
    active = loudness > loudness.max() - np.log(1e4)
    return np.concatenate(
        [
            log_bands[:, active].mean(1),
            log_bands[:, active].std(1),
            np.abs(np.diff(log_bands, axis=1)).mean(1),
            [active.mean()],
        ]
    )


def test_classes_are_separable_by_a_nearest_centroid_on_band_energies(bank):
    """Held-out renders land nearest their own class centroid: intra-class variation (rng) stays
    below inter-class distance, which MART's encoder needs to learn distinct atoms."""
    train_per_class, test_per_class = 7, 4
    features, labels = [], []
    for label, cls in enumerate(bank.classes):
        for seed in range(train_per_class + test_per_class):
            clip = bank.render(cls.mid, 4.0, np.random.default_rng([label, seed]))
            features.append(_band_features(clip, bank.sample_rate))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)
    is_train = np.tile(np.arange(train_per_class + test_per_class) < train_per_class, len(bank.classes))
    mean, spread = features[is_train].mean(0), features[is_train].std(0) + 1e-6
    standard = (features - mean) / spread
    centroids = np.stack([standard[is_train & (labels == c)].mean(0) for c in range(len(bank.classes))])
    distances = np.linalg.norm(standard[:, None, :] - centroids[None, :, :], axis=-1)
    held_out = ~is_train
    accuracy = float((distances[held_out].argmin(1) == labels[held_out]).mean())
    assert accuracy >= 0.9, accuracy
    own = distances[np.arange(labels.size), labels][held_out].mean()
    between = np.linalg.norm(centroids[:, None] - centroids[None, :], axis=-1)[
        ~np.eye(len(centroids), dtype=bool)
    ]
    assert own < np.median(between), (own, np.median(between))


def test_render_rejects_classes_without_source_and_bad_durations(bank):
    with pytest.raises(ClassNotInBankError, match=r"'Music' \(/m/04rlf\) has no source"):
        bank.render(class_by_name("Music").mid, 1.0, np.random.default_rng(0))
    with pytest.raises(KeyError, match="not a known AudioSet mid"):
        bank.render("/m/nonsense", 1.0, np.random.default_rng(0))
    siren = class_by_name("Siren").mid
    for duration_s in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(SoundBankError, match="positive number of seconds"):
            bank.render(siren, duration_s, np.random.default_rng(0))


# ---------------------------------------------------------------- folder of real clips


def _tone(freq_hz: float, duration_s: float, sample_rate: int) -> np.ndarray:
    time_s = np.arange(int(duration_s * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq_hz * time_s)).astype(np.float32)


def _peak_hz(clip: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(clip * np.hanning(clip.size)))
    return float(np.argmax(spectrum) * sample_rate / clip.size)


def _write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "labels"])
        writer.writerows(rows)
    return path


DOG, BARK, SIREN = class_by_name("Dog").mid, class_by_name("Bark").mid, class_by_name("Siren").mid


@pytest.fixture()
def clip_folder(tmp_path: Path) -> Path:
    """Real files: a 16 kHz mono dog-only clip (440 Hz), a 44.1 kHz stereo dog+bark clip (2 kHz), a
    0.5 s siren clip (1 kHz) listed with ';' and a comment line."""
    (tmp_path / "dogs").mkdir()
    soundfile.write(tmp_path / "dogs" / "only_dog.wav", _tone(440.0, 3.0, 16000), 16000)
    stereo = np.stack([_tone(2000.0, 3.0, 44100)] * 2, axis=1)
    soundfile.write(tmp_path / "dogs" / "dog_and_bark.flac", stereo, 44100)
    soundfile.write(tmp_path / "siren.wav", _tone(1000.0, 0.5, 48000), 48000)
    labels = _write_labels(
        tmp_path / "labels.csv",
        [
            ("dogs/only_dog.wav", DOG),
            ("dogs/dog_and_bark.flac", f"{DOG}, {BARK}"),
            ("# a comment", ""),
            ("siren.wav", f"{SIREN};"),
        ],
    )
    return labels


def test_folder_bank_resamples_prefers_single_label_clips_and_loops_short_ones(clip_folder):
    bank = SoundBank.from_folder(clip_folder.parent, clip_folder, sample_rate=48000)
    assert {c.mid for c in bank.classes} == {DOG, BARK, SIREN}
    for seed in range(6):
        dog = bank.render(DOG, 1.0, np.random.default_rng(seed))
        assert dog.shape == (48000,) and _rms(dog) == pytest.approx(REFERENCE_RMS, rel=1e-4)
        assert _peak_hz(dog, 48000) == pytest.approx(440.0, abs=2.0)  # never the dog+bark clip
        assert _peak_hz(bank.render(BARK, 1.0, np.random.default_rng(seed)), 48000) == pytest.approx(
            2000.0, abs=2.0
        )
    siren = bank.render(SIREN, 2.0, np.random.default_rng(0))  # from a 0.5 s clip
    assert siren.shape == (96000,) and _peak_hz(siren, 48000) == pytest.approx(1000.0, abs=2.0)
    np.testing.assert_array_equal(siren, bank.render(SIREN, 2.0, np.random.default_rng(0)))


def test_folder_decodes_containers_soundfile_cannot_read_with_pyav(tmp_path):
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000, layout="mono")
        samples = _tone(750.0, 1.0, 48000)
        for start in range(0, samples.size, 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1024], format="flt", layout="mono"
            )
            frame.sample_rate = 48000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    labels = _write_labels(tmp_path / "labels.csv", [("tone.m4a", SIREN)])
    clip = SoundBank.from_folder(tmp_path, labels, sample_rate=32000).render(
        SIREN, 0.5, np.random.default_rng(0)
    )
    assert clip.shape == (16000,) and _peak_hz(clip, 32000) == pytest.approx(750.0, abs=4.0)


def test_folder_rejects_unknown_mids_naming_row_and_fix(tmp_path):
    soundfile.write(tmp_path / "a.wav", _tone(440.0, 1.0, 16000), 16000)
    labels = _write_labels(tmp_path / "labels.csv", [("a.wav", "/m/0bt9lx")])
    with pytest.raises(
        SoundBankError,
        match=r"labels\.csv, row 2: '/m/0bt9lx' is not a known AudioSet mid; did you mean '/m/0bt9lr'",
    ):
        SoundBank.from_folder(tmp_path, labels)
    _write_labels(labels, [("a.wav", "Dog")])
    with pytest.raises(SoundBankError, match=r"'Dog' is a display name, its mid is '/m/0bt9lr'"):
        SoundBank.from_folder(tmp_path, labels)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("missing.wav", SIREN)], r"audio file .*missing\.wav not found"),
        ([("a.wav", " ; ")], r"a\.wav has no labels"),
        ([], "no clips listed"),
    ],
)
def test_folder_rejects_bad_rows(tmp_path, rows, message):
    soundfile.write(tmp_path / "a.wav", _tone(440.0, 1.0, 16000), 16000)
    with pytest.raises(SoundBankError, match=message):
        SoundBank.from_folder(tmp_path, _write_labels(tmp_path / "labels.csv", rows))


def test_folder_needs_a_header_and_an_existing_csv(tmp_path):
    (tmp_path / "labels.csv").write_text(f"a.wav,{SIREN}\n")
    with pytest.raises(SoundBankError, match="header naming the columns 'filename' and 'labels'"):
        SoundBank.from_folder(tmp_path, tmp_path / "labels.csv")
    with pytest.raises(SoundBankError, match="labels CSV not found"):
        SoundBank.from_folder(tmp_path, tmp_path / "absent.csv")


def test_corrupt_audio_fails_at_render_naming_the_file(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    bank = SoundBank.from_folder(tmp_path, _write_labels(tmp_path / "labels.csv", [("broken.wav", SIREN)]))
    with pytest.raises(SoundBankError, match=r"broken\.wav: cannot decode audio"):
        bank.render(SIREN, 1.0, np.random.default_rng(0))
