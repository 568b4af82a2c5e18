"""The composed Geolocator: a clip -> perception -> reasoning -> prediction, and each stage on its own.

Three stage classes each load only their own models, so a Serve deployment or a Ray Data actor pool
builds the one stage it runs from the same `GeolocatorConfig`:

- `PerceptionStage`: decoded clips -> `Perception` (GeoCLIP frame features, IC-SAE atoms of every CLAP
  window), through the embedding job's featurizers, so it computes exactly the feature table's columns;
- `ReasoningStage`: perceptions -> `Reasoning` (the MLLM's completion, its parsed trace and answer, ψ);
- `PredictionStage`: reasonings -> `Prediction` (the RFM head's point estimate, top-k modes, credible
  region areas), and the density as a PNG.

`Geolocator` holds the three; `geolocate(path)` decodes one file and runs them in turn. The stage outputs
are in `avgeo.stage_outputs`.

A clip's result depends on the clip and the config alone, never on which clips share a batch: the MLLM
decodes greedily by default (a batch of sampled completions would share one random stream), and the flow
starts every clip from the same M base points, drawn from a generator seeded with `seed`.

Model versions are "<name>@<first 12 hex digits of a SHA-256 over the weights>", as in the feature table.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import AutoConfig

from avgeo.config import config_to_dict
from avgeo.data.decode import DecodeConfig, DecodedClip, decode_clip
from avgeo.geo.sphere import xyz_to_latlon
from avgeo.perception.checkpoints import CheckpointError, TinyRecipe, resolve_checkpoint
from avgeo.perception.embedder import (
    AtomFeaturizer,
    AudioFeaturizer,
    ClipEmbedder,
    VisualFeaturizer,
    weights_fingerprint,
)
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.heatmap import plot_density
from avgeo.prediction.regions import credible_region_areas_km2, point_estimate, top_k_modes
from avgeo.prediction.vector_field import RFMConfig
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.checkpoints import resolve_llava
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig
from avgeo.reasoning.prompt import SoundAtom
from avgeo.stage_outputs import GeolocationResult, Mode, Perception, Prediction, Reasoning

T = TypeVar("T")


@dataclass
class GeolocatorConfig:
    """Models and inference settings of the composed Geolocator (one config for every stage)."""

    visual_model: str = "tiny"
    """GeoCLIP's CLIP: `tiny`, a local CLIP directory or a hub id (`VisualEncoder.from_pretrained`)."""
    audio_model: str = "tiny"
    """CLAP audio tower: `tiny`, a `save_pretrained` directory or a laion-clap `.pt` checkpoint."""
    icsae_model: str = "tiny"
    """IC-SAE dictionary: `tiny` (seeded, untrained) or a directory written by `ICSAE.save_pretrained`."""
    mllm: MLLMConfig = field(default_factory=lambda: MLLMConfig(temperature=0.0))
    """The MLLM (`mllm.model`: `tiny`, a LLaVA directory or hub id) and its decoding. Greedy when this
    section is left out; a section given in a config is a whole `MLLMConfig`, whose temperature defaults
    to 1, so write `temperature: 0` there for answers that do not depend on batching."""
    rfm_model: str = "tiny"
    """RFM head: `tiny` (seeded, untrained, conditioned on the MLLM's ψ) or a directory written by
    `RFMHead.save_pretrained` (the RFM job's model directory) whose cond_dim is the MLLM's ψ width."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How clips are decoded into frames and audio."""
    audio_hop_s: float = 10.0
    """Seconds between the starts of consecutive 10 s CLAP windows."""
    atoms_per_window: int = 8
    """K, IC-SAE steps (atoms) per audio window; the MLLM reads the `mllm.max_atoms` strongest of all."""
    num_samples: int = 256
    """M, flow samples per clip behind the point estimate, the modes and the credible regions."""
    flow_num_steps: int | None = None
    """ODE steps when sampling and drawing the density; None keeps the head's own `num_steps`."""
    top_k: int = 3
    """Modes reported per clip, strongest first."""
    mode_radius_km: float = 750.0
    """Samples within this great-circle distance of a mode belong to it (750 km: country scale)."""
    credible_levels: tuple[float, ...] = (0.5, 0.9)
    """Masses of the highest-density credible regions whose areas are reported."""
    heatmap_resolution_deg: float = 5.0
    """Grid cell of the density PNG, degrees (must divide 180); each cell costs one log-density solve."""
    seed: int = 0
    """Seed of each clip's flow draws (and of MLLM sampling when `mllm.temperature` > 0)."""
    device: str = "cpu"
    """Torch device of every model, e.g. "cpu" or "cuda"."""

    def __post_init__(self) -> None:
        self.credible_levels = tuple(self.credible_levels)
        if self.atoms_per_window < 1:
            raise ValueError(f"atoms_per_window must be at least 1, got {self.atoms_per_window}")
        if self.num_samples < 1 or self.top_k < 1:
            raise ValueError(f"num_samples and top_k must be >= 1, got {self.num_samples}, {self.top_k}")
        if self.flow_num_steps is not None and self.flow_num_steps < 1:
            raise ValueError(f"flow_num_steps must be at least 1 or null, got {self.flow_num_steps}")
        if not self.mode_radius_km > 0:
            raise ValueError(f"mode_radius_km must be > 0, got {self.mode_radius_km}")
        if not all(0.0 < level <= 1.0 for level in self.credible_levels):
            raise ValueError(f"credible_levels {self.credible_levels} must lie in (0, 1]")


class PerceptionStage:
    """Decoded clips -> `Perception`: GeoCLIP, CLAP and the IC-SAE, batched across clips."""

    def __init__(self, embedder: ClipEmbedder) -> None:
        self.embedder = embedder
        self.models = {
            "visual": embedder.visual.model,
            "audio": embedder.audio.model,
            "icsae": embedder.atoms.model,
        }
        """Model version of each perception model."""

    @classmethod
    def from_config(cls, config: GeolocatorConfig) -> PerceptionStage:
        """Load the visual encoder, CLAP and the IC-SAE named in `config`."""
        return cls(
            ClipEmbedder(
                VisualFeaturizer.load(config.visual_model, config.device),
                AudioFeaturizer.load(config.audio_model, config.device, config.audio_hop_s),
                AtomFeaturizer.load(config.icsae_model, config.atoms_per_window, config.device),
            )
        )

    @torch.no_grad()
    def perceive(self, clips: Sequence[DecodedClip]) -> list[Perception]:
        """Features of each decoded clip (decoded with audio), in order."""
        rows = self.embedder.embed(clips)
        dictionary = self.embedder.atoms.icsae.dictionary  # (512, N) unit-norm kernels
        perceptions = []
        for clip, row in zip(clips, rows, strict=True):
            atoms = sorted(row["atoms"], key=lambda atom: -atom["strength"])
            kernels = torch.tensor([atom["kernel"] for atom in atoms], dtype=torch.long)
            strengths = torch.tensor([atom["strength"] for atom in atoms], dtype=dictionary.dtype)
            vectors = (dictionary[:, kernels.to(dictionary.device)].T.cpu() * strengths[:, None]).float()
            perceptions.append(
                Perception(clip.path, clip.duration_s, row["visual_per_frame"], atoms, vectors.numpy())
            )
        return perceptions


class ReasoningStage:
    """Perceptions -> `Reasoning`: the MLLM's completion, parsed, and its ψ."""

    def __init__(self, mllm: GeoMLLM, seed: int) -> None:
        self.mllm = mllm
        self.seed = seed
        self.models = {"mllm": f"{mllm.config.model}@{weights_fingerprint(mllm)}"}
        """Model version of the MLLM."""

    @classmethod
    def from_config(cls, config: GeolocatorConfig) -> ReasoningStage:
        """Load the MLLM named in `config.mllm`."""
        return cls(GeoMLLM.from_pretrained(config=config.mllm).to(config.device), config.seed)

    @property
    def psi_dim(self) -> int:
        """Width H of ψ."""
        return self.mllm.psi_dim

    @torch.no_grad()
    def reason(self, perceptions: Sequence[Perception]) -> list[Reasoning]:
        """One greedy (or seeded) completion and its ψ per perception, in order."""
        # build_inputs takes one (B, T, 512) tensor: clips with different frame counts go in separate batches.
        by_num_frames: dict[int, list[int]] = defaultdict(list)
        for index, perception in enumerate(perceptions):
            by_num_frames[len(perception.visual_per_frame)].append(index)
        results: list[Reasoning | None] = [None] * len(perceptions)
        for indices in by_num_frames.values():
            group = [perceptions[index] for index in indices]
            for index, reasoning in zip(indices, self._reason_batch(group), strict=True):
                results[index] = reasoning
        return results

    def _reason_batch(self, perceptions: Sequence[Perception]) -> list[Reasoning]:
        visual = torch.from_numpy(np.stack([p.visual_per_frame for p in perceptions]))
        atoms = [
            [
                SoundAtom(atom["class_name"], atom["strength"], torch.from_numpy(vector))
                for atom, vector in zip(p.atoms, p.atom_vectors, strict=True)
            ]
            for p in perceptions
        ]
        inputs = self.mllm.build_inputs(visual, atoms)
        generation = self.mllm.generate(inputs, seed=self.seed if self.mllm.config.temperature > 0 else None)
        psi = self.mllm.psi(inputs, generation.token_ids, generation.mask).float().cpu().numpy()
        reasonings = []
        for text, clip_psi in zip(generation.texts, psi, strict=True):
            parsed = parse_response(text)
            reasonings.append(Reasoning(text, parsed.trace, parsed.latlon_deg, parsed.error, clip_psi))
        return reasonings


class PredictionStage:
    """Reasonings -> `Prediction`: the RFM head's density conditioned on ψ, summarised."""

    def __init__(self, head: RFMHead, name: str, config: GeolocatorConfig) -> None:
        if config.flow_num_steps is not None:
            head.config = dataclasses.replace(head.config, num_steps=config.flow_num_steps)
        self.head = head.eval()
        self.config = config
        self.models = {"rfm": f"{name}@{weights_fingerprint(head)}"}
        """Model version of the RFM head."""

    @classmethod
    def from_config(cls, config: GeolocatorConfig) -> PredictionStage:
        """Load the RFM head named in `config.rfm_model`; its ψ width must be the MLLM's."""
        psi_dim = _psi_dim(config.mllm.model)
        directory = resolve_checkpoint(config.rfm_model, tiny_rfm_recipe(psi_dim))
        head = RFMHead.from_pretrained(directory, config.device)
        if head.config.cond_dim != psi_dim:
            raise CheckpointError(
                f"{directory}: the RFM head is conditioned on {head.config.cond_dim}-d inputs but the MLLM "
                f"{config.mllm.model!r} gives {psi_dim}-d ψ; train the head on this MLLM's ψ or pass 'tiny'"
            )
        return cls(head, config.rfm_model, config)

    @torch.no_grad()
    def predict(self, reasonings: Sequence[Reasoning]) -> list[Prediction]:
        """Sample the density of each clip's ψ and summarise it, in order: one flow integration for the
        whole batch, every clip starting from the same M base points (drawn from `seed`)."""
        if not reasonings:
            return []
        config = self.config
        cond = self._cond(np.stack([reasoning.psi for reasoning in reasonings]))
        samples, log_density = self.head.sample_with_log_density(
            cond, config.num_samples, torch.Generator().manual_seed(config.seed), shared_base=True
        )
        estimates = point_estimate(samples, log_density)
        modes = top_k_modes(samples, log_density, config.top_k, config.mode_radius_km)
        areas_km2 = credible_region_areas_km2(log_density, config.credible_levels)
        return [
            Prediction(
                latlon_deg=_latlon_tuple(estimates[clip]),
                log_density=float(log_density[clip].max()),
                modes=[
                    Mode(_latlon_tuple(xyz), float(mass), float(mode_log_density))
                    for xyz, mass, mode_log_density, found in zip(
                        modes.xyz[clip],
                        modes.mass[clip],
                        modes.log_density[clip],
                        ~modes.xyz[clip].isnan().any(dim=-1),
                        strict=True,
                    )
                    if found
                ],
                credible_areas_km2={
                    level: float(area)
                    for level, area in zip(config.credible_levels, areas_km2[clip], strict=True)
                },
            )
            for clip in range(len(reasonings))
        ]

    def density_png(self, psi: np.ndarray, estimate_latlon_deg: tuple[float, float] | None = None) -> bytes:
        """The density of one clip's ψ (H,) over the globe as PNG bytes, the point estimate marked."""
        cond = self._cond(psi[None])
        with tempfile.TemporaryDirectory(prefix="avgeo-density-") as directory:
            path = plot_density(
                lambda xyz: self.head.log_density(xyz[None], cond)[0],
                Path(directory) / "density.png",
                estimate_latlon_deg=estimate_latlon_deg,
                resolution_deg=self.config.heatmap_resolution_deg,
            )
            return path.read_bytes()

    def _cond(self, psi: np.ndarray) -> torch.Tensor:
        """ψ (B, H) as a tensor of the head's dtype and device."""
        parameter = next(self.head.parameters())
        return torch.as_tensor(psi, dtype=parameter.dtype, device=parameter.device)


class Geolocator:
    """The three stages composed: a video file in, a `GeolocationResult` out."""

    def __init__(
        self,
        config: GeolocatorConfig,
        perception: PerceptionStage,
        reasoning: ReasoningStage,
        prediction: PredictionStage,
    ) -> None:
        self.config = config
        self.perception = perception
        self.reasoning = reasoning
        self.prediction = prediction

    @classmethod
    def from_config(cls, config: GeolocatorConfig | None = None) -> Geolocator:
        """Load every model named in `config` (default: the tiny models)."""
        config = config or GeolocatorConfig()
        return cls(
            config,
            PerceptionStage.from_config(config),
            ReasoningStage.from_config(config),
            PredictionStage.from_config(config),
        )

    @property
    def models(self) -> dict[str, str]:
        """Model version of every model, by stage model name."""
        return {**self.perception.models, **self.reasoning.models, **self.prediction.models}

    def decode(self, path: str | Path) -> DecodedClip:
        """`decode_clip` with the config's settings; raises a `DecodeError` subclass for bad files."""
        return decode_clip(path, self.config.decode)

    def perceive(self, clips: Sequence[DecodedClip]) -> list[Perception]:
        """Stage 1 on a batch of decoded clips."""
        return self.perception.perceive(clips)

    def reason(self, perceptions: Sequence[Perception]) -> list[Reasoning]:
        """Stage 2 on a batch of perceptions."""
        return self.reasoning.reason(perceptions)

    def predict(self, reasonings: Sequence[Reasoning]) -> list[Prediction]:
        """Stage 3 on a batch of reasonings."""
        return self.prediction.predict(reasonings)

    def geolocate(self, path: str | Path) -> GeolocationResult:
        """Decode one video file and run the three stages on it, timing each."""
        timings_s: dict[str, float] = {}
        started_s = time.perf_counter()
        clip = _timed(timings_s, "decode", self.decode, path)
        (perception,) = _timed(timings_s, "perceive", self.perceive, [clip])
        (reasoning,) = _timed(timings_s, "reason", self.reason, [perception])
        (prediction,) = _timed(timings_s, "predict", self.predict, [reasoning])
        timings_s["total"] = time.perf_counter() - started_s
        return GeolocationResult(perception, reasoning, prediction, self.models, timings_s)


def tiny_rfm_recipe(psi_dim: int) -> TinyRecipe:
    """The `tiny` RFM head for ψ of width `psi_dim`: `RFMConfig`'s defaults, seeded by its `seed`."""
    config = RFMConfig(cond_dim=psi_dim)

    def build(directory: Path) -> None:
        RFMHead(config).save_pretrained(directory)

    return TinyRecipe(kind="rfm", spec=config_to_dict(config), build=build)


def _psi_dim(mllm_model: str) -> int:
    """ψ's width for an MLLM checkpoint, read from its config alone (the prediction stage loads no MLLM)."""
    source = resolve_llava(mllm_model)
    try:
        return AutoConfig.from_pretrained(source).text_config.hidden_size
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{source}: cannot read a LLaVA config to size the RFM head's ψ ({exc}); pass 'tiny' or a "
            "LLaVA directory as mllm.model"
        ) from exc


def _latlon_tuple(xyz: torch.Tensor) -> tuple[float, float]:
    lat_deg, lon_deg = xyz_to_latlon(xyz.double()).tolist()
    return lat_deg, lon_deg


def _timed(timings_s: dict[str, float], name: str, stage: Callable[..., T], *args: Any) -> T:
    started_s = time.perf_counter()
    result = stage(*args)
    timings_s[name] = time.perf_counter() - started_s
    return result
