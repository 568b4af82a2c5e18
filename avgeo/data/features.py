"""The feature table: one Parquet row per manifest row, holding a clip's perception features.

The embedding job writes it (`avgeo.distributed.embed`); training and evaluation read it back with
`read_features` and turn it into matrices with `feature_matrix` and `labels_latlon`.

| column                | type                                  | meaning                                  |
|-----------------------|---------------------------------------|------------------------------------------|
| `clip_id`             | string, never null                    | the manifest row's clip id (unique)      |
| `video_path`          | string, never null                    | the clip, as the manifest resolved it    |
| `split`               | string, never null                    | the manifest row's split                 |
| `lat`, `lon`          | float64                               | label, degrees; null on unlabeled rows   |
| `error`               | string                                | null if embedded, else "<Type>: <msg>"   |
| `visual_per_frame`    | list<fixed_size_list<float32, 512>>   | (T, 512) GeoCLIP features h_t per frame  |
| `visual_mean`         | fixed_size_list<float32, 512>         | (512,) mean of h_t over the T frames     |
| `audio_embedding`     | list<fixed_size_list<float32, 512>>   | (W, 512) unit-norm CLAP, per window      |
| `audio_projection`    | list<fixed_size_list<float32, 512>>   | (W, 512) the same before L2 normalising  |
| `audio_mean`          | fixed_size_list<float32, 512>         | (512,) mean unit embedding, re-normalised |
| `atoms`               | list<struct<…>>                       | IC-SAE atoms of all windows (`ATOM_TYPE`) |
| `atom_class_strength` | fixed_size_list<float32, 527>         | (527,) atom strengths summed per class   |
| `models`              | struct<visual, audio, icsae: string>  | "<name>@<weights sha256, 12 hex>" each   |
| `timings`             | struct<decode_s, visual_s, audio_s,   | seconds spent on the clip per stage      |
|                       | icsae_s: float32>                     |                                          |

`atom_class_strength[c]` is the sum of the strengths of class c's atoms over every step and window: the
"audio atoms (IC-SAE)" input of the prediction heads.

Every column from `visual_per_frame` to `models` is null on an error row and set on every other row.
`timings` is set on every row; on an error row only `decode_s` is (the time the decoder took to fail).
A batched stage's time is its batch's wall time shared evenly among the batch's clips.
Window w of `audio_*` starts at w · hop seconds (the job's `hop_s`, 10 s by default); `atoms.window` is w.
The job writes several files whose rows are not in manifest order: join or sort on `clip_id`.

`feature_matrix` gives the prediction heads' inputs: `visual` = `visual_mean` (512), `audio` =
`audio_mean` (512), `atoms` = `atom_class_strength` (527), `audiovisual` = the three concatenated in that
order (1551 columns).

On disk the top-level fixed-size vectors (`visual_mean`, `audio_mean`, `atom_class_strength`) are stored
as variable lists and cast back on read: pyarrow 25 writes a null fixed-size list but cannot read it back
("Expected all lists to be of size=512"), and the cast checks every vector's width on the way in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avgeo.config import ConfigError
from avgeo.data.parquet_files import parquet_files, write_parquet_atomically

VISUAL_DIM = 512
"""Width of GeoCLIP's per-frame image features h_t."""

AUDIO_DIM = 512
"""Width of CLAP's joint audio-text space."""

NUM_AUDIOSET_CLASSES = 527
"""AudioSet classes, one IC-SAE dictionary block each, in classifier order."""

ATOM_TYPE = pa.struct(
    [
        pa.field("window", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("class_mid", pa.string(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("kernel", pa.int32(), nullable=False),
        pa.field("strength", pa.float32(), nullable=False),
    ]
)
"""One acoustic atom: audio `window` index (0-based), 1-based greedy `step` within that window, the
AudioSet class of its kernel (`class_mid`, `class_name`), the dictionary `kernel` index and its
`strength` z > 0. Atoms are listed window by window, in extraction order within a window."""

MODEL_FIELDS = ("visual", "audio", "icsae")
"""Fields of the `models` struct."""

TIMING_FIELDS = ("decode_s", "visual_s", "audio_s", "icsae_s")
"""Fields of the `timings` struct, seconds."""


def _vectors(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


FEATURES_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("visual_per_frame", pa.list_(_vectors(VISUAL_DIM))),
        pa.field("visual_mean", _vectors(VISUAL_DIM)),
        pa.field("audio_embedding", pa.list_(_vectors(AUDIO_DIM))),
        pa.field("audio_projection", pa.list_(_vectors(AUDIO_DIM))),
        pa.field("audio_mean", _vectors(AUDIO_DIM)),
        pa.field("atoms", pa.list_(ATOM_TYPE)),
        pa.field("atom_class_strength", _vectors(NUM_AUDIOSET_CLASSES)),
        pa.field("models", pa.struct([pa.field(name, pa.string()) for name in MODEL_FIELDS])),
        pa.field("timings", pa.struct([pa.field(name, pa.float32()) for name in TIMING_FIELDS])),
    ]
)
"""The feature table's columns, in order; the module docstring says what each holds."""

FEATURE_COLUMNS = (
    "visual_per_frame",
    "visual_mean",
    "audio_embedding",
    "audio_projection",
    "audio_mean",
    "atoms",
    "atom_class_strength",
    "models",
)
"""Columns that are null exactly on error rows."""

_STORED_AS_LIST = ("visual_mean", "audio_mean", "atom_class_strength")

FeatureKind = Literal["visual", "audio", "atoms", "audiovisual"]

_MATRIX_COLUMNS: dict[str, tuple[str, ...]] = {
    "visual": ("visual_mean",),
    "audio": ("audio_mean",),
    "atoms": ("atom_class_strength",),
    "audiovisual": ("visual_mean", "audio_mean", "atom_class_strength"),
}


class FeaturesError(ValueError):
    """A feature table or file violates the schema; the message names the file, column or row and the fix."""


def features_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Build a validated table from per-clip dicts keyed by column name (values as `feature_column`
    takes them; a missing key is null)."""
    columns = [feature_column(name, [row.get(name) for row in rows]) for name in FEATURES_SCHEMA.names]
    return validate_features(pa.table(columns, schema=FEATURES_SCHEMA), "features_table")


def feature_column(name: str, values: Sequence[Any]) -> pa.Array:
    """One column of the feature table, typed as FEATURES_SCHEMA says, from per-row values (None: null).

    Vectors are numpy arrays: `visual_per_frame` (T, 512), `visual_mean` (512,), `audio_embedding` and
    `audio_projection` (W, 512), `audio_mean` (512,), `atom_class_strength` (527,); `atoms` is a list of
    dicts with `ATOM_TYPE`'s keys; `models` and `timings` are dicts; the rest are Python scalars.
    """
    field_type = FEATURES_SCHEMA.field(name).type
    if pa.types.is_list(field_type) and pa.types.is_fixed_size_list(field_type.value_type):
        return _matrix_list_array(values, field_type.value_type.list_size)
    if pa.types.is_fixed_size_list(field_type):
        return _vector_array(values, field_type.list_size)
    return pa.array(values, type=field_type)


def write_features(table: pa.Table, path: str | Path) -> Path:
    """Validate `table` and write it to the Parquet file `path`, atomically (temp file + rename).

    A reader never sees a half-written file under `path`: the data goes to a hidden temp file in the
    same folder first. Raises FeaturesError (nothing written) when the table violates the schema.
    """
    path = Path(path)
    table = validate_features(table, str(path))
    stored = table
    for name in _STORED_AS_LIST:
        index = stored.schema.get_field_index(name)
        stored = stored.set_column(index, name, stored[name].cast(pa.list_(pa.float32())))
    return write_parquet_atomically(stored, path)


def feature_files(path: str | Path) -> list[Path]:
    """The Parquet files `read_features` reads: `path` itself, or a folder's `*.parquet` files sorted by
    name, hidden ones (in-progress temp files) left out."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return [file for file in parquet_files(path) if file.parent == path]
    raise FeaturesError(f"{path}: no such feature file or folder; run the embedding job to write it")


def read_features(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a feature file, or every feature file of a folder (as `feature_files` lists them), validated.

    `columns` reads only those columns (in that order); validation then covers only what they hold.
    A folder without feature files gives an empty table. Raises FeaturesError for a missing path, an
    unreadable file, an unknown column or a table that violates the schema.
    """
    names = list(FEATURES_SCHEMA.names if columns is None else columns)
    unknown = [name for name in names if name not in FEATURES_SCHEMA.names]
    if unknown:
        raise FeaturesError(
            f"unknown feature column {unknown[0]!r}; the columns are {', '.join(FEATURES_SCHEMA.names)}"
        )
    schema = pa.schema([FEATURES_SCHEMA.field(name) for name in names])
    tables = []
    for file in feature_files(path):
        try:
            stored = pq.read_table(file, columns=names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FeaturesError(
                f"{file}: not a readable feature file ({exc}); delete it and re-run the embedding job, "
                "which re-embeds the clips it held"
            ) from exc
        tables.append(_cast_to(stored, schema, str(file)))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return validate_features(table, str(path))


def validate_features(table: pa.Table, source: str) -> pa.Table:
    """Check `table` (all of FEATURES_SCHEMA's columns, or a subset) and return it cast to the schema.

    Checks: column types; clip_id, video_path, split never null; clip_id unique; feature columns null
    exactly on error rows; at least one frame and one audio window per embedded clip, with as many
    projections as embeddings. `source` names the table in errors. Raises FeaturesError.
    """
    unknown = [name for name in table.column_names if name not in FEATURES_SCHEMA.names]
    if unknown:
        raise FeaturesError(f"{source}: unexpected column {unknown[0]!r}; see FEATURES_SCHEMA")
    schema = pa.schema([FEATURES_SCHEMA.field(name) for name in table.column_names])
    table = _cast_to(table, schema, source)
    clip_ids = table["clip_id"] if "clip_id" in table.column_names else None

    def check(bad_mask: pa.ChunkedArray | pa.Array, problem: str) -> None:
        bad_rows = np.flatnonzero(pc.fill_null(bad_mask, True).to_numpy(zero_copy_only=False))
        if bad_rows.size:
            row = int(bad_rows[0])
            clip = "" if clip_ids is None else f" (clip_id {clip_ids[row].as_py()!r})"
            raise FeaturesError(f"{source}: row {row}{clip}: {problem} ({bad_rows.size} such rows)")

    for name in ("clip_id", "video_path", "split"):
        if name in table.column_names:
            check(pc.is_null(table[name]), f"{name} is null; it is required on every row")
    if clip_ids is not None and pc.count_distinct(clip_ids).as_py() < table.num_rows:
        seen: set[str] = set()
        for row, clip_id in enumerate(clip_ids.to_pylist()):
            if clip_id in seen:
                raise FeaturesError(
                    f"{source}: row {row}: clip_id {clip_id!r} appears twice; each clip has one row "
                    "(two runs wrote into the same folder? keep one of the files)"
                )
            seen.add(clip_id)
    if "error" in table.column_names:
        failed = pc.is_valid(table["error"])
        for name in FEATURE_COLUMNS:
            if name in table.column_names:
                check(pc.and_(failed, pc.is_valid(table[name])), f"{name} is set on an error row")
                check(pc.and_(pc.invert(failed), pc.is_null(table[name])), f"{name} is null without an error")
    for name, unit in (("visual_per_frame", "frame"), ("audio_embedding", "audio window")):
        if name in table.column_names:
            empty = pc.fill_null(pc.equal(pc.list_value_length(table[name]), 0), False)
            check(empty, f"{name} holds no {unit}")
    if {"audio_embedding", "audio_projection"} <= set(table.column_names):
        num_windows = [pc.list_value_length(table[name]) for name in ("audio_embedding", "audio_projection")]
        check(
            pc.fill_null(pc.not_equal(*num_windows), False),
            "audio_embedding and audio_projection hold different numbers of windows",
        )
    return table


def embedded_rows(table: pa.Table) -> pa.Table:
    """The rows whose clip embedded (`error` is null)."""
    return table.filter(pc.is_null(table["error"]))


def embedded_split(path: str | Path, split: str, columns: Sequence[str], setting: str) -> pa.Table:
    """The embedded rows of `split` in the feature table at `path`, `columns` of them (`split` and `error`
    among them); a ConfigError naming the config `setting` that chose the split when there are none."""
    table = embedded_rows(read_features(path, columns=columns))
    table = table.filter(pc.equal(table["split"], split))
    if table.num_rows == 0:
        raise ConfigError(
            f"{path}: no embedded rows of split {split!r}; check {setting} and that the embedding job has "
            "run on this manifest"
        )
    return table


def feature_matrix(table: pa.Table, kind: FeatureKind) -> np.ndarray:
    """(N, D) float32 inputs of the prediction heads, one row per table row (see the module docstring).

    D is 512 (`visual`, `audio`), 527 (`atoms`) or 1551 (`audiovisual`). Raises FeaturesError when a row
    has no features (an error row): pass `embedded_rows(table)`.
    """
    if kind not in _MATRIX_COLUMNS:
        raise FeaturesError(f"unknown feature kind {kind!r}; use one of {', '.join(_MATRIX_COLUMNS)}")
    blocks = []
    for name in _MATRIX_COLUMNS[kind]:
        column = table[name]
        if column.null_count:
            raise FeaturesError(
                f"{name}: {column.null_count} of {table.num_rows} rows have no features (clips that "
                "failed to embed); select the others with embedded_rows(table)"
            )
        dim = FEATURES_SCHEMA.field(name).type.list_size
        values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        blocks.append(values.reshape(table.num_rows, dim))
    return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)


def labels_latlon(table: pa.Table) -> np.ndarray:
    """(N, 2) float64 [lat, lon] in degrees. Raises FeaturesError on unlabeled rows: select labeled splits."""
    for name in ("lat", "lon"):
        if table[name].null_count:
            raise FeaturesError(
                f"{name}: {table[name].null_count} of {table.num_rows} rows are unlabeled; select the "
                "train/val/test rows first, e.g. table.filter(pc.field('split') != 'unlabeled')"
            )
    return np.stack([table["lat"].to_numpy(), table["lon"].to_numpy()], axis=1).astype(np.float64)


def _cast_to(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """`table`'s columns in `schema`'s order and types; FeaturesError names the column that does not fit."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise FeaturesError(f"{source}: missing column {missing[0]!r}; see FEATURES_SCHEMA")
    columns = []
    for field in schema:
        try:
            columns.append(table[field.name].cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise FeaturesError(
                f"{source}: column {field.name!r} of type {table.schema.field(field.name).type} does not fit "
                f"{field.type} ({exc})"
            ) from exc
    return pa.table(columns, schema=schema)


def _vector_array(values: Sequence[np.ndarray | None], dim: int) -> pa.FixedSizeListArray:
    """(dim,) vectors or None -> fixed_size_list<float32, dim>; null slots hold zeros underneath."""
    mask = np.array([value is None for value in values], dtype=bool)
    flat = np.zeros((len(values), dim), dtype=np.float32)
    for row, value in enumerate(values):
        if value is not None:
            flat[row] = _checked(value, (dim,))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(mask))


def _matrix_list_array(values: Sequence[np.ndarray | None], dim: int) -> pa.ListArray:
    """(n_i, dim) matrices or None -> list<fixed_size_list<float32, dim>>."""
    present = [_checked(value, (None, dim)) for value in values if value is not None]
    lengths = [0 if value is None else len(value) for value in values]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = np.concatenate(present).reshape(-1) if present else np.zeros(0, dtype=np.float32)
    rows = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    mask = pa.array([value is None for value in values], pa.bool_())
    return pa.ListArray.from_arrays(offsets, rows, mask=mask)


def _checked(value: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    fits = array.ndim == len(shape) and all(
        want is None or got == want for got, want in zip(array.shape, shape, strict=True)
    )
    if not fits:
        wanted = ", ".join("n" if want is None else str(want) for want in shape)
        raise FeaturesError(f"a feature array has shape {array.shape}; expected ({wanted})")
    return array
