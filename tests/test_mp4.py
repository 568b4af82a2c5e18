"""write_clip writes what probe and an independent PyAV decode read back; bad inputs are refused."""

from __future__ import annotations

import av
import numpy as np
import pytest

from avgeo.data.mp4 import probe, write_clip

pytestmark = pytest.mark.timeout(60)

SAMPLE_RATE = 48000


def gray_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames, frame t a flat gray of level 8 + 15 t: the level identifies the frame."""
    levels = (8 + 15 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def chirp(num_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(S,) float32 linear chirp 200 Hz -> 4 kHz at amplitude 0.3: every lag looks different."""
    freq_hz = np.linspace(200.0, 4000.0, num_samples)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(freq_hz) / sample_rate)).astype(np.float32)


def pyav_frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def pyav_audio(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])


def test_round_trip_frames_audio_and_metadata(tmp_path):
    frames = gray_frames(16, 64, 64)
    audio = chirp(2 * SAMPLE_RATE)
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps=8, audio=audio)

    info = probe(path)
    assert info["format"].startswith("mov,mp4")
    assert info["size_bytes"] == path.stat().st_size
    video, audio_info = info["video"], info["audio"]
    assert (video["codec"], video["width"], video["height"]) == ("h264", 64, 64)
    assert video["fps"] == 8.0 and video["num_frames"] == 16
    assert video["duration_s"] == pytest.approx(2.0)
    assert (audio_info["codec"], audio_info["sample_rate"], audio_info["channels"]) == ("aac", SAMPLE_RATE, 1)
    assert audio_info["duration_s"] == pytest.approx(2.0)

    decoded = pyav_frames(path)
    assert decoded.shape == frames.shape
    # Flat frames survive H.264 at crf 28 within a few levels (gray levels are 15 apart).
    assert np.abs(decoded.astype(int) - frames).max() <= 3

    decoded_audio = pyav_audio(path)
    # The edit list drops the encoder's 1024 priming samples; only the last packet's padding remains.
    assert len(audio) <= len(decoded_audio) < len(audio) + 1024
    window = decoded_audio[: len(audio)]
    lags = range(-64, 65)
    best_lag = max(lags, key=lambda lag: float(np.dot(np.roll(window, lag), audio)))
    assert best_lag == 0
    assert np.corrcoef(window, audio)[0, 1] > 0.95


@pytest.mark.parametrize(
    ("num_frames", "fps", "height", "width"),
    [(1, 8.0, 32, 32), (16, 8.0, 64, 48), (20, 25.0, 48, 64), (30, 30000 / 1001, 32, 64)],
)
def test_probe_counts_every_frame_at_the_written_rate(tmp_path, num_frames, fps, height, width):
    path = tmp_path / "clip.mp4"
    write_clip(path, gray_frames(num_frames, height, width), fps=fps, audio=None)
    video = probe(path)["video"]
    assert (video["width"], video["height"], video["num_frames"]) == (width, height, num_frames)
    assert video["fps"] == pytest.approx(fps, rel=1e-6)
    assert video["duration_s"] == pytest.approx(num_frames / fps, abs=1e-3)
    assert probe(path)["audio"] is None


def test_audio_at_other_sample_rate_and_float64_input(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(
        path, gray_frames(8, 32, 32), fps=4, audio=chirp(32000, 16000).astype(np.float64), sample_rate=16000
    )
    audio_info = probe(path)["audio"]
    assert audio_info["sample_rate"] == 16000
    assert audio_info["duration_s"] == pytest.approx(2.0)


def test_lower_crf_is_larger_and_closer(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    errors, sizes = [], []
    for crf in (10, 40):
        path = tmp_path / f"crf{crf}.mp4"
        write_clip(path, frames, fps=8, audio=None, crf=crf)
        sizes.append(path.stat().st_size)
        errors.append(np.abs(pyav_frames(path).astype(int) - frames).mean())
    assert sizes[0] > sizes[1] and errors[0] < errors[1]


@pytest.mark.parametrize(
    ("frames", "fps", "audio", "message"),
    [
        (gray_frames(4, 63, 64), 8, None, "not even"),
        (gray_frames(4, 64, 64).astype(np.float32), 8, None, "uint8"),
        (gray_frames(4, 64, 64)[..., :2], 8, None, "RGB"),
        (gray_frames(0, 64, 64), 8, None, "T >= 1"),
        (gray_frames(4, 64, 64), 0, None, "fps"),
        (gray_frames(4, 64, 64), 8, np.zeros((2, 100), np.float32), "mono"),
    ],
)
def test_bad_inputs_are_refused_before_writing(tmp_path, frames, fps, audio, message):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=message) as excinfo:
        write_clip(path, frames, fps=fps, audio=audio)
    assert str(path) in str(excinfo.value)
    assert not path.exists()
