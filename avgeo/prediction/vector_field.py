"""The RFM vector field v_θ(y, t, ψ) on S² (an MLP whose output is projected onto the tangent plane)
and the exact Riemannian divergence of any tangent field.

Conditioning is by concatenation: the MLP reads [y, time features, projected ψ]. Classifier-free
guidance needs an "unconditioned" input, so ψ can be replaced by a learned null embedding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from avgeo.config import ConfigError
from avgeo.geo.sphere import normalize, project_to_tangent

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A velocity field: (y (N, 3) unit vectors, t (N,)) -> (N, 3) tangent vectors at y."""


@dataclass
class RFMConfig:
    """Architecture, training and inference settings of the RFM head."""

    cond_dim: int = 0
    """Size of the condition ψ (the MLLM's final hidden state); 0 builds an unconditional density."""

    cond_embed_dim: int = 64
    """Size ψ is projected to before it joins the MLP input."""

    width: int = 256
    """Hidden width of the MLP."""

    num_layers: int = 4
    """Linear layers in the MLP, input and output layers included (the method uses 4)."""

    time_embed_dim: int = 32
    """Number of sinusoidal time features (even): sin and cos of π·k·t for k = 1 … time_embed_dim / 2."""

    cond_dropout: float = 0.1
    """Probability, per training example, of replacing ψ by the null embedding (enables guidance)."""

    guidance_scale: float = 1.0
    """Classifier-free guidance at inference: v = v_null + scale · (v_ψ − v_null); 1 = plain conditional."""

    solver: Literal["euler", "midpoint", "rk4"] = "rk4"
    """ODE solver for sampling and log-density; Runge–Kutta steps in exp-map coordinates on S²."""

    num_steps: int = 32
    """Uniform ODE steps between t = 0 and t = 1."""

    seed: int = 0
    """Seed of the weight initialisation, so a config always builds the same untrained head."""

    def __post_init__(self) -> None:
        if self.cond_dim < 0 or self.cond_embed_dim < 1 or self.width < 1:
            raise ConfigError("cond_dim must be >= 0, cond_embed_dim and width >= 1")
        if self.num_layers < 2:
            raise ConfigError(
                f"num_layers: {self.num_layers} < 2; the MLP needs an input and an output layer"
            )
        if self.time_embed_dim < 2 or self.time_embed_dim % 2:
            raise ConfigError(f"time_embed_dim: {self.time_embed_dim} must be even and >= 2 (sin/cos pairs)")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout: {self.cond_dropout} must be in [0, 1)")
        if self.num_steps < 1:
            raise ConfigError(f"num_steps: {self.num_steps} must be >= 1")


class TangentVectorField(nn.Module):
    """v_θ(y, t, ψ): an MLP over [y, time features, projected ψ], projected onto the tangent plane at y."""

    def __init__(self, config: RFMConfig) -> None:
        super().__init__()
        self.config = config
        half = config.time_embed_dim // 2
        self.register_buffer(
            "time_frequencies", math.pi * torch.arange(1, half + 1, dtype=torch.float32), persistent=False
        )
        cond_width = 0
        if config.cond_dim > 0:
            self.cond_projection = nn.Linear(config.cond_dim, config.cond_embed_dim)
            self.null_cond_embedding = nn.Parameter(0.02 * torch.randn(config.cond_embed_dim))
            cond_width = config.cond_embed_dim
        widths = [3 + config.time_embed_dim + cond_width] + [config.width] * (config.num_layers - 1) + [3]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out))
            if index < config.num_layers - 1:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)

    def forward(
        self,
        y: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, 3) unit y, (N,) t, (N, cond_dim) ψ or None -> (N, 3) tangent velocity at y.

        ψ = None means "unconditioned" (the null embedding); `drop_cond` (N,) bool swaps the null
        embedding in for chosen rows (condition dropout while training).
        """
        angles = t[:, None] * self.time_frequencies.to(y)
        inputs = [y, torch.sin(angles), torch.cos(angles)]
        if self.config.cond_dim > 0:
            null = self.null_cond_embedding.to(y).expand(y.shape[0], -1)
            if cond is None:
                cond_embedding = null
            else:
                cond_embedding = self.cond_projection(cond.to(y))
                if drop_cond is not None:
                    cond_embedding = torch.where(drop_cond[:, None], null, cond_embedding)
            inputs.append(cond_embedding)
        elif cond is not None:
            raise ValueError("this RFM head is unconditional (cond_dim = 0); pass cond=None")
        return project_to_tangent(y, self.mlp(torch.cat(inputs, dim=-1)))


def tangent_frame(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal tangent vectors (N, 3) at unit y (N, 3); (e1, e2, y) is a right-handed basis."""
    # The coordinate axis least aligned with y never projects to (nearly) zero.
    helper = torch.zeros_like(y).scatter_(-1, y.abs().argmin(-1, keepdim=True), 1.0)
    first = normalize(project_to_tangent(y, helper))
    return first, torch.linalg.cross(y, first, dim=-1)


def velocity_and_divergence(
    velocity_fn: VelocityFn, y: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The field (N, 3) at unit y (N, 3), t (N,) and its exact divergence on S² (N,), per unit time.

    For a tangent field v extended to a neighbourhood of the sphere, with J its 3×3 Jacobian and
    P = I − yyᵀ, the Riemannian divergence is tr(P J P) = e1ᵀ J e1 + e2ᵀ J e2 for any orthonormal
    tangent frame (e1, e2): only derivatives along the sphere enter, so any smooth extension gives the
    same value. Forward-mode Jacobian-vector products along e1 and e2 give it exactly; `velocity_fn`
    must treat rows independently (no batch statistics).
    """
    frame = torch.stack(tangent_frame(y))

    def derivative_along(direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.jvp(lambda point: velocity_fn(point, t), (y,), (direction,))

    # vmap over the two directions computes the primal pass once for both.
    velocity, derivatives = torch.func.vmap(derivative_along)(frame)
    return velocity[0], (frame * derivatives).sum(dim=(0, -1))
