"""The predictions table: one Parquet row per geotagged video, written by the geotag job.

| column             | type                          | meaning                                        |
|--------------------|-------------------------------|------------------------------------------------|
| `clip_id`          | string, never null            | unique id: the manifest's `clip_id`, else      |
|                    |                               | the video's path or URI                        |
| `video_path`       | string, never null            | the video, as a local path or a URI            |
| `error`            | string                        | null if geotagged, else "<Type>: <message>"    |
| `lat`, `lon`       | float64                       | point estimate, degrees                        |
| `log_density`      | float64                       | log-density at the point estimate, nats/sr     |
| `modes`            | list<struct<lat, lon,         | top-k modes, strongest first (`MODE_TYPE`)     |
|                    | probability, log_density>>    |                                                |
| `credible_regions` | list<struct<level, area_km2>> | area of each highest-density credible region   |
| `atoms`            | list<struct<…>>               | IC-SAE atoms, strongest first (`ATOM_TYPE`)    |
| `completion`       | string                        | the MLLM's generated text                      |
| `trace`            | string                        | its reasoning trace ("" if it does not parse)  |
| `answer_lat`,      | float64                       | the MLLM's answer, degrees; null when the      |
| `answer_lon`       |                               | completion does not parse                      |
| `parse_error`      | string                        | why the completion does not parse, else null   |
| `models`           | struct<visual, audio, icsae,  | "<name>@<weights sha256, 12 hex>" each         |
|                    | mllm, rfm: string>            |                                                |
| `timings`          | struct<decode_s, perceive_s,  | seconds spent on the clip per stage            |
|                    | reason_s, predict_s,          |                                                |
|                    | heatmap_s: float32>           |                                                |
| `heatmap_path`     | string                        | the density PNG, relative to the output folder |

Every column from `lat` to `models` is null on an error row and set on every other row, except
`answer_lat`/`answer_lon` (null exactly when `parse_error` is set). `heatmap_path` is null on error rows
and on every row of a run without heatmaps. `timings` is set on every row, each field once its stage ran
on the clip (a batched stage's wall time is shared evenly among the batch's clips); an error row has the
stages up to the one that failed. A mode's `probability` is the share of the flow's samples within the
mode radius of it; `credible_regions` lists the configured levels (0.5 and 0.9 by default) in order.

Files are partitioned by a hash bucket of the clip id (`bucket_folder`): `bucket=KK/part-<hash>.parquet`,
so a big archive spreads over a bounded number of folders and one clip's row is found by reading one
folder. Rows are in no particular order: join or sort on `clip_id` (e.g. with a manifest's labels).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avgeo.data.features import ATOM_TYPE
from avgeo.data.parquet_files import parquet_files, write_parquet_atomically

MODE_TYPE = pa.struct(
    [
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("log_density", pa.float64(), nullable=False),
    ]
)
"""One mode: its densest sample's latitude and longitude (degrees), its share of the samples and the
log-density there (nats/sr)."""

CREDIBLE_REGION_TYPE = pa.struct(
    [pa.field("level", pa.float64(), nullable=False), pa.field("area_km2", pa.float64(), nullable=False)]
)
"""One highest-density credible region: its probability mass `level` and its area in km²."""

MODEL_FIELDS = ("visual", "audio", "icsae", "mllm", "rfm")
"""Fields of the `models` struct."""

TIMING_FIELDS = ("decode_s", "perceive_s", "reason_s", "predict_s", "heatmap_s")
"""Fields of the `timings` struct, seconds."""

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("log_density", pa.float64()),
        pa.field("modes", pa.list_(MODE_TYPE)),
        pa.field("credible_regions", pa.list_(CREDIBLE_REGION_TYPE)),
        pa.field("atoms", pa.list_(ATOM_TYPE)),
        pa.field("completion", pa.string()),
        pa.field("trace", pa.string()),
        pa.field("answer_lat", pa.float64()),
        pa.field("answer_lon", pa.float64()),
        pa.field("parse_error", pa.string()),
        pa.field("models", pa.struct([pa.field(name, pa.string()) for name in MODEL_FIELDS])),
        pa.field("timings", pa.struct([pa.field(name, pa.float32()) for name in TIMING_FIELDS])),
        pa.field("heatmap_path", pa.string()),
    ]
)
"""The predictions table's columns, in order; the module docstring says what each holds."""

RESULT_COLUMNS = (
    "lat",
    "lon",
    "log_density",
    "modes",
    "credible_regions",
    "atoms",
    "completion",
    "trace",
    "models",
)
"""Columns that are null exactly on error rows."""


class PredictionsError(ValueError):
    """A predictions table or file violates the schema; the message names the file, column or row."""


def predictions_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """A validated table from per-clip dicts keyed by column name (a missing key is null)."""
    columns = [
        pa.array([row.get(field.name) for row in rows], type=field.type) for field in PREDICTIONS_SCHEMA
    ]
    return validate_predictions(pa.table(columns, schema=PREDICTIONS_SCHEMA), "predictions_table")


def bucket_folder(clip_id: str, num_buckets: int) -> str:
    """The partition folder of a clip: "bucket=KK", KK = SHA-256(clip_id) mod `num_buckets`, zero-padded."""
    bucket = int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "big") % num_buckets
    return f"bucket={bucket:0{len(str(num_buckets - 1))}d}"


def write_predictions(table: pa.Table, path: str | Path) -> Path:
    """Validate `table` and write it to the Parquet file `path` whole or not at all (temp file + rename).

    Raises PredictionsError (nothing written) when the table violates the schema.
    """
    return write_parquet_atomically(validate_predictions(table, str(path)), path)


def read_predictions(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a predictions file, or every one below a folder (`parquet_files`), validated.

    `columns` reads only those columns. A folder without files gives an empty table; a missing path
    raises PredictionsError, as does an unreadable file or a table that violates the schema.
    """
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: no such predictions file or folder; run the geotag job to write it")
    names = list(PREDICTIONS_SCHEMA.names if columns is None else columns)
    unknown = [name for name in names if name not in PREDICTIONS_SCHEMA.names]
    if unknown:
        raise PredictionsError(
            f"unknown predictions column {unknown[0]!r}; "
            f"the columns are {', '.join(PREDICTIONS_SCHEMA.names)}"
        )
    schema = pa.schema([PREDICTIONS_SCHEMA.field(name) for name in names])
    tables = []
    for file in [path] if path.is_file() else parquet_files(path):
        try:
            tables.append(pq.read_table(file, columns=names))
        except (pa.ArrowInvalid, OSError) as exc:
            raise PredictionsError(
                f"{file}: not a readable predictions file ({exc}); delete it and re-run the geotag job, "
                "which redoes the clips it held"
            ) from exc
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return validate_predictions(table, str(path))


def validate_predictions(table: pa.Table, source: str) -> pa.Table:
    """Check `table` (all of PREDICTIONS_SCHEMA's columns, or a subset) and return it cast to the schema.

    Checks: column types; clip_id and video_path never null; clip_id unique; result columns null exactly
    on error rows; the answer null exactly when it does not parse. Raises PredictionsError naming `source`.
    """
    unknown = [name for name in table.column_names if name not in PREDICTIONS_SCHEMA.names]
    if unknown:
        raise PredictionsError(f"{source}: unexpected column {unknown[0]!r}; see PREDICTIONS_SCHEMA")
    columns = []
    for name in table.column_names:
        field = PREDICTIONS_SCHEMA.field(name)
        try:
            columns.append(table[name].cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise PredictionsError(
                f"{source}: column {name!r} of type {table.schema.field(name).type} does not fit {field.type}"
            ) from exc
    table = pa.table(columns, schema=pa.schema([PREDICTIONS_SCHEMA.field(n) for n in table.column_names]))
    present = set(table.column_names)
    clip_ids = table["clip_id"] if "clip_id" in present else None

    def check(bad_mask: pa.ChunkedArray, problem: str) -> None:
        bad_rows = np.flatnonzero(pc.fill_null(bad_mask, True).to_numpy(zero_copy_only=False))
        if bad_rows.size:
            row = int(bad_rows[0])
            clip = "" if clip_ids is None else f" (clip_id {clip_ids[row].as_py()!r})"
            raise PredictionsError(f"{source}: row {row}{clip}: {problem} ({bad_rows.size} such rows)")

    for name in ("clip_id", "video_path"):
        if name in present:
            check(pc.is_null(table[name]), f"{name} is null; it is required on every row")
    if clip_ids is not None and pc.count_distinct(clip_ids).as_py() < table.num_rows:
        counts = pc.value_counts(clip_ids.combine_chunks())
        twice = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise PredictionsError(
            f"{source}: clip_id {twice!r} appears more than once; each clip has one row "
            "(two runs with different inputs wrote into the same folder? keep one of the files)"
        )
    if "error" in present:
        failed = pc.is_valid(table["error"])
        for name in (*RESULT_COLUMNS, "heatmap_path"):
            if name in present:
                check(pc.and_(failed, pc.is_valid(table[name])), f"{name} is set on an error row")
        for name in RESULT_COLUMNS:
            if name in present:
                check(pc.and_(pc.invert(failed), pc.is_null(table[name])), f"{name} is null without an error")
    if {"error", "parse_error", "answer_lat", "answer_lon"} <= present:
        parsed = pc.and_(pc.is_null(table["error"]), pc.is_null(table["parse_error"]))
        for name in ("answer_lat", "answer_lon"):
            check(
                pc.not_equal(parsed, pc.is_valid(table[name])),
                f"{name} disagrees with parse_error (it is set exactly when the answer parses)",
            )
    return table
