"""Scoring predictors as the method's tables do, and writing the tables as Markdown.

- `evaluate_predictor` scores one predictor on N test clips: the Table 1 columns (accuracy within 25 /
  200 / 750 / 2500 km, plus median error and GeoScore) from its point estimates; the NLL of the true
  locations in nats/sr (heads with a density only); and the Table 3 columns (precision, recall, density,
  coverage) of its samples, pooled over clips, against the test locations with duplicates removed (many
  clips share a location, and repeated truths would get k-NN balls of radius 0).
- `markdown_tables` lays rows out as Table 1 (grouped Visual-only / Audio-only / Audiovisual) and Table 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from avgeo.geo.metrics import sample_quality, table_row
from avgeo.geo.sphere import latlon_to_xyz, xyz_to_latlon
from avgeo.prediction.heads import GeoPredictor

GROUPS = ("Visual-only", "Audio-only", "Audiovisual")
"""Row groups of Table 1, in order."""

GROUP_OF_FEATURE_KIND = {
    "visual": "Visual-only",
    "audio": "Audio-only",
    "atoms": "Audio-only",
    "audiovisual": "Audiovisual",
}
"""The Table 1 group of a model trained on one feature kind."""

TABLE1_THRESHOLDS_KM = (25, 200, 750, 2500)
"""Table 1's accuracy columns: city, region, country, continent."""

_SCALE_NAMES = ("City", "Region", "Country", "Continent")


@dataclass(frozen=True)
class EvaluationRow:
    """One model's scores on the test clips."""

    model: str
    """Row label, e.g. `rfm-visual` or `late-fusion(rfm-visual + rfm-audio)`."""
    group: str
    """One of GROUPS."""
    metrics: dict[str, float | None]
    """`metrics.table_row`'s keys (accuracies as fractions, `median_km`, `mean_km`, `geoscore`), `nll`
    (mean, nats/sr; None for heads without a density), `precision`, `recall`, `density`, `coverage`,
    `num_clips` and `num_locations` (distinct test locations)."""


def evaluate_predictor(
    predictor: GeoPredictor,
    features: torch.Tensor,
    truth_latlon_deg: np.ndarray,
    num_samples: int = 64,
    samples_per_clip: int = 1,
    prdc_k: int = 5,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, float | None]:
    """Score `predictor` on features (N, D) against true locations (N, 2) degrees (`EvaluationRow.metrics`).

    Each clip gets `num_samples` draws (the candidates of sampling heads); the first `samples_per_clip`
    of them per clip join the sample pool of precision / recall / density / coverage.
    """
    if not 1 <= samples_per_clip <= num_samples:
        raise ValueError(f"samples_per_clip {samples_per_clip} must be in [1, num_samples = {num_samples}]")
    truth_latlon_deg = np.asarray(truth_latlon_deg, dtype=np.float64)
    truth_xyz = latlon_to_xyz(torch.from_numpy(truth_latlon_deg))
    points, samples, nll = [], [], []
    with torch.no_grad():
        for batch, batch_truth in zip(features.split(batch_size), truth_xyz.split(batch_size), strict=True):
            prediction = predictor.predict(batch, num_samples, generator)
            points.append(prediction.point_latlon_deg.double().cpu())
            samples.append(prediction.samples_xyz[:, :samples_per_clip].reshape(-1, 3).double().cpu())
            if predictor.has_density:
                nll.append(-predictor.log_density(batch_truth[:, None], batch)[:, 0].double().cpu())
    locations = np.unique(truth_latlon_deg, axis=0)
    metrics: dict[str, float | None] = dict(table_row(torch.cat(points).numpy(), truth_latlon_deg))
    metrics["nll"] = float(torch.cat(nll).mean()) if nll else None
    metrics.update(sample_quality(xyz_to_latlon(torch.cat(samples)).numpy(), locations, k=prdc_k))
    metrics["num_clips"] = len(truth_latlon_deg)
    metrics["num_locations"] = len(locations)
    return metrics


def markdown_tables(rows: Sequence[EvaluationRow], title: str) -> str:
    """Table 1 layout (accuracy %, median km, GeoScore; rows grouped by modality) and Table 3 layout (NLL,
    precision, recall, density, coverage), under a `# title`."""
    accuracy_header = [f"{name} {km} km" for name, km in zip(_SCALE_NAMES, TABLE1_THRESHOLDS_KM, strict=True)]
    lines = [f"# {title}", "", "## Accuracy (Table 1 layout)", ""]
    lines += _table_head(["Method", *(f"↑ {h} (%)" for h in accuracy_header), "↓ Median km", "↑ GeoScore"])
    for group in GROUPS:
        members = [row for row in rows if row.group == group]
        if members:
            lines.append(f"| *{group}* |" + " |" * (len(accuracy_header) + 2))
        for row in members:
            metrics = row.metrics
            accuracies = [f"{100.0 * metrics[f'acc_{km}km']:.1f}" for km in TABLE1_THRESHOLDS_KM]
            median, geoscore = f"{metrics['median_km']:.0f}", f"{metrics['geoscore']:.0f}"
            lines.append(_table_line([row.model, *accuracies, median, geoscore]))
    lines += ["", "## Probabilistic quality (Table 3 layout)", ""]
    lines += _table_head(["Method", "↓ NLL (nats/sr)", "↑ Precision", "↑ Recall", "↑ Density", "↑ Coverage"])
    for row in sorted(rows, key=lambda row: GROUPS.index(row.group)):
        nll = row.metrics["nll"]
        quality = [f"{row.metrics[name]:.2f}" for name in ("precision", "recall", "density", "coverage")]
        lines.append(_table_line([row.model, "—" if nll is None else f"{nll:.2f}", *quality]))
    return "\n".join(lines) + "\n"


def _table_head(header: list[str]) -> list[str]:
    return [_table_line(header), _table_line(["---"] + ["---:"] * (len(header) - 1))]


def _table_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
