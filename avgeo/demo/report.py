"""The demo's closing report: the evaluate runs' rows as one Table 1 / Table 3, the MART ablation's
decomposition accuracy, the geotag run's predictions, and where the files are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avgeo.data.manifest import read_manifest
from avgeo.data.predictions import read_predictions
from avgeo.demo.config import DemoConfig
from avgeo.demo.paths import DemoPaths
from avgeo.distributed.evaluate import HEATMAP_DIR, JSON_FILE
from avgeo.distributed.geotag import HEATMAPS_FOLDER
from avgeo.distributed.mart_training import METRICS_FILE as MART_METRICS_FILE
from avgeo.evaluation import EvaluationRow, markdown_tables
from avgeo.geo.metrics import table_row
from avgeo.runlog import MetricsLog


def print_report(config: DemoConfig, paths: DemoPaths) -> Path:
    """Print the tables of every evaluate run and the demo's outputs; write the tables to `paths.results`."""
    rows = [row for name in config.dictionaries for row in evaluation_rows(paths.evaluation(name))]
    title = (
        f"avg-synth `{config.preset}` (seed {config.seed}), test split: {rows[0].metrics['num_clips']} clips "
        f"at {rows[0].metrics['num_locations']} locations"
    )
    markdown = markdown_tables(rows, title)
    lines = [decomposition_line(paths, dictionary) for dictionary in config.dictionaries]
    lines.append(geotag_line(paths))
    paths.results.write_text(markdown + "\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    print(f"\n{markdown}")
    print("\n".join(lines))
    heatmaps = [paths.evaluation(dictionary) / HEATMAP_DIR for dictionary in config.dictionaries]
    heatmaps.append(paths.geotag / HEATMAPS_FOLDER)
    print("\nheatmaps: " + ", ".join(f"{path} ({len(list(path.glob('*.png')))} PNG)" for path in heatmaps))
    print(f"predictions Parquet (test split): {paths.geotag}")
    print(f"tables: {paths.results}")
    return paths.results


def evaluation_rows(evaluation_dir: Path) -> list[EvaluationRow]:
    """The rows an evaluate run wrote to its `tables.json`, in table order."""
    report = json.loads((evaluation_dir / JSON_FILE).read_text())
    return [EvaluationRow(**row) for row in report["rows"]]


def decomposition_line(paths: DemoPaths, dictionary: str) -> str:
    """The pretrained dictionary's held-out decomposition accuracy after its last epoch."""
    last = MetricsLog(paths.root / dictionary / MART_METRICS_FILE).read()[-1]
    name = "MART" if dictionary == "mart" else "plain SAE (ablation)"
    return (
        f"{name}: held-out decomposition accuracy {last['heldout_step_accuracy']:.1%} of steps, "
        f"{last['heldout_set_accuracy']:.1%} of class sets, after {last['epoch']} epochs"
    )


def geotag_line(paths: DemoPaths) -> str:
    """The geotag run's rows on the test split, scored against the manifest's truth."""
    predictions = read_predictions(paths.geotag, columns=["clip_id", "error", "lat", "lon"])
    located = predictions.filter(pc.is_null(predictions["error"]))
    truth = read_manifest(paths.manifest).select(["clip_id", "lat", "lon"])
    truth = truth.take(pc.index_in(located["clip_id"], value_set=truth["clip_id"]))
    scores = "no clip located"
    if located.num_rows:
        row = table_row(latlon_deg(located), latlon_deg(truth))
        scores = f"750 km {row['acc_750km']:.1%}, 2500 km {row['acc_2500km']:.1%}, "
        scores += f"median {row['median_km']:.0f} km"
    return (
        f"geotag (the Geolocator: GRPO policy's ψ -> rfm-psi-grpo): {predictions.num_rows} test clips, "
        f"{predictions.num_rows - located.num_rows} errors; {scores}"
    )


def latlon_deg(table: pa.Table) -> np.ndarray:
    """(N, 2) degrees from a table's `lat` and `lon` columns."""
    return np.column_stack([table["lat"].to_numpy(), table["lon"].to_numpy()])
