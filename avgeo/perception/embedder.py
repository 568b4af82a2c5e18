"""Decoded clips -> feature-table rows: the visual encoder, CLAP and the IC-SAE applied to a batch.

Three featurizers, one per frozen model, each turning a batch of clips into the feature table's columns
(`avgeo.data.features`): `VisualFeaturizer` (frames -> `visual_per_frame`, `visual_mean`),
`AudioFeaturizer` (waveform -> `audio_embedding`, `audio_projection`, `audio_mean`) and `AtomFeaturizer`
(CLAP projections -> `atoms`, `atom_class_strength`). The Ray embedding job runs each in its own actor
pool; `ClipEmbedder` runs all three in one process (the plain loop, and the job's baseline).

A batch shares forward passes across clips: every frame of every clip goes through the visual encoder
in chunks of `frames_per_forward`, every audio window of every clip through CLAP in chunks of
`windows_per_forward`, and every window's projection through one IC-SAE decomposition, so clips of
different lengths batch together without padding.

Each featurizer names its model "<name>@<fingerprint>", the fingerprint being the first 12 hex digits
of a SHA-256 over the weights, so two feature tables can be told apart by the checkpoints behind them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Each featurizer imports its model's module when it loads, so an actor running one model does not pay
# for importing the others (transformers, laion-clap: seconds of CPU each).
if TYPE_CHECKING:
    from avgeo.data.decode import DecodedClip
    from avgeo.perception.audio import AudioEncoder
    from avgeo.perception.icsae import ICSAE
    from avgeo.perception.visual import VisualEncoder


def weights_fingerprint(module: nn.Module) -> str:
    """First 12 hex digits of a SHA-256 over the module's state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


class VisualFeaturizer:
    """GeoCLIP features of a batch of clips' frames."""

    def __init__(self, encoder: VisualEncoder, name: str, frames_per_forward: int = 32) -> None:
        self.encoder = encoder
        self.frames_per_forward = frames_per_forward
        self.model = f"{name}@{weights_fingerprint(encoder)}"
        """"<name>@<fingerprint>", the feature table's `models.visual`."""

    @classmethod
    def load(cls, name_or_dir: str, device: str = "cpu", frames_per_forward: int = 32) -> VisualFeaturizer:
        """`VisualEncoder.from_pretrained(name_or_dir)` on `device`."""
        from avgeo.perception.visual import VisualEncoder

        return cls(VisualEncoder.from_pretrained(name_or_dir).to(device), name_or_dir, frames_per_forward)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """[(T_i, H, W, 3) uint8] -> per clip `visual_per_frame` (T_i, 512) and `visual_mean` (512,)."""
        if not frames:
            return []
        all_frames = torch.from_numpy(np.concatenate(frames))[None]  # (1, ΣT, H, W, 3)
        per_frame = self.encoder.encode_frames(all_frames, self.frames_per_forward).per_frame[0]
        per_frame = per_frame.float().cpu()
        return [
            {"visual_per_frame": clip.numpy(), "visual_mean": clip.mean(dim=0).numpy()}
            for clip in per_frame.split([len(clip_frames) for clip_frames in frames])
        ]


class AudioFeaturizer:
    """CLAP embeddings of a batch of clips' waveforms, in fixed windows every `hop_s` seconds."""

    def __init__(
        self, encoder: AudioEncoder, name: str, hop_s: float = 10.0, windows_per_forward: int = 16
    ) -> None:
        self.encoder = encoder
        self.hop_s = hop_s
        self.windows_per_forward = windows_per_forward
        self.model = f"{name}@{weights_fingerprint(encoder)}"
        """"<name>@<fingerprint>", the feature table's `models.audio`."""

    @classmethod
    def load(
        cls, name_or_dir: str, device: str = "cpu", hop_s: float = 10.0, windows_per_forward: int = 16
    ) -> AudioFeaturizer:
        """`AudioEncoder.from_pretrained(name_or_dir)` on `device`."""
        from avgeo.perception.audio import AudioEncoder

        encoder = AudioEncoder.from_pretrained(name_or_dir).to(device)
        return cls(encoder, name_or_dir, hop_s, windows_per_forward)

    def __call__(self, waveforms: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """[(S_i,) float32 mono at the encoder's rate] -> per clip `audio_embedding` and
        `audio_projection` (W_i, 512) and `audio_mean` (512,)."""
        if not waveforms:
            return []
        windows = []
        for waveform in waveforms:
            if waveform.size == 0:
                raise ValueError("a clip has no audio samples; decode with require_audio: true")
            clip_windows, _ = self.encoder.cut_windows(torch.from_numpy(waveform)[None], self.hop_s)
            windows.append(clip_windows[0])
        # Each row is exactly one window, so embedding the stacked rows cuts nothing further.
        stacked = torch.cat(windows)  # (ΣW, window_samples)
        embedded = self.encoder.embed(stacked, self.encoder.window_s, self.windows_per_forward)
        sizes = [len(clip_windows) for clip_windows in windows]
        rows = []
        for embedding, projection in zip(
            embedded.embedding[:, 0].float().cpu().split(sizes),
            embedded.projection[:, 0].float().cpu().split(sizes),
            strict=True,
        ):
            rows.append(
                {
                    "audio_embedding": embedding.numpy(),
                    "audio_projection": projection.numpy(),
                    "audio_mean": F.normalize(embedding.mean(dim=0), dim=0).numpy(),
                }
            )
        return rows


class AtomFeaturizer:
    """IC-SAE atoms (Algorithm 1, `num_atoms` steps) of every audio window of a batch of clips."""

    def __init__(self, icsae: ICSAE, name: str, num_atoms: int) -> None:
        if num_atoms < 1:
            raise ValueError(f"num_atoms must be at least 1, got {num_atoms}")
        self.icsae = icsae
        self.num_atoms = num_atoms
        self.model = f"{name}@{weights_fingerprint(icsae)}"
        """"<name>@<fingerprint>", the feature table's `models.icsae`."""

    @classmethod
    def load(cls, name_or_dir: str, num_atoms: int, device: str = "cpu") -> AtomFeaturizer:
        """`ICSAE.from_pretrained(name_or_dir)` on `device`."""
        from avgeo.perception.icsae import ICSAE

        return cls(ICSAE.from_pretrained(name_or_dir).to(device), name_or_dir, num_atoms)

    @torch.no_grad()
    def __call__(self, projections: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """[(W_i, 512) CLAP projections] -> per clip `atoms` (dicts of `ATOM_TYPE`'s fields, window by
        window) and `atom_class_strength` (527,): each class's atom strengths summed over windows."""
        if not projections:
            return []
        device = self.icsae.dictionary.device
        windows = torch.from_numpy(np.concatenate(projections)).to(device, self.icsae.dictionary.dtype)
        decomposition = self.icsae.decompose(windows, self.num_atoms)
        atoms_per_window = self.icsae.atoms(decomposition)
        # Invalid steps carry class -1 and strength 0: clamp the index, the zero adds nothing.
        per_window_strength = torch.zeros(len(windows), len(self.icsae.classes), device=device)
        per_window_strength.scatter_add_(
            1, decomposition.classes.clamp_min(0), decomposition.strengths.float()
        )
        rows, first = [], 0
        for projection in projections:
            clip_windows = range(first, first + len(projection))
            atoms = [
                {
                    "window": window - first,
                    "step": atom.step,
                    "class_mid": atom.class_mid,
                    "class_name": atom.class_name,
                    "kernel": atom.kernel,
                    "strength": atom.strength,
                }
                for window in clip_windows
                for atom in atoms_per_window[window]
            ]
            strength = per_window_strength[first : first + len(projection)].sum(dim=0)
            rows.append({"atoms": atoms, "atom_class_strength": strength.cpu().numpy()})
            first += len(projection)
        return rows


class ClipEmbedder:
    """The three featurizers in one process: decoded clips -> feature-table rows (the plain loop)."""

    def __init__(self, visual: VisualFeaturizer, audio: AudioFeaturizer, atoms: AtomFeaturizer) -> None:
        self.visual = visual
        self.audio = audio
        self.atoms = atoms

    def embed(self, clips: Sequence[DecodedClip]) -> list[dict[str, Any]]:
        """Feature columns, `models` and `timings` (without `decode_s`) of each clip, in order."""
        if not clips:
            return []
        start_s = time.perf_counter()
        visual = self.visual([clip.frames for clip in clips])
        visual_s = time.perf_counter() - start_s
        audio = self.audio([clip.audio for clip in clips])
        audio_s = time.perf_counter() - start_s - visual_s
        atoms = self.atoms([row["audio_projection"] for row in audio])
        icsae_s = time.perf_counter() - start_s - visual_s - audio_s
        models = {"visual": self.visual.model, "audio": self.audio.model, "icsae": self.atoms.model}
        timings = {
            "visual_s": visual_s / len(clips),
            "audio_s": audio_s / len(clips),
            "icsae_s": icsae_s / len(clips),
        }
        return [
            {**visual_row, **audio_row, **atom_row, "models": models, "timings": dict(timings)}
            for visual_row, audio_row, atom_row in zip(visual, audio, atoms, strict=True)
        ]
