"""CLAP audio tower: fixed windows, determinism, both outputs, and the three ways to load weights."""

import numpy as np
import pytest
import torch

from avgeo.perception.audio import AudioEncoder, AudioEncoderConfig
from avgeo.perception.checkpoints import CheckpointError

RATE = 48_000


@pytest.fixture(autouse=True, scope="module")
def avgeo_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVGEO_HOME", str(tmp_path_factory.mktemp("avgeo_home")))
        yield


@pytest.fixture(scope="module")
def encoder():
    return AudioEncoder.from_pretrained("tiny")


def _noise(batch: int, seconds: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, round(seconds * RATE), generator=generator)


@pytest.mark.parametrize(
    ("seconds", "hop_s", "expected_starts_s"),
    [
        (3.0, 10.0, [0]),
        (10.0, 10.0, [0]),
        (25.0, 10.0, [0, 10, 20]),
        (25.0, 5.0, [0, 5, 10, 15]),
        (10.5, 2.5, [0, 2.5]),
    ],
)
def test_windows_start_every_hop_and_just_cover_the_audio(encoder, seconds, hop_s, expected_starts_s):
    audio = _noise(2, seconds, seed=0)
    windows, starts = encoder.cut_windows(audio, hop_s)
    assert (starts / RATE).tolist() == expected_starts_s
    assert windows.shape == (2, len(expected_starts_s), 10 * RATE)
    num_samples = audio.shape[1]
    for index, start in enumerate(starts.tolist()):
        inside = min(num_samples - start, 10 * RATE)
        assert torch.equal(windows[:, index, :inside], audio[:, start : start + inside])
        assert not windows[:, index, inside:].any(), "past the end of the audio windows are zero-padded"


def test_embedding_is_the_unit_normalised_projection(encoder):
    result = encoder.embed(_noise(2, 12.0, seed=1), hop_s=5.0)
    assert result.embedding.shape == result.projection.shape == (2, 2, 512)
    assert torch.allclose(result.embedding.norm(dim=-1), torch.ones(2, 2), atol=1e-6)
    norms = result.projection.norm(dim=-1, keepdim=True)
    assert torch.allclose(result.embedding * norms, result.projection, atol=1e-5)
    assert result.window_starts_s.tolist() == [0.0, 5.0]


def test_embeddings_are_deterministic_and_independent_of_batching(encoder):
    audio = _noise(3, 14.0, seed=2)
    first = encoder.embed(audio, hop_s=4.0)
    assert torch.equal(first.projection, encoder.embed(audio, hop_s=4.0).projection)
    one_window_at_a_time = encoder.embed(audio, hop_s=4.0, windows_per_forward=1)
    assert torch.allclose(one_window_at_a_time.projection, first.projection, atol=1e-5)
    for row in range(3):
        alone = encoder.embed(audio[row : row + 1], hop_s=4.0)
        assert torch.allclose(alone.projection[0], first.projection[row], atol=1e-5)


def test_the_last_window_is_the_tail_zero_padded(encoder):
    audio = _noise(1, 15.0, seed=3)
    both = encoder.embed(audio, hop_s=10.0)
    tail = encoder.embed(audio[:, 10 * RATE :], hop_s=10.0)
    assert both.projection.shape[1] == 2 and tail.projection.shape[1] == 1
    assert torch.allclose(both.projection[:, 1], tail.projection[:, 0], atol=1e-5)


def test_training_mode_cannot_be_switched_on(encoder):
    audio = _noise(1, 10.0, seed=4)
    before = encoder.embed(audio).projection
    encoder.train()
    assert not encoder.training and not encoder.audio_branch.training
    assert torch.equal(encoder.embed(audio).projection, before)
    assert not any(parameter.requires_grad for parameter in encoder.parameters())


def test_save_and_load_round_trip(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "clap")
    loaded = AudioEncoder.from_pretrained(tmp_path / "clap")
    assert loaded.config == encoder.config
    audio = _noise(1, 10.0, seed=5)
    assert torch.equal(loaded.embed(audio).projection, encoder.embed(audio).projection)


def test_tiny_is_rebuilt_identically_from_its_seed(encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEO_HOME", str(tmp_path))
    rebuilt = AudioEncoder.from_pretrained("tiny")
    theirs = rebuilt.state_dict()
    assert theirs.keys() == encoder.state_dict().keys()
    for name, mine in encoder.state_dict().items():
        assert torch.equal(mine, theirs[name]), name


@pytest.fixture(scope="module")
def laion_checkpoint(tmp_path_factory):
    """A checkpoint laid out as laion-clap's trainer writes it, with HTSAT-tiny audio weights."""
    torch.manual_seed(7)
    source = AudioEncoder(AudioEncoderConfig())
    state_dict = {f"module.{key}": value for key, value in source.state_dict().items()}
    state_dict["module.text_branch.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)
    state_dict["module.audio_transform.sequential.0.weight"] = torch.zeros(3, 3)
    state_dict["module.logit_scale_a"] = torch.tensor(2.6593)
    checkpoint = {
        "epoch": 45,
        "name": "630k-audioset",
        "state_dict": state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": np.float64(1e-4), "betas": (0.9, 0.99)}]},
    }
    path = tmp_path_factory.mktemp("laion") / "630k-audioset-best.pt"
    torch.save(checkpoint, path)
    return source, path


def test_a_laion_training_checkpoint_loads_its_audio_weights(laion_checkpoint):
    source, path = laion_checkpoint
    loaded = AudioEncoder.from_pretrained(path)
    audio = _noise(1, 10.0, seed=8)
    expected = source.embed(audio).projection
    assert torch.equal(loaded.embed(audio).projection, expected)


def test_a_checkpoint_of_another_architecture_is_refused(encoder, tmp_path):
    path = tmp_path / "tiny-as-laion.pt"
    torch.save({"state_dict": encoder.state_dict()}, path)
    with pytest.raises(CheckpointError, match="do not fit the HTSAT-tiny architecture"):
        AudioEncoder.from_pretrained(path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable laion-clap checkpoint"):
        AudioEncoder.from_pretrained(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        AudioEncoder.from_pretrained(tmp_path / "630k-audioset-best.pt")


def test_bad_audio_is_rejected_with_the_expected_format(encoder):
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        encoder.embed(torch.zeros(RATE))
    with pytest.raises(ValueError, match="float"):
        encoder.embed(torch.zeros(1, RATE, dtype=torch.int16))
    with pytest.raises(ValueError, match="NaN"):
        encoder.embed(torch.full((1, RATE), float("nan")))
    with pytest.raises(ValueError, match="hop_s"):
        encoder.embed(torch.zeros(1, RATE), hop_s=12.0)
