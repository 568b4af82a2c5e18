"""What the Geolocator's stages return for a clip: `Perception`, `Reasoning`, `Prediction` (with its
`Mode`s), and `GeolocationResult`, the three with the model versions and timings.

numpy arrays and plain Python values only, and no model code imported: they pickle cheaply between
processes, and unpickling one loads no model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LOG_DENSITY_UNITS = "nats/sr"
"""Units of every log-density in a result."""


@dataclass
class Perception:
    """One clip's perception features."""

    clip: str
    """The clip's name (its path, or the uploaded file name)."""
    duration_s: float
    """Seconds of video the frames were drawn from."""
    visual_per_frame: np.ndarray
    """(T, 512) float32 GeoCLIP features h_t of the sampled frames."""
    atoms: list[dict[str, Any]]
    """IC-SAE atoms of every audio window, strongest first: the feature table's atom fields (`window`,
    `step`, `class_mid`, `class_name`, `kernel`, `strength`)."""
    atom_vectors: np.ndarray
    """(A, 512) float32 z·w of each atom (its kernel scaled by its strength), in `atoms`' order."""


@dataclass
class Reasoning:
    """The MLLM's answer for one clip."""

    completion: str
    """The generated text."""
    trace: str
    """The reasoning trace ("" when the completion does not parse)."""
    answer_latlon_deg: tuple[float, float] | None
    """The answer's (latitude, longitude) in degrees; None when the completion does not parse."""
    parse_error: str | None
    """Why the completion does not parse; None when it does."""
    psi: np.ndarray
    """(H,) float32 ψ, the final hidden state that conditions the RFM head."""


@dataclass(frozen=True)
class Mode:
    """One mode of a predicted density."""

    latlon_deg: tuple[float, float]
    """(latitude, longitude) of the mode's densest sample, degrees."""
    probability: float
    """Share of the M samples within `mode_radius_km` of it (assigned greedily, densest mode first)."""
    log_density: float
    """Log-density at the mode, nats/sr."""


@dataclass
class Prediction:
    """The RFM head's density for one clip, summarised."""

    latlon_deg: tuple[float, float]
    """Point estimate (latitude, longitude), degrees: the densest of the M samples."""
    log_density: float
    """Log-density at the point estimate, nats/sr."""
    modes: list[Mode]
    """Up to `top_k` modes, strongest first."""
    credible_areas_km2: dict[float, float]
    """Area of the highest-density credible region of each level in `credible_levels`, km²."""


@dataclass
class GeolocationResult:
    """Everything the Geolocator says about one clip."""

    perception: Perception
    reasoning: Reasoning
    prediction: Prediction
    models: dict[str, str]
    """Model version of each stage's models: "<name>@<weights fingerprint>"."""
    timings_s: dict[str, float]
    """Seconds per stage (`decode`, `perceive`, `reason`, `predict`) and `total`."""

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready types (no arrays; ψ and atom vectors left out)."""
        prediction, reasoning = self.prediction, self.reasoning
        answer = reasoning.answer_latlon_deg
        return {
            "clip": self.perception.clip,
            "latlon_deg": list(prediction.latlon_deg),
            "log_density": prediction.log_density,
            "log_density_units": LOG_DENSITY_UNITS,
            "modes": [
                {
                    "latlon_deg": list(mode.latlon_deg),
                    "probability": mode.probability,
                    "log_density": mode.log_density,
                }
                for mode in prediction.modes
            ],
            "credible_regions": [
                {"level": level, "area_km2": area} for level, area in prediction.credible_areas_km2.items()
            ],
            "atoms": [dict(atom) for atom in self.perception.atoms],
            "reasoning": {
                "completion": reasoning.completion,
                "trace": reasoning.trace,
                "answer_latlon_deg": None if answer is None else list(answer),
                "parse_error": reasoning.parse_error,
            },
            "models": dict(self.models),
            "timings_s": dict(self.timings_s),
        }
