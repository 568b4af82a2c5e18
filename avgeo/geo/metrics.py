"""Geolocation metrics of the method's tables, on great-circle distances.

- `table_row`: accuracy within 1 / 25 / 200 / 750 / 2500 km (street / city / region / country /
  continent), median and mean error, and GeoScore, for one prediction per clip (Tables 1, 2 and 4).
- `sample_quality`: precision, recall, density and coverage (Naeem et al. 2020, "Reliable Fidelity and
  Diversity Metrics for Generative Models") of predicted samples against true locations (Table 3), with
  k-nearest-neighbour balls on the sphere (great-circle distance).

Inputs are (N, 2) (latitude, longitude) degrees as numpy arrays, torch tensors or nested lists.
"""

from __future__ import annotations

import numpy as np
import torch

from avgeo.geo.s2cells import GeoInputError, as_latlon_deg
from avgeo.geo.sphere import great_circle_km, latlon_to_xyz

ACCURACY_THRESHOLDS_KM: tuple[int, ...] = (1, 25, 200, 750, 2500)
"""A prediction is correct at scale t when its error is at most t km."""

GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7
"""GeoScore of an error d km: GEOSCORE_MAX * exp(-d / GEOSCORE_SCALE_KM)."""

_ROWS_PER_CHUNK = 2048  # pairwise distances go in (2048, N) blocks to bound memory for large sets


def errors_km(pred_latlon_deg: np.ndarray, true_latlon_deg: np.ndarray) -> np.ndarray:
    """Great-circle error of each prediction: (N, 2) x (N, 2) degrees -> (N,) km."""
    pred_deg = as_latlon_deg(pred_latlon_deg, "pred_latlon_deg")
    true_deg = as_latlon_deg(true_latlon_deg, "true_latlon_deg")
    if pred_deg.shape != true_deg.shape or len(pred_deg) == 0:
        raise GeoInputError(
            f"pred_latlon_deg {pred_deg.shape} and true_latlon_deg {true_deg.shape}: expected one "
            "prediction per true location, at least one"
        )
    return great_circle_km(torch.from_numpy(pred_deg), torch.from_numpy(true_deg)).numpy()


def geoscore(dist_km: np.ndarray) -> np.ndarray:
    """GeoScore of errors in km, elementwise: 5000 at 0 km, 5000 / e at 1492.7 km."""
    return GEOSCORE_MAX * np.exp(-np.asarray(dist_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def table_row(pred_latlon_deg: np.ndarray, true_latlon_deg: np.ndarray) -> dict[str, float]:
    """One row of the accuracy tables for (N, 2) predictions against (N, 2) truths (degrees).

    Keys: `acc_1km` ... `acc_2500km` (fractions in [0, 1]; the tables print percentages),
    `median_km`, `mean_km` and `geoscore` (mean GeoScore, 0 to 5000).
    """
    dist_km = errors_km(pred_latlon_deg, true_latlon_deg)
    row = {f"acc_{threshold}km": float(np.mean(dist_km <= threshold)) for threshold in ACCURACY_THRESHOLDS_KM}
    row["median_km"] = float(np.median(dist_km))
    row["mean_km"] = float(np.mean(dist_km))
    row["geoscore"] = float(np.mean(geoscore(dist_km)))
    return row


def _chords(a_xyz: torch.Tensor, b_xyz: torch.Tensor) -> torch.Tensor:
    """Straight-line distances between unit vectors, (A, 3) x (B, 3) -> (A, B).

    Great-circle distance is 2 asin(chord / 2) times the Earth's radius, increasing in the chord, so
    chords rank neighbours and decide ball membership exactly as kilometres do, several times faster.
    They come from coordinate differences (not |a|² + |b|² - 2 a·b), so equal points are exactly 0 apart.
    """
    return torch.cdist(a_xyz, b_xyz, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_neighbour_chord(points_xyz: torch.Tensor, k: int, name: str) -> torch.Tensor:
    """Chord from each point to its k-th nearest other point: (N, 3) unit vectors -> (N,).

    Duplicated points are each other's neighbours at distance 0.
    """
    if not 1 <= k < len(points_xyz):
        raise GeoInputError(
            f"{name}: k={k} nearest neighbours need more than k points, got {len(points_xyz)}; lower k"
        )
    # The (k + 1)-th smallest distance, since the point itself comes first at 0.
    radii = [
        _chords(chunk, points_xyz).kthvalue(k + 1, dim=1).values
        for chunk in points_xyz.split(_ROWS_PER_CHUNK)
    ]
    return torch.cat(radii)


def sample_quality(
    samples_latlon_deg: np.ndarray, truth_latlon_deg: np.ndarray, k: int = 5
) -> dict[str, float]:
    """Precision, recall, density and coverage of M samples against N true locations, (M, 2) and (N, 2)
    degrees.

    With B(x, r) the closed great-circle ball and NND_k(x) the distance from x to its k-th nearest
    neighbour within its own set (truths X_i, samples Y_j):
      precision = 1/M  sum_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]
      recall    = 1/N  sum_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]
      density   = 1/kM sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
      coverage  = 1/N  sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]
    Truths repeated at one location have balls of radius 0 (only exact hits count): deduplicate
    locations first when many clips share one.
    """
    samples_xyz = latlon_to_xyz(torch.from_numpy(as_latlon_deg(samples_latlon_deg, "samples_latlon_deg")))
    truth_xyz = latlon_to_xyz(torch.from_numpy(as_latlon_deg(truth_latlon_deg, "truth_latlon_deg")))
    truth_radius = _kth_neighbour_chord(truth_xyz, k, "truth_latlon_deg")
    sample_radius = _kth_neighbour_chord(samples_xyz, k, "samples_latlon_deg")
    truths_per_sample = []
    covered = torch.zeros(len(truth_xyz), dtype=torch.bool)
    recalled = torch.zeros(len(truth_xyz), dtype=torch.bool)
    for samples, radii in zip(
        samples_xyz.split(_ROWS_PER_CHUNK), sample_radius.split(_ROWS_PER_CHUNK), strict=True
    ):
        chords = _chords(samples, truth_xyz)  # (chunk, N)
        in_truth_ball = chords <= truth_radius[None, :]
        truths_per_sample.append(in_truth_ball.sum(dim=1))
        covered |= in_truth_ball.any(dim=0)
        recalled |= (chords <= radii[:, None]).any(dim=0)
    truths_per_sample = torch.cat(truths_per_sample).double()
    return {
        "precision": float((truths_per_sample > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(truths_per_sample.sum() / (k * len(samples_xyz))),
        "coverage": float(covered.double().mean()),
    }
