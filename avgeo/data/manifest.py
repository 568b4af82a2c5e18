"""The AVG manifest: one Parquet row per clip, validated on write and on read.

| column        | type    | null allowed     | meaning                                                  |
|---------------|---------|------------------|----------------------------------------------------------|
| `clip_id`     | string  | never            | unique, non-empty id of the clip                         |
| `video_path`  | string  | never            | the clip: absolute, or relative to the manifest's folder |
| `lat`         | float64 | on unlabeled row | latitude of the recording, degrees in [-90, 90]          |
| `lon`         | float64 | on unlabeled row | longitude of the recording, degrees in [-180, 180]       |
| `location_id` | string  | on unlabeled row | the clip's location (splits are location-disjoint)       |
| `place`       | string  | on unlabeled row | place name, e.g. "Hampstead Heath"                       |
| `country`     | string  | on unlabeled row | country name                                             |
| `continent`   | string  | on unlabeled row | continent name                                           |
| `split`       | string  | never            | `train`, `val`, `test` or `unlabeled`                    |
| `duration_s`  | float64 | never            | clip length in seconds, > 0 and finite                   |

Rows with split `unlabeled` describe clips to geotag (e.g. an archive without coordinates): their label
columns (`lat` … `continent`) may be null. Every other split needs all of them. Any further columns
(e.g. avg-synth's annotations) are kept as they are, after the columns above.

`read_manifest` returns `video_path` resolved to an absolute path, so a manifest and its clips can move
together. Whether the files exist is not checked here: decoding reports a missing file per row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avgeo.data.errors import ManifestError

SPLITS = ("train", "val", "test", "unlabeled")
"""Values of the `split` column; `unlabeled` rows may leave the label columns null."""

LABEL_COLUMNS = ("lat", "lon", "location_id", "place", "country", "continent")
"""Columns that must be set on train/val/test rows and may be null on unlabeled rows."""

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("location_id", pa.string()),
        pa.field("place", pa.string()),
        pa.field("country", pa.string()),
        pa.field("continent", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
    ]
)
"""The required columns; nullability as in the module docstring's table."""


def write_manifest(rows: list[dict[str, Any]] | pa.Table, path: str | Path) -> Path:
    """Validate `rows` (dicts, or a table) against the schema and write them as Parquet to `path`.

    Paths are written as given, so relative `video_path`s stay relative to the manifest's folder.
    Raises ManifestError naming the column or the first bad row; nothing is written then.
    """
    path = Path(path)
    table = rows if isinstance(rows, pa.Table) else _table_from_rows(rows, str(path))
    table = validate_manifest(table, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_manifest(path: str | Path) -> pa.Table:
    """Read and validate a manifest; `video_path` comes back absolute (relative ones resolved
    against the manifest's folder). Raises ManifestError for a missing, unreadable or invalid file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; check the path")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(
            f"{path}: not a readable Parquet file ({exc}); write it with write_manifest"
        ) from exc
    table = validate_manifest(table, str(path))
    folder = path.parent.absolute()
    resolved = [os.path.normpath(folder / video_path) for video_path in table["video_path"].to_pylist()]
    index = table.schema.get_field_index("video_path")
    return table.set_column(index, MANIFEST_SCHEMA.field("video_path"), pa.array(resolved, pa.string()))


def validate_manifest(table: pa.Table, source: str) -> pa.Table:
    """Check `table` against the schema; return it with the schema's columns first, cast to their types.

    `source` names the manifest in errors. Rows are numbered from 0. Raises ManifestError naming the
    column (missing, or of the wrong kind) or the first bad row (by number and clip_id).
    """
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ManifestError(
            f"{source}: missing column {missing[0]!r}; a manifest needs {', '.join(MANIFEST_SCHEMA.names)}"
        )
    for field in MANIFEST_SCHEMA:
        column_type = table.schema.field(field.name).type
        if not _same_kind(column_type, field.type):
            raise ManifestError(
                f"{source}: column {field.name!r} has type {column_type}; it must be {field.type}"
            )
    extras = [table.schema.field(name) for name in table.column_names if name not in MANIFEST_SCHEMA.names]
    table = pa.table(
        [table[field.name].cast(field.type) for field in MANIFEST_SCHEMA] + [table[f.name] for f in extras],
        schema=pa.schema([*MANIFEST_SCHEMA, *extras]),
    )
    clip_ids = table["clip_id"].to_pylist()

    def check(bad_mask: pa.ChunkedArray, column: str, problem: str) -> None:
        bad_rows = np.flatnonzero(pc.fill_null(bad_mask, True).to_numpy(zero_copy_only=False))
        if bad_rows.size:
            row = int(bad_rows[0])
            raise ManifestError(
                f"{source}: row {row} (clip_id {clip_ids[row]!r}): {column} = {table[column][row].as_py()!r} "
                f"{problem}; fix or drop the row"
            )

    for column in ("clip_id", "video_path", "split", "duration_s"):
        check(pc.is_null(table[column]), column, "is null; it is required on every row")
    for column in ("clip_id", "video_path"):
        check(pc.equal(pc.utf8_length(table[column]), 0), column, "is empty")
    check(
        pc.invert(pc.is_in(table["split"], pa.array(SPLITS))), "split", f"is not one of {', '.join(SPLITS)}"
    )
    labeled = pc.not_equal(table["split"], "unlabeled")
    for column in LABEL_COLUMNS:
        check(pc.and_(labeled, pc.is_null(table[column])), column, "is null on a train/val/test row")
    for column, bound_deg in (("lat", 90), ("lon", 180)):
        outside = pc.invert(pc.less_equal(pc.abs(table[column]), bound_deg))
        check(
            pc.and_kleene(pc.is_valid(table[column]), outside),
            column,
            f"is outside [-{bound_deg}, {bound_deg}] degrees",
        )
    duration_ok = pc.and_(pc.greater(table["duration_s"], 0.0), pc.is_finite(table["duration_s"]))
    check(pc.invert(duration_ok), "duration_s", "is not a positive, finite number of seconds")
    if pc.count_distinct(table["clip_id"]).as_py() < table.num_rows:
        first_row: dict[str, int] = {}
        for row, clip_id in enumerate(clip_ids):
            if clip_id in first_row:
                raise ManifestError(
                    f"{source}: row {row}: clip_id {clip_id!r} repeats row {first_row[clip_id]}; "
                    "clip ids must be unique"
                )
            first_row[clip_id] = row
    return table


def _same_kind(column_type: pa.DataType, schema_type: pa.DataType) -> bool:
    """Whether a column can stand for a schema column: any string for string, any number for float64,
    and an all-null column for either.

    Strings are not parsed as numbers: a coordinate stored as text is a bug upstream."""
    if pa.types.is_null(column_type):
        return True
    if pa.types.is_string(schema_type):
        return pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
    return pa.types.is_integer(column_type) or pa.types.is_floating(column_type)


def _table_from_rows(rows: list[dict[str, Any]], source: str) -> pa.Table:
    """A table of every key found in any row (in first-seen order); schema columns get the schema's type."""
    if not rows:
        return MANIFEST_SCHEMA.empty_table()
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        value_type = MANIFEST_SCHEMA.field(name).type if name in MANIFEST_SCHEMA.names else None
        try:
            columns[name] = pa.array(values, type=value_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            if value_type is None:
                raise ManifestError(
                    f"{source}: extra column {name!r} mixes value types ({exc}); give it one type"
                ) from exc
            row = next(row for row, value in enumerate(values) if not _converts(value, value_type))
            raise ManifestError(
                f"{source}: row {row} (clip_id {rows[row].get('clip_id')!r}): {name} = {values[row]!r} "
                f"is not a {value_type} ({exc}); fix the row"
            ) from exc
    return pa.table(columns)


def _converts(value: Any, value_type: pa.DataType) -> bool:
    try:
        pa.array([value], type=value_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True
