"""GeoCLIP's own prediction, the visual baseline: a softmax over its gallery of 100K GPS coordinates.

GeoCLIP scores image features against every gallery coordinate's location embedding:
`logits = exp(logit_scale) · cos(image feature, location feature)`, then a softmax over the gallery.
The location encoder, the gallery (`coordinates_100K.csv`) and `logit_scale` are those shipped in the
geoclip package. The gallery embeddings depend only on them, so they are computed once (~45 s for the
full gallery on 2 CPU cores) and cached as .npy under `<cache root>/geoclip_gallery/`, named by a hash
of the encoder weights and the gallery coordinates. `gallery_size` keeps only the first rows of the
gallery: a cheaper, coarser baseline for tests and demos.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from geoclip import LocationEncoder
from geoclip.model.misc import load_gps_data
from torch import nn

from avgeo.perception.checkpoints import cache_root, geoclip_file

_ENCODE_BATCH = 10_000
"""Coordinates per location-encoder forward while building the gallery embeddings."""


@dataclass
class GalleryPrediction:
    """Top-k gallery coordinates for B images."""

    latlon_deg: torch.Tensor
    """(B, k, 2) latitude, longitude in degrees, most probable first."""
    probs: torch.Tensor
    """(B, k) their probabilities under the softmax over the whole gallery."""


class GeoCLIPGallery:
    """GeoCLIP's location encoder over a fixed GPS gallery, with its embeddings cached on disk."""

    def __init__(
        self, location_encoder: nn.Module, gallery_latlon_deg: torch.Tensor, logit_scale: float
    ) -> None:
        """`gallery_latlon_deg` (G, 2) in degrees; logits are scaled by exp(`logit_scale`)."""
        self.location_encoder = location_encoder.eval()
        self.gallery_latlon_deg = gallery_latlon_deg
        self.logit_scale = logit_scale

    @classmethod
    def from_geoclip_package(cls, gallery_size: int | None = None) -> GeoCLIPGallery:
        """GeoCLIP's trained location encoder, logit scale and gallery (its first `gallery_size` rows)."""
        gallery = load_gps_data(geoclip_file("model/gps_gallery/coordinates_100K.csv"))
        if gallery_size is not None:
            if not 1 <= gallery_size <= len(gallery):
                raise ValueError(f"gallery_size must be in [1, {len(gallery)}], got {gallery_size}")
            gallery = gallery[:gallery_size]
        # Its random Fourier features are drawn, then overwritten by the shipped weights: keep the
        # caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            location_encoder = LocationEncoder()
        logit_scale = torch.load(
            geoclip_file("model/weights/logit_scale_weights.pth"), map_location="cpu", weights_only=True
        )
        return cls(location_encoder, gallery, float(logit_scale))

    @functools.cached_property
    def cache_path(self) -> Path:
        """The .npy file holding this gallery's embeddings, named by a hash of weights and coordinates."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.location_encoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(self.gallery_latlon_deg.numpy().tobytes())
        name = f"{digest.hexdigest()[:16]}-{len(self.gallery_latlon_deg)}.npy"
        return cache_root() / "geoclip_gallery" / name

    @functools.cached_property
    def embeddings(self) -> torch.Tensor:
        """(G, 512) unit-norm location embeddings of the gallery, read from the cache or built and cached."""
        if self.cache_path.is_file():
            return torch.from_numpy(np.load(self.cache_path))
        with torch.no_grad():
            parts = [self.location_encoder(chunk) for chunk in self.gallery_latlon_deg.split(_ENCODE_BATCH)]
        embeddings = F.normalize(torch.cat(parts), dim=-1)
        self._write_cache(embeddings.numpy())
        return embeddings

    @torch.no_grad()
    def predict(self, image_features: torch.Tensor, top_k: int = 5) -> GalleryPrediction:
        """(B, 512) GeoCLIP image features (e.g. `VisualFeatures.mean`) -> the `top_k` gallery coordinates."""
        if image_features.dim() != 2 or image_features.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"image_features must be (B, {self.embeddings.shape[1]}), got {tuple(image_features.shape)}"
            )
        if not 1 <= top_k <= len(self.gallery_latlon_deg):
            raise ValueError(f"top_k must be in [1, {len(self.gallery_latlon_deg)}], got {top_k}")
        features = F.normalize(image_features.float().cpu(), dim=-1)
        logits = np.exp(self.logit_scale) * features @ self.embeddings.T
        top = logits.softmax(dim=-1).topk(top_k, dim=-1)
        return GalleryPrediction(latlon_deg=self.gallery_latlon_deg[top.indices], probs=top.values)

    def _write_cache(self, embeddings: np.ndarray) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees a half-written file.
        handle, temporary = tempfile.mkstemp(suffix=".npy", dir=self.cache_path.parent)
        with os.fdopen(handle, "wb") as file:
            np.save(file, embeddings)
        os.replace(temporary, self.cache_path)
