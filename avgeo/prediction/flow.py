"""Riemannian flow matching on S² (method §3.3): the training loss (eq. 5), ODE integration on the
sphere, sampling and exact log-density, wrapped in `RFMHead`.

The base density p0 is uniform on the sphere (−log 4π nats/sr). A sample is y0 ~ p0 carried by the
ODE ẏ = v_θ(y, t, ψ) from t = 0 to 1. The log-density of a point y1 follows the same ODE backwards to
its base point y0: log p1(y1) = log p0(y0) − ∫₀¹ div v_θ(y_t, t) dt (instantaneous change of variables),
with the exact divergence of `vector_field.velocity_and_divergence`. Densities are nats per steradian.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avgeo.geo.sphere import SPHERE_AREA_SR, exp_map, log_map, normalize, sample_uniform
from avgeo.perception.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from avgeo.prediction.vector_field import RFMConfig, TangentVectorField, VelocityFn, velocity_and_divergence

BASE_LOG_DENSITY = -math.log(SPHERE_AREA_SR)
"""log p0 of the uniform base density, nats/sr."""


class RFMInputError(ValueError):
    """Points or conditions of the wrong shape for an RFM head; the message names the fix."""


def geodesic_path(y0: torch.Tensor, y1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point y_t = exp_{y0}(t·log_{y0}(y1)) and its velocity ẏ_t (eq. 5's target), both (N, 3).

    `y0`, `y1` (N, 3) unit vectors, `t` (N,). With θ the arc length and e the unit direction of
    log_{y0}(y1): y_t = cos(tθ) y0 + sin(tθ) e, so ẏ_t = θ (cos(tθ) e − sin(tθ) y0), finite at every t.
    """
    log_vector = log_map(y0, y1)
    arc = log_vector.norm(dim=-1, keepdim=True)
    direction = log_vector / arc.clamp_min(1e-12)
    travelled = t[:, None] * arc
    velocity = arc * (torch.cos(travelled) * direction - torch.sin(travelled) * y0)
    return exp_map(y0, t[:, None] * log_vector), velocity


@dataclass(frozen=True)
class _ButcherTableau:
    stage_coefficients: tuple[tuple[float, ...], ...]
    weights: tuple[float, ...]
    nodes: tuple[float, ...]


_TABLEAUX = {
    "euler": _ButcherTableau(((),), (1.0,), (0.0,)),
    "midpoint": _ButcherTableau(((), (0.5,)), (0.0, 1.0), (0.0, 0.5)),
    "rk4": _ButcherTableau(
        ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0)
    ),
}


def _pull_back_to_chart(
    base: torch.Tensor, chart_point: torch.Tensor, velocity: torch.Tensor
) -> torch.Tensor:
    """Express `velocity`, tangent at exp_base(chart_point), in exp-map coordinates at `base` (all (N, 3)).

    This is the inverse differential of exp_base at chart_point: the component along the geodesic keeps
    its length, the perpendicular one is scaled by s / sin s (s = |chart_point|). Projecting onto the
    tangent plane at `base` instead would cost two orders of accuracy in RK4.
    """
    arc = chart_point.norm(dim=-1, keepdim=True)
    direction = chart_point / arc.clamp_min(1e-12)
    along_geodesic = torch.cos(arc) * direction - torch.sin(arc) * base
    along_component = (velocity * along_geodesic).sum(-1, keepdim=True)
    perpendicular = velocity - along_component * along_geodesic
    stretch = torch.where(arc > 1e-6, arc / torch.sin(arc).clamp_min(1e-12), 1.0 + arc**2 / 6.0)
    return along_component * direction + stretch * perpendicular


def integrate_on_sphere(
    velocity_fn: VelocityFn,
    y_start: torch.Tensor,
    t_start: float,
    t_end: float,
    num_steps: int,
    solver: str,
    track_divergence: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Carry unit points `y_start` (N, 3) along `velocity_fn` from t_start to t_end.

    Each step is an explicit Runge–Kutta step ("euler", "midpoint", "rk4") taken in exp-map coordinates
    at the step's start point (Runge–Kutta–Munthe-Kaas), so the solver keeps its order on the sphere and
    points stay exactly on it. Returns the end points (N, 3) and, when `track_divergence`, the signed
    integral ∫_{t_start}^{t_end} div v(y_t, t) dt (N,) accumulated with the same stages.
    """
    if solver not in _TABLEAUX:
        raise ValueError(f"solver {solver!r} is not one of {', '.join(_TABLEAUX)}")
    tableau = _TABLEAUX[solver]
    step = (t_end - t_start) / num_steps
    y = y_start
    divergence_integral = (
        torch.zeros(y.shape[0], dtype=y.dtype, device=y.device) if track_divergence else None
    )
    for index in range(num_steps):
        t = t_start + index * step
        slopes: list[torch.Tensor] = []
        divergences: list[torch.Tensor] = []
        for coefficients, node in zip(tableau.stage_coefficients, tableau.nodes, strict=True):
            chart_point = step * sum(
                (c * slope for c, slope in zip(coefficients, slopes, strict=False)), torch.zeros_like(y)
            )
            stage_point = exp_map(y, chart_point)
            stage_t = torch.full((y.shape[0],), t + node * step, dtype=y.dtype, device=y.device)
            if track_divergence:
                velocity, divergence = velocity_and_divergence(velocity_fn, stage_point, stage_t)
                divergences.append(divergence)
            else:
                velocity = velocity_fn(stage_point, stage_t)
            slopes.append(_pull_back_to_chart(y, chart_point, velocity))
        y = exp_map(y, step * sum(w * slope for w, slope in zip(tableau.weights, slopes, strict=True)))
        if divergence_integral is not None:
            divergence_integral = divergence_integral + step * sum(
                w * divergence for w, divergence in zip(tableau.weights, divergences, strict=True)
            )
    return y, divergence_integral


class RFMHead(nn.Module):
    """The prediction head: a density on S² conditioned on ψ, trained by flow matching.

    Shapes: B conditions (clips), M points per condition. An unconditional head (cond_dim = 0) takes
    cond=None and behaves as B = 1 where a B is needed.
    """

    def __init__(self, config: RFMConfig) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.field = TangentVectorField(config)

    def velocity(
        self, y: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, guidance_scale: float | None = None
    ) -> torch.Tensor:
        """(N, 3) tangent velocity at unit y (N, 3), time t (N,), condition ψ (N, cond_dim) or None.

        With ψ given and a guidance scale s ≠ 1, classifier-free guidance: v_null + s·(v_ψ − v_null).
        """
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        if cond is None or scale == 1.0:
            return self.field(y, t, cond)
        unconditioned = self.field(y, t, None)
        return unconditioned + scale * (self.field(y, t, cond) - unconditioned)

    def loss(
        self, y1: torch.Tensor, cond: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flow-matching loss (eq. 5), a scalar: mean ‖v_θ(y_t, t, ψ) − ẏ_t‖² over targets y1 (N, 3).

        y0 is uniform, t ~ U(0, 1), y_t on the geodesic y0 → y1. Each row's ψ (N, cond_dim) is swapped for
        the null embedding with probability cond_dropout. Random draws are made in float64 on the CPU
        (`generator` must be a CPU generator) and then cast, so a seed gives the same draws on any
        device and dtype.
        """
        self._check_cond(cond, y1.shape[0])
        y1 = self._as_parameters(y1)
        num_targets = y1.shape[0]
        y0 = self._as_parameters(sample_uniform(num_targets, generator, dtype=torch.float64))
        t = self._as_parameters(torch.rand(num_targets, generator=generator, dtype=torch.float64))
        drop_cond = None
        if cond is not None and self.config.cond_dropout > 0:
            drop_cond = torch.rand(num_targets, generator=generator).to(y1.device) < self.config.cond_dropout
        y_t, target_velocity = geodesic_path(y0, y1, t)
        predicted = self.field(y_t, t, cond, drop_cond=drop_cond)
        return (predicted - target_velocity).pow(2).sum(-1).mean()

    def sample(
        self,
        cond: torch.Tensor | None,
        num_samples: int,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """M samples per condition: (B, M, 3) unit vectors for ψ (B, cond_dim); (1, M, 3) for cond=None."""
        samples, _ = self._flow_from_base(
            cond, num_samples, generator, guidance_scale, track_divergence=False
        )
        return samples

    def sample_with_log_density(
        self,
        cond: torch.Tensor | None,
        num_samples: int,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        shared_base: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples (B, M, 3) and their log-density (B, M) in nats/sr, from one forward integration.

        With `shared_base`, every condition flows the same M base points (drawn once from `generator`), so
        a condition's samples are those it gets alone from the same seed, whichever rows share its batch.
        """
        samples, divergence_integral = self._flow_from_base(
            cond, num_samples, generator, guidance_scale, track_divergence=True, shared_base=shared_base
        )
        return samples, BASE_LOG_DENSITY - divergence_integral

    def log_density(
        self, y: torch.Tensor, cond: torch.Tensor | None = None, guidance_scale: float | None = None
    ) -> torch.Tensor:
        """Exact log p(y | ψ) in nats/sr: y (B, M, 3) or (B, 3) -> (B, M) or (B,).

        ψ is (B, cond_dim), one condition per leading row of y; with cond=None y may have any leading
        shape. Points are cast to the head's dtype and device and renormalised onto the sphere.
        """
        if y.shape[-1] != 3 or (cond is not None and y.dim() not in (2, 3)):
            raise RFMInputError(
                f"log_density: y has shape {tuple(y.shape)}; expected (B, 3) or (B, M, 3) xyz unit vectors"
            )
        points = normalize(self._as_parameters(y.reshape(-1, 3)))
        flat_cond = self._repeat_cond(cond, y.shape[0], points.shape[0] // y.shape[0])
        _, divergence_integral = integrate_on_sphere(
            self._velocity_fn(flat_cond, guidance_scale),
            points,
            1.0,
            0.0,
            self.config.num_steps,
            self.config.solver,
            track_divergence=True,
        )
        # Integrating from 1 down to 0 gives −∫₀¹ div v dt directly.
        return (BASE_LOG_DENSITY + divergence_integral).reshape(y.shape[:-1])

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` into `directory` (created if needed)."""
        save_checkpoint(directory, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu") -> RFMHead:
        """Load a head from a directory written by `save_pretrained`."""
        config, state_dict = load_checkpoint(name_or_dir, RFMConfig)
        head = cls(config)
        try:
            head.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{name_or_dir}: weights do not fit its config.json: {exc}") from exc
        return head.to(device)

    def _flow_from_base(
        self,
        cond: torch.Tensor | None,
        num_samples: int,
        generator: torch.Generator | None,
        guidance_scale: float | None,
        track_divergence: bool,
        shared_base: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        num_conditions = 1 if cond is None else cond.shape[0]
        flat_cond = self._repeat_cond(cond, num_conditions, num_samples)
        num_draws = num_samples if shared_base else num_conditions * num_samples
        base_points = sample_uniform(num_draws, generator, dtype=torch.float64)
        if shared_base:
            base_points = base_points.repeat(num_conditions, 1)  # rows follow flat_cond: condition-major
        samples, divergence_integral = integrate_on_sphere(
            self._velocity_fn(flat_cond, guidance_scale),
            self._as_parameters(base_points),
            0.0,
            1.0,
            self.config.num_steps,
            self.config.solver,
            track_divergence=track_divergence,
        )
        if divergence_integral is not None:
            divergence_integral = divergence_integral.reshape(num_conditions, num_samples)
        return samples.reshape(num_conditions, num_samples, 3), divergence_integral

    def _as_parameters(self, points: torch.Tensor) -> torch.Tensor:
        parameter = next(self.parameters())
        return points.to(dtype=parameter.dtype, device=parameter.device)

    def _velocity_fn(self, flat_cond: torch.Tensor | None, guidance_scale: float | None) -> VelocityFn:
        return lambda y, t: self.velocity(y, t, flat_cond, guidance_scale)

    def _repeat_cond(
        self, cond: torch.Tensor | None, num_conditions: int, per_condition: int
    ) -> torch.Tensor | None:
        self._check_cond(cond, num_conditions)
        return None if cond is None else cond.repeat_interleave(per_condition, dim=0)

    def _check_cond(self, cond: torch.Tensor | None, num_rows: int) -> None:
        if cond is None:
            return
        if self.config.cond_dim == 0:
            raise RFMInputError("this RFM head is unconditional (cond_dim = 0); pass cond=None")
        if cond.shape != (num_rows, self.config.cond_dim):
            raise RFMInputError(
                f"cond has shape {tuple(cond.shape)}; expected ({num_rows}, {self.config.cond_dim}): "
                "one ψ per row of the points"
            )


def fit_to_sampler(
    head: RFMHead,
    draw_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train `head` in place with Adam and a cosine-decayed learning rate; returns each step's loss.

    `draw_batch(n)` returns n targets (n, 3) and their ψ (n, cond_dim) or None. A plain loop for small
    heads and tests; the distributed job drives `RFMHead.loss` itself.
    """
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_steps)
    losses = []
    head.train()
    for _ in range(num_steps):
        targets, cond = draw_batch(batch_size)
        loss = head.loss(targets, cond, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    head.eval()
    return losses
