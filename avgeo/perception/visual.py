"""GeoCLIP's image tower: video frames -> per-frame 512-d geolocation features h_t and their temporal mean.

Each frame goes through CLIP's vision tower and its projection (`CLIPVisionModelWithProjection.image_embeds`,
the 768-d vector `CLIPModel.get_image_features` returns for ViT-L/14 and that GeoCLIP's ImageEncoder
feeds its MLP), then through GeoCLIP's trained MLP (768 -> 768 -> ReLU -> 512). The MLP's weights are
the ones shipped in the `geoclip` package and are used with every CLIP, the `tiny` one included.
The method's visual descriptor is the mean of h_t over the T sampled frames.

Checkpoints (`VisualEncoder.from_pretrained`):
- a local directory or hub id of a full CLIP checkpoint (the method's is openai/clip-vit-large-patch14)
  or of a CLIP vision model with projection; only the vision tower and projection are read.
- `tiny`: a CLIP vision tower built from a config (width 64, 2 layers, 16 px patches on 224 px images,
  projection to GeoCLIP's 768), seeded, saved and read back like a real checkpoint.

Preprocessing follows CLIP's image processor, in torch and batched: resize so the short side is the
model's image size (bicubic, antialiased), centre crop, scale to [0, 1], normalise with OpenAI CLIP's mean
and std. Pixel values differ slightly from the processor's, which resizes with PIL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from avgeo.perception.checkpoints import CheckpointError, TinyRecipe, geoclip_file, resolve_checkpoint

GEOCLIP_IMAGE_DIM = 768
"""Width of the CLIP image embedding GeoCLIP's MLP takes."""

GEOCLIP_FEATURE_DIM = 512
"""Width of GeoCLIP's image features h_t (its MLP's output)."""

TINY_CLIP_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 16,
    "image_size": 224,
    "projection_dim": GEOCLIP_IMAGE_DIM,
}
"""`CLIPVisionConfig` arguments of the `tiny` checkpoint."""


@dataclass
class VisualFeatures:
    """GeoCLIP features of B clips of T frames."""

    per_frame: torch.Tensor
    """(B, T, 512) h_t for every frame."""
    mean: torch.Tensor
    """(B, 512) temporal mean of h_t: the clip's visual descriptor."""


class VisualEncoder(nn.Module):
    """Frozen CLIP vision tower + GeoCLIP's trained MLP."""

    def __init__(self, clip: CLIPVisionModelWithProjection, geoclip_mlp: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.geoclip_mlp = geoclip_mlp
        self.image_size: int = clip.config.image_size
        self.register_buffer("pixel_mean", torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny") -> VisualEncoder:
        """Load `tiny` or a CLIP directory / hub id; GeoCLIP's MLP always comes from the geoclip package."""
        source = resolve_checkpoint(name_or_dir, _TINY_RECIPE)
        config = _clip_vision_config(source)
        if config.projection_dim != GEOCLIP_IMAGE_DIM:
            raise CheckpointError(
                f"{source}: CLIP projects images to {config.projection_dim} dims but GeoCLIP's MLP takes "
                f"{GEOCLIP_IMAGE_DIM}; use a ViT-L/14 CLIP such as openai/clip-vit-large-patch14"
            )
        clip = CLIPVisionModelWithProjection.from_pretrained(source, config=config)
        return cls(clip, geoclip_image_mlp())

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, frames_per_forward: int = 32) -> VisualFeatures:
        """(B, T, H, W, 3) uint8 RGB frames -> per-frame features h_t and their mean over T."""
        frames = torch.as_tensor(frames)
        if frames.dim() != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(
                f"frames must be uint8 RGB of shape (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
            )
        batch, num_frames = frames.shape[:2]
        chunks = frames.flatten(0, 1).split(frames_per_forward)
        per_frame = torch.cat([self._encode_images(chunk) for chunk in chunks])
        per_frame = per_frame.unflatten(0, (batch, num_frames))
        return VisualFeatures(per_frame=per_frame, mean=per_frame.mean(dim=1))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, S, S) normalised pixels, S = the model's image size."""
        pixels = images.to(self.pixel_mean.device).permute(0, 3, 1, 2).float() / 255.0
        height, width = pixels.shape[-2:]
        size = self.image_size
        if min(height, width) != size:
            # Short side to `size`, long side scaled and truncated as CLIP's processor does.
            if height <= width:
                resized = (size, int(size * width / height))
            else:
                resized = (int(size * height / width), size)
            pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
            pixels = pixels.clamp(0.0, 1.0)  # bicubic overshoots; the processor's uint8 resize cannot
        top = (pixels.shape[-2] - size) // 2
        left = (pixels.shape[-1] - size) // 2
        cropped = pixels[..., top : top + size, left : left + size]
        return (cropped - self.pixel_mean) / self.pixel_std

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 512) h_t."""
        image_embeds = self.clip(pixel_values=self.preprocess(images).to(self.clip.dtype)).image_embeds
        return self.geoclip_mlp(image_embeds)


def geoclip_image_mlp() -> nn.Sequential:
    """GeoCLIP's trained image MLP, 768 -> 768 -> ReLU -> 512, with the weights the geoclip package ships."""
    width = GEOCLIP_IMAGE_DIM
    mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, GEOCLIP_FEATURE_DIM))
    path = geoclip_file("model/weights/image_encoder_mlp_weights.pth")
    mlp.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return mlp


def _clip_vision_config(source: str) -> CLIPVisionConfig:
    """The vision config of a full CLIP or a CLIP vision checkpoint, with the projection width it uses."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: cannot read a CLIP config ({exc}); pass 'tiny', a local CLIP directory, "
            "or a hub id on a machine that reaches the hub"
        ) from exc
    if isinstance(config, CLIPConfig):
        # A full CLIP keeps the projection width at the top level; its vision sub-config may not.
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        return vision
    if isinstance(config, CLIPVisionConfig):
        return config
    raise CheckpointError(f"{source}: holds a {type(config).__name__}, not a CLIP model")


def _save_tiny(directory: Path) -> None:
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION)).save_pretrained(directory)


_TINY_RECIPE = TinyRecipe(kind="clip-vision", spec=TINY_CLIP_VISION, build=_save_tiny)
