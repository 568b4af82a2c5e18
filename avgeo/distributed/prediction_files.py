"""The geotag job's write stage: finished rows -> predictions Parquet files (`avgeo.data.predictions`).

Kept apart from the model code on purpose: the worker that writes imports this module, which needs
pyarrow and Ray Data only (~2 CPU-s on the project's 2-core machine), not the geotag module's torch,
transformers and encoders (~14 CPU-s). And the writing is done by one actor, not by tasks: Ray replaces
task workers that sit idle for a second whenever its workers outnumber the CPUs (as the stage actors
make them on a small machine), and the writes come minutes apart, so each write task used to start a
fresh worker that imported everything again (docs/geotag.md, "Throughput").
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa

from avgeo.data.predictions import TIMING_FIELDS, bucket_folder, predictions_table, write_predictions
from avgeo.distributed.data_stages import content_file_name

RESULT_COLUMN = "result"
"""Column of a geotagged clip's predictions-table values from `lat` to `models`, pickled as a dict of
plain Python values (so unpickling it imports nothing); null on error rows."""


class PredictionWriter:
    """Actor: batches of finished rows -> predictions files in `out_dir` (`write_batch`)."""

    def __init__(self, out_dir: str, num_buckets: int) -> None:
        self.out_dir = out_dir
        self.num_buckets = num_buckets

    def __call__(self, batch: pa.Table) -> pa.Table:
        return write_batch(batch, self.out_dir, self.num_buckets)


def write_batch(batch: pa.Table, out_dir: str, num_buckets: int) -> pa.Table:
    """Write a batch of finished rows as one predictions file per bucket; one output row per file:
    `file` (path in out_dir), `rows` (rows in it), `error_types` (one per error row)."""
    by_bucket: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in batch.to_pylist():
        clip = {
            "clip_id": row["clip_id"],
            "video_path": row["video_path"],
            "error": row["error"],
            "timings": {name: row.get(name) for name in TIMING_FIELDS},
        }
        if row["error"] is None:
            clip.update(pickle.loads(row[RESULT_COLUMN]), heatmap_path=row.get("heatmap_path"))
        by_bucket[bucket_folder(row["clip_id"], num_buckets)].append(clip)
    files, counts, error_types = [], [], []
    for folder, clips in sorted(by_bucket.items()):
        table = predictions_table(clips)
        # Named by content: a retried task rewrites the same file rather than adding a copy of its rows.
        name = f"{folder}/{content_file_name(table['clip_id'].to_pylist())}"
        write_predictions(table, Path(out_dir) / name)
        files.append(name)
        counts.append(table.num_rows)
        error_types.append([error.split(":", 1)[0] for error in table["error"].to_pylist() if error])
    return pa.table(
        {"file": files, "rows": counts, "error_types": pa.array(error_types, pa.list_(pa.string()))}
    )
