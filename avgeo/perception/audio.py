"""CLAP's audio tower (laion-clap): 48 kHz mono audio -> one 512-d embedding per fixed 10 s window.

The model is laion-clap's HTS-AT audio branch (`HTSAT_Swin_Transformer`, with the log-mel front end of
laion-clap's "HTSAT-tiny" model config: 48 kHz, 480 000-sample clips, 64 mel bins) followed by CLAP's
audio projection (Linear -> ReLU -> Linear into the 512-d joint space). Parameter names are CLAP's own
(`audio_branch.*`, `audio_projection.*`), so a released checkpoint's audio weights load unchanged.
Only the audio tower is built: `CLAP_Module` would also build a text tower, whose default (RoBERTa)
downloads `roberta-base` and whose offline alternative ('transformer') stays randomly initialised
because the released text weights are RoBERTa's. avgeo embeds no text, so it builds neither.
laion-clap builds tokenizers from the Hugging Face hub when imported: set HF_HUB_OFFLINE=1 on
machines without internet, or the import waits minutes for the hub.

Checkpoints (`AudioEncoder.from_pretrained`):
- `tiny`: a smaller HTS-AT (patch width 32, depths 1-1-2-1, 3.6 M parameters) with the same front end
  and projection, seeded; ~23 ms per window on 2 CPU cores against ~270 ms for HTSAT-tiny (measured).
- a laion-clap training checkpoint such as `630k-audioset-best.pt` (HTSAT-tiny, non-fusion). It is read
  with `torch.load(weights_only=True)`, allowlisting only numpy scalars and dtypes: laion-clap's trainer
  pickles numpy floats (its cosine learning rate) into the optimizer state, which the plain weights-only
  loader refuses. Its text weights are ignored; every audio weight must be present.
- a directory written by `save_pretrained` (config.json + model.safetensors).

Windows are fixed: starts at 0, hop, 2·hop, … seconds, as many as needed to cover the audio, the last
one zero-padded; never laion-clap's random crop. The encoder is frozen and always in eval mode (HTS-AT's
training mode adds random SpecAugment).

Which output the IC-SAE decomposes: `projection`, the embedding before L2 normalisation.
Algorithm 1 treats a mixture embedding as a sum of atoms and subtracts them one by one, and MART's
step-k target is the embedding of the k-th clip at its gain, `f_audio(g_k c_k)`, with g_1 > g_2 > …
Normalised embeddings cannot carry that: every target has norm 1 whatever its gain (CLAP(g·c) ≈ CLAP(c),
measured), so the loudness order MART teaches is invisible to the reconstruction loss, and a unit-norm
mixture cannot be the sum of K unit-norm atoms. The projection keeps a norm that depends on the input
(the log-mel front end turns a gain into an offset the network sees), so the IC-SAE's input, its atoms'
strengths and MART's targets all live in that unnormalised space. CLAP is not additive either way; MART
fits the dictionary to the projections it actually produces. `embedding` (unit-norm) remains the output
for cosine similarity.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import laion_clap.clap_module as laion_clap_module
import numpy as np
import torch
import torch.nn.functional as F
from laion_clap.clap_module.htsat import HTSAT_Swin_Transformer
from laion_clap.clap_module.model import CLAPAudioCfp
from torch import nn

from avgeo.config import config_to_dict
from avgeo.perception.checkpoints import (
    CheckpointError,
    TinyRecipe,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

_AUDIO_PREFIXES = ("audio_branch.", "audio_projection.")

# What laion-clap's trainer pickles besides tensors: numpy scalars (e.g. a float64 learning rate).
_NUMPY_SCALAR_GLOBALS = [
    np.core.multiarray.scalar,
    np.dtype,
    *(type(np.dtype(kind)) for kind in (np.float64, np.float32, np.int64, np.int32, np.bool_)),
]


@dataclass
class AudioEncoderConfig:
    """Architecture of the audio tower; the defaults are the released CLAP checkpoints' (HTSAT-tiny)."""

    laion_model: str = "HTSAT-tiny"
    """laion-clap model config whose `audio_cfg` gives the front end (sample rate, clip length, mel bins)."""
    embed_dim: int = 96
    """HTS-AT patch-embedding width; the audio feature width is embed_dim · 2^(len(depths) - 1)."""
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    """Swin blocks per HTS-AT stage."""
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    """Attention heads per HTS-AT stage."""
    swin_window: int = 8
    """Swin attention window, in patches."""
    joint_dim: int = 512
    """Width of CLAP's joint audio-text space, the output width."""


TINY_AUDIO_CONFIG = AudioEncoderConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8])
"""The `tiny` checkpoint's architecture: same front end and projection, a much smaller HTS-AT."""


@dataclass
class AudioEmbedding:
    """CLAP embeddings of B clips cut into W windows."""

    embedding: torch.Tensor
    """(B, W, 512) unit-norm embeddings (CLAP's public output, for cosine similarity)."""
    projection: torch.Tensor
    """(B, W, 512) the same before normalisation: what the IC-SAE decomposes and MART reconstructs."""
    window_starts_s: torch.Tensor
    """(W,) float64 start of each window, seconds from the clip start."""


class AudioEncoder(nn.Module):
    """Frozen CLAP audio tower with fixed windowing."""

    def __init__(self, config: AudioEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or AudioEncoderConfig()
        audio_cfg = _laion_audio_cfg(self.config.laion_model)
        self.sample_rate_hz: int = audio_cfg.sample_rate
        self.window_samples: int = audio_cfg.clip_samples
        # Spectrogram size and patching are fixed for every HTS-AT size laion-clap builds.
        self.audio_branch = HTSAT_Swin_Transformer(
            spec_size=256,
            patch_size=4,
            patch_stride=(4, 4),
            num_classes=audio_cfg.class_num,
            embed_dim=self.config.embed_dim,
            depths=self.config.depths,
            num_heads=self.config.num_heads,
            window_size=self.config.swin_window,
            config=audio_cfg,
        )
        joint = self.config.joint_dim
        self.audio_projection = nn.Sequential(
            nn.Linear(self.audio_branch.num_features, joint), nn.ReLU(), nn.Linear(joint, joint)
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> AudioEncoder:
        """Stays in eval mode: the encoder is frozen and HTS-AT's training mode is random."""
        return super().train(False)

    @property
    def window_s(self) -> float:
        """Length of one window, seconds (10 s for every released CLAP)."""
        return self.window_samples / self.sample_rate_hz

    @torch.no_grad()
    def embed(
        self, audio: torch.Tensor, hop_s: float = 10.0, windows_per_forward: int = 16
    ) -> AudioEmbedding:
        """Embed (B, S) float mono audio at 48 kHz in windows of `window_s` every `hop_s` seconds."""
        audio = self._check_audio(audio)
        windows, starts = self.cut_windows(audio, hop_s)
        batch, num_windows = windows.shape[:2]
        projection = torch.cat(
            [self._project(chunk) for chunk in windows.flatten(0, 1).split(windows_per_forward)]
        )
        projection = projection.unflatten(0, (batch, num_windows))
        return AudioEmbedding(
            embedding=F.normalize(projection, dim=-1),
            projection=projection,
            window_starts_s=starts.double() / self.sample_rate_hz,
        )

    def cut_windows(self, audio: torch.Tensor, hop_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> windows (B, W, window_samples) and their start samples (W,); the last is zero-padded."""
        hop = round(hop_s * self.sample_rate_hz)
        if not 0 < hop <= self.window_samples:
            raise ValueError(
                f"hop_s must be in (0, {self.window_s:g}] seconds so windows cover the audio, got {hop_s}"
            )
        num_windows = 1 + math.ceil(max(audio.shape[-1] - self.window_samples, 0) / hop)
        starts = torch.arange(num_windows) * hop
        padded = F.pad(audio, (0, int(starts[-1]) + self.window_samples - audio.shape[-1]))
        return padded.unfold(-1, self.window_samples, hop), starts

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` into `directory`."""
        save_checkpoint(directory, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, name_or_dir_or_ckpt: str | Path = "tiny") -> AudioEncoder:
        """Load `tiny`, a `save_pretrained` directory or a laion-clap `.pt` checkpoint (see module doc)."""
        source = Path(resolve_checkpoint(name_or_dir_or_ckpt, _TINY_RECIPE))
        if source.is_file():
            config, state_dict = AudioEncoderConfig(), _read_laion_checkpoint(source)
        elif source.is_dir():
            config, state_dict = load_checkpoint(source, AudioEncoderConfig)
        else:
            raise CheckpointError(
                f"{source}: no such file or directory; pass 'tiny', a directory written by "
                "AudioEncoder.save_pretrained, or a laion-clap checkpoint such as 630k-audioset-best.pt"
            )
        # The random init is overwritten at once; it must not advance the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            model = cls(config)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{source}: audio weights do not fit the {config.laion_model} architecture; avgeo loads "
                f"non-fusion HTS-AT CLAP checkpoints such as 630k-audioset-best.pt; {str(exc)[:400]}"
            ) from exc
        return model

    def _project(self, waveform: torch.Tensor) -> torch.Tensor:
        """(n, window_samples) -> (n, joint_dim) projection before normalisation."""
        features = self.audio_branch({"waveform": waveform}, device=waveform.device)["embedding"]
        return self.audio_projection(features)

    def _check_audio(self, audio: torch.Tensor) -> torch.Tensor:
        audio = torch.as_tensor(audio)
        if audio.dim() != 2 or audio.shape[-1] == 0 or not audio.is_floating_point():
            raise ValueError(
                f"audio must be a non-empty float (B, S) batch of mono {self.sample_rate_hz} Hz samples, "
                f"got {audio.dtype} of shape {tuple(audio.shape)}"
            )
        if not torch.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples; decode or resample it again")
        weight = self.audio_projection[0].weight
        return audio.to(device=weight.device, dtype=weight.dtype)


def _laion_audio_cfg(laion_model: str) -> CLAPAudioCfp:
    path = Path(laion_clap_module.__file__).parent / "model_configs" / f"{laion_model}.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: laion-clap has no model config {laion_model!r}; use 'HTSAT-tiny'")
    return CLAPAudioCfp(**json.loads(path.read_text())["audio_cfg"])


def _read_laion_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The audio weights of a laion-clap training checkpoint, without the DDP `module.` prefix."""
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise CheckpointError(f"{path}: not a readable laion-clap checkpoint ({exc})") from exc
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: holds no state dict; expected a laion-clap training checkpoint")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return {key: value for key, value in state_dict.items() if key.startswith(_AUDIO_PREFIXES)}


def _save_tiny(directory: Path) -> None:
    AudioEncoder(TINY_AUDIO_CONFIG).save_pretrained(directory)


_TINY_RECIPE = TinyRecipe(kind="clap", spec=config_to_dict(TINY_AUDIO_CONFIG), build=_save_tiny)
