"""decode_clip on real files: sampling invariants, the PyAV fallback, and a typed error per broken file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import scipy.signal
from PIL import Image

from avgeo.config import ConfigError, load_config
from avgeo.data.decode import DecodeConfig, decode_clip
from avgeo.data.errors import (
    CorruptStreamError,
    DecodeError,
    EmptyClipError,
    MissingFileError,
    NoAudioStreamError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedFileError,
)
from avgeo.data.manifest import write_manifest
from avgeo.data.mp4 import write_clip

# decord can hang on some broken files; no test may.
pytestmark = pytest.mark.timeout(60)

FPS = 8
NUM_FRAMES = 16
SAMPLE_RATE = 48000
REPO = Path(__file__).resolve().parents[1]


def gray_frames(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """(T, H, W, 3) uint8, frame t a flat gray of level 8 + 15 t, so a decoded frame names its index."""
    levels = (8 + 15 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def frame_index(frames: np.ndarray) -> np.ndarray:
    """(T,) source index of each decoded gray frame."""
    return np.rint((frames.reshape(len(frames), -1).mean(axis=1) - 8) / 15).astype(int)


def chirp(num_samples: int) -> np.ndarray:
    freq_hz = np.linspace(200.0, 4000.0, num_samples)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(freq_hz) / SAMPLE_RATE)).astype(np.float32)


def remux(source: Path, target: Path, **options) -> Path:
    """Copy `source`'s packets into `target` (container from the suffix) without re-encoding."""
    with av.open(str(source)) as src, av.open(str(target), "w", options=options) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    return target


def write_audio_only(path: Path, video_track: bool = False) -> Path:
    """AAC audio, and if `video_track` an H.264 track header with no frames (Matroska keeps it)."""
    with av.open(str(path), "w") as container:
        if video_track:
            video = container.add_stream("libx264", rate=FPS)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(chirp(SAMPLE_RATE)[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "clip.mp4", gray_frames(NUM_FRAMES), FPS, chirp(2 * SAMPLE_RATE))
    write_clip(folder / "silent.mp4", gray_frames(NUM_FRAMES), FPS, None)
    return folder


@pytest.fixture(scope="module")
def clip(clips) -> Path:
    return clips / "clip.mp4"


def test_default_config_gives_8_frames_224_and_48k_audio(clip):
    decoded = decode_clip(clip)
    assert decoded.frames.shape == (8, 224, 224, 3) and decoded.frames.dtype == np.uint8
    assert decoded.audio.dtype == np.float32 and decoded.sample_rate == SAMPLE_RATE
    assert decoded.duration_s == pytest.approx(2.0) and decoded.path == str(clip)


@pytest.mark.parametrize("num_frames", [1, 3, 8, 16, 40])
def test_num_frames_are_evenly_spaced_segment_centres(clip, num_frames):
    decoded = decode_clip(clip, DecodeConfig(num_frames=num_frames, frame_size=(32, 32)))
    expected = ((np.arange(num_frames) + 0.5) * NUM_FRAMES / num_frames).astype(int)
    assert decoded.frames.shape == (num_frames, 32, 32, 3)
    np.testing.assert_array_equal(frame_index(decoded.frames), expected)
    np.testing.assert_allclose(decoded.frame_times_s, expected / FPS)
    assert np.all(np.diff(decoded.frame_times_s) >= 0)


@pytest.mark.parametrize("fps", [1.0, 3.0, 8.0, 20.0])
def test_fps_sampling_returns_the_frame_showing_at_each_sample_time(clip, fps):
    decoded = decode_clip(clip, DecodeConfig(fps=fps, frame_size=(32, 32)))
    sample_times_s = np.arange(int(np.ceil(2.0 * fps))) / fps
    showing = np.floor(sample_times_s * FPS + 1e-9).astype(int)
    np.testing.assert_array_equal(frame_index(decoded.frames), showing)
    np.testing.assert_allclose(decoded.frame_times_s, showing / FPS)
    assert np.all(decoded.frame_times_s <= sample_times_s + 1e-9)


def test_frame_size_is_height_then_width_and_yaml_lists_load(clip):
    config = load_config(DecodeConfig, {"num_frames": 2, "frame_size": [24, 40], "fps": None})
    assert config.frame_size == (24, 40)
    assert decode_clip(clip, config).frames.shape == (2, 24, 40, 3)


@pytest.mark.parametrize(
    "bad", [{"num_frames": 0}, {"fps": -1.0}, {"frame_size": [0, 32]}, {"max_duration_s": 0.0}, {"fsp": 4}]
)
def test_bad_config_is_a_config_error_naming_the_key(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        load_config(DecodeConfig, bad)


def test_audio_is_aligned_and_cut_to_the_stream_length(clip):
    source = chirp(2 * SAMPLE_RATE)
    audio = decode_clip(clip, DecodeConfig(num_frames=1, frame_size=(32, 32))).audio
    # AAC priming removed (edit list) and trailing padding cut: exactly the written length, at lag 0.
    assert audio.shape == source.shape
    best_lag = max(range(-64, 65), key=lambda lag: float(np.dot(np.roll(audio, lag), source)))
    assert best_lag == 0 and np.corrcoef(audio, source)[0, 1] > 0.95


def test_audio_resamples_to_the_configured_rate_without_delay(clip):
    audio = decode_clip(clip, DecodeConfig(num_frames=1, frame_size=(32, 32), sample_rate=16000)).audio
    assert audio.shape == (32000,)
    reference = scipy.signal.resample_poly(chirp(2 * SAMPLE_RATE), up=1, down=3)
    inner = slice(100, len(reference) - 100)  # the two resamplers' filters differ at the edges
    best_lag = max(
        range(-32, 33), key=lambda lag: float(np.dot(np.roll(audio, lag)[inner], reference[inner]))
    )
    assert best_lag == 0 and np.corrcoef(audio[inner], reference[inner])[0, 1] > 0.99


def test_max_duration_caps_frames_audio_and_duration(clip):
    config = DecodeConfig(num_frames=4, frame_size=(32, 32), max_duration_s=1.0)
    decoded = decode_clip(clip, config)
    assert decoded.duration_s == pytest.approx(1.0)
    assert decoded.audio.shape == (SAMPLE_RATE,)
    np.testing.assert_array_equal(frame_index(decoded.frames), [1, 3, 5, 7])
    assert decoded.frame_times_s.max() < 1.0


def test_mpeg_ts_falls_back_to_pyav_with_identical_frames(clip, tmp_path):
    # decord's VideoReader raises on MPEG-TS ("Unable to handle EOF"); the same packets in a .ts file
    # must decode through PyAV to the same pixels and times as the mp4 does through decord.
    ts_path = remux(clip, tmp_path / "clip.ts")
    for config in (
        DecodeConfig(num_frames=16, frame_size=(64, 64)),
        DecodeConfig(fps=3, frame_size=(32, 48)),
    ):
        from_mp4, from_ts = decode_clip(clip, config), decode_clip(ts_path, config)
        np.testing.assert_array_equal(from_ts.frames, from_mp4.frames)
        np.testing.assert_allclose(from_ts.frame_times_s, from_mp4.frame_times_s)
    # MPEG-TS has no edit list, so the AAC encoder's 1024 priming samples stay in front.
    priming = 1024
    kept = from_ts.audio[priming : priming + len(from_mp4.audio)]
    assert np.corrcoef(kept, from_mp4.audio)[0, 1] > 0.999


def test_video_only_file_decodes_when_audio_is_optional(clips):
    decoded = decode_clip(
        clips / "silent.mp4", DecodeConfig(num_frames=4, frame_size=(32, 32), require_audio=False)
    )
    assert decoded.audio.shape == (0,) and decoded.frames.shape == (4, 32, 32, 3)


def _text_file(folder: Path, _clips: Path) -> Path:
    path = folder / "notes.mp4"
    path.write_text("clip list\n" * 20)
    return path


def _png_renamed(folder: Path, _clips: Path) -> Path:
    path = folder / "still.png"
    Image.fromarray(gray_frames(1)[0]).save(path)
    return path.rename(folder / "still.mp4")


def _zero_bytes(folder: Path, _clips: Path) -> Path:
    path = folder / "zero.mp4"
    path.touch()
    return path


def _empty_video_track(folder: Path, _clips: Path) -> Path:
    return write_audio_only(folder / "no_frames.mkv", video_track=True)


def _cut(source: Path, target: Path, num_bytes: int) -> Path:
    target.write_bytes(source.read_bytes()[:num_bytes])
    return target


def _cut_in_half(folder: Path, clips: Path) -> Path:
    return _cut(clips / "clip.mp4", folder / "half.mp4", (clips / "clip.mp4").stat().st_size // 2)


def _cut_before_moov(folder: Path, clips: Path) -> Path:
    # Cut at a box boundary: every box left is whole, but the header box at the end is gone.
    data = (clips / "clip.mp4").read_bytes()
    return _cut(clips / "clip.mp4", folder / "no_moov.mp4", data.index(b"moov") - 4)


def _faststart_cut_in_half(folder: Path, clips: Path) -> Path:
    # moov first, so FFmpeg opens the cut file happily; only the box walk sees mdat run past the end.
    whole = remux(clips / "clip.mp4", folder / "faststart.mp4", movflags="faststart")
    return _cut(whole, folder / "faststart_half.mp4", whole.stat().st_size // 2)


def _mkv_cut_in_half(folder: Path, clips: Path) -> Path:
    # Matroska states its duration up front; decoding finds half of it.
    whole = remux(clips / "clip.mp4", folder / "whole.mkv")
    return _cut(whole, folder / "half.mkv", whole.stat().st_size // 2)


def _garbled(clips: Path, target: Path, stream: str, packets: slice) -> Path:
    """A copy of clip.mp4 with random bytes over some packets of `stream`; the boxes stay whole."""
    data = bytearray((clips / "clip.mp4").read_bytes())
    with av.open(str(clips / "clip.mp4")) as container:
        spans = [(p.pos, p.size) for p in container.demux(**{stream: 0}) if p.size]
    rng = np.random.default_rng(0)
    for pos, size in spans[packets]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def _garbage_in_video(folder: Path, clips: Path) -> Path:
    return _garbled(clips, folder / "garbled_video.mp4", "video", slice(4, 8))


def _garbage_in_audio(folder: Path, clips: Path) -> Path:
    # decord's AudioReader returns a third of this audio without an error; PyAV names the problem.
    return _garbled(clips, folder / "garbled_audio.mp4", "audio", slice(30, 35))


@pytest.mark.parametrize(
    ("make_file", "error_type", "words"),
    [
        (lambda folder, clips: folder / "missing.mp4", MissingFileError, "no such file"),
        (_text_file, NotAVideoError, "not a media file"),
        (_png_renamed, NotAVideoError, "still image"),
        (_zero_bytes, EmptyClipError, "zero bytes"),
        (lambda folder, clips: write_audio_only(folder / "voice.m4a"), NoVideoStreamError, "audio only"),
        (lambda folder, clips: clips / "silent.mp4", NoAudioStreamError, "no audio stream"),
        (_empty_video_track, EmptyClipError, "no frames"),
        (_cut_in_half, TruncatedFileError, "mdat"),
        (_cut_before_moov, TruncatedFileError, "moov"),
        (_faststart_cut_in_half, TruncatedFileError, "mdat"),
        (_mkv_cut_in_half, TruncatedFileError, "header says"),
        (_garbage_in_video, CorruptStreamError, "video stream"),
        (_garbage_in_audio, CorruptStreamError, "audio stream"),
    ],
)
def test_each_broken_file_raises_its_type_naming_the_file(clips, tmp_path, make_file, error_type, words):
    path = make_file(tmp_path, clips)
    with pytest.raises(error_type) as excinfo:
        decode_clip(path, DecodeConfig(num_frames=4, frame_size=(32, 32)))
    error = excinfo.value
    assert isinstance(error, DecodeError) and isinstance(error, ValueError)
    assert error.path == str(path) and str(path) in str(error)
    assert words in str(error)


def test_benchmark_reports_throughput_over_a_manifest_and_a_folder(clips, tmp_path):
    rows = [
        {
            "clip_id": name,
            "video_path": str(clips / f"{name}.mp4"),
            "lat": 51.56,
            "lon": -0.17,
            "location_id": "hampstead",
            "place": "Hampstead Heath",
            "country": "United Kingdom",
            "continent": "Europe",
            "split": "test",
            "duration_s": 2.0,
        }
        for name in ("clip", "silent")
    ]
    manifest = write_manifest(rows, tmp_path / "manifest.parquet")
    script = REPO / "benchmarks" / "decode_throughput.py"
    for source in (["--manifest", str(manifest)], ["--dir", str(clips)]):
        result = subprocess.run(
            [
                sys.executable,
                str(script),
                *source,
                "--limit",
                "2",
                "--num-frames",
                "4",
                "--frame-size",
                "32",
                "32",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "2 clips" in result.stdout and "clips/s" in result.stdout
        # silent.mp4 has no audio: counted as an error by type, not a crash.
        assert "NoAudioStreamError: 1" in result.stdout


def test_decode_errors_survive_pickling_with_their_type_and_message():
    import pickle

    from avgeo.data.errors import NoAudioStreamError

    error = NoAudioStreamError("clip.mp4", "no audio stream; avgeo needs synchronized audio")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is NoAudioStreamError
    assert (again.path, str(again)) == (error.path, str(error))
