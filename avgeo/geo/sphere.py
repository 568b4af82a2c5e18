"""Maths on the unit sphere S² in torch, batched over leading dimensions.

Points are unit vectors `(..., 3)` in Earth-centred coordinates (x towards lat 0 / lon 0, z towards
the North Pole); coordinates are `(..., 2)` as (latitude, longitude) in degrees. Angles come from
`atan2` rather than `acos`, so distances stay accurate for nearly equal and nearly antipodal points,
in float32 and float64 alike.
"""

from __future__ import annotations

import math

import torch

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), km."""

SPHERE_AREA_SR = 4.0 * math.pi
"""Area of the unit sphere, steradians; the uniform density is 1 / SPHERE_AREA_SR per sr."""

_EPS = 1e-12


def latlon_to_xyz(latlon_deg: torch.Tensor) -> torch.Tensor:
    """(..., 2) latitude/longitude in degrees -> (..., 3) unit vectors."""
    lat, lon = torch.deg2rad(latlon_deg).unbind(-1)
    cos_lat = torch.cos(lat)
    return torch.stack((cos_lat * torch.cos(lon), cos_lat * torch.sin(lon), torch.sin(lat)), dim=-1)


def xyz_to_latlon(xyz: torch.Tensor) -> torch.Tensor:
    """(..., 3) vectors (need not be unit) -> (..., 2) latitude in [-90, 90], longitude in (-180, 180]."""
    x, y, z = xyz.unbind(-1)
    lat = torch.atan2(z, torch.hypot(x, y))
    lon = torch.atan2(y, x)
    # atan2 gives -pi for y = -0.0 (as lon -180° produces); fold it onto +180° to keep the range half-open.
    lon = torch.where(lon == -math.pi, math.pi, lon)
    return torch.rad2deg(torch.stack((lat, lon), dim=-1))


def normalize(xyz: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3) unit vectors (projection onto the sphere)."""
    return xyz / xyz.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def project_to_tangent(point: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Remove the radial part of `vector` (..., 3) at unit `point` (..., 3): v - <p, v> p."""
    return vector - (point * vector).sum(-1, keepdim=True) * point


def angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in radians, (..., 3) x (..., 3) unit vectors -> (...), in [0, pi]."""
    a, b = torch.broadcast_tensors(a, b)  # linalg.cross broadcasts only between equal ranks
    cross = torch.linalg.cross(a, b, dim=-1).norm(dim=-1)
    return torch.atan2(cross, (a * b).sum(-1))


def exp_map(point: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """Exponential map: walk from unit `point` (..., 3) along `tangent` (..., 3) for |tangent| radians."""
    norm = tangent.norm(dim=-1, keepdim=True)
    # sin(n)/n written so that n -> 0 gives the identity without a 0/0.
    sinc = torch.where(norm > 1e-8, torch.sin(norm) / norm.clamp_min(_EPS), 1.0 - norm**2 / 6.0)
    return normalize(torch.cos(norm) * point + sinc * tangent)


def log_map(point: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logarithmic map: the tangent vector at `point` (..., 3) whose exp reaches `target` (..., 3).

    Its norm is the geodesic angle (radians). At the antipode the direction is undefined and the
    result degrades towards a zero vector; callers drawing random pairs meet this with probability 0.
    """
    # Projecting twice clears the rounding left along `point`, which angle / sin(angle) would blow up
    # near the antipode.
    radial = project_to_tangent(point, project_to_tangent(point, target))
    sin_angle = radial.norm(dim=-1, keepdim=True)
    angle = torch.atan2(sin_angle, (point * target).sum(-1, keepdim=True))
    # Branch on the angle, not on its sine: near the antipode the sine is tiny too, but the series is wrong.
    scale = torch.where(angle > 1e-8, angle / sin_angle.clamp_min(_EPS), 1.0 + angle**2 / 6.0)
    return scale * radial


def geodesic(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point at fraction `t` (...,) or (..., 1) along the shortest arc start -> end, (..., 3)."""
    if t.dim() == start.dim() - 1:
        t = t.unsqueeze(-1)
    return exp_map(start, t * log_map(start, end))


def great_circle_km(latlon_a_deg: torch.Tensor, latlon_b_deg: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km between (..., 2) degree coordinates, broadcasting."""
    return EARTH_RADIUS_KM * angle_between(latlon_to_xyz(latlon_a_deg), latlon_to_xyz(latlon_b_deg))


def sample_uniform(n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """(n, 3) points drawn uniformly on the sphere (density 1 / 4pi per steradian)."""
    return normalize(torch.randn(n, 3, generator=generator, dtype=dtype))
