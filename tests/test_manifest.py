"""The AVG manifest round-trips through Parquet, resolves paths, and names the first bad column or row."""

from __future__ import annotations

import math
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avgeo.data.errors import ManifestError
from avgeo.data.manifest import MANIFEST_SCHEMA, read_manifest, validate_manifest, write_manifest


def row(clip_id: str = "c0", **changes) -> dict:
    base = {
        "clip_id": clip_id,
        "video_path": f"clips/{clip_id}.mp4",
        "lat": 51.56,
        "lon": -0.17,
        "location_id": "loc_0001",
        "place": "Hampstead Heath",
        "country": "United Kingdom",
        "continent": "Europe",
        "split": "train",
        "duration_s": 10.0,
    }
    return {**base, **changes}


def rows(count: int = 3) -> list[dict]:
    return [row(f"c{i}") for i in range(count)]


def test_round_trip_keeps_values_order_and_extra_columns(tmp_path):
    written = [
        {**row("c0"), "synth_classes": ["Siren", "Bird"], "snr_db": 12.5},
        {**row("c1", split="val", lat=-33.87, lon=151.2), "synth_classes": [], "snr_db": None},
        {**row("c2", split="test"), "synth_classes": ["Wind"], "snr_db": -3.0},
    ]
    path = write_manifest(written, tmp_path / "avg" / "manifest.parquet")
    table = read_manifest(path)
    assert table.schema.names == [*MANIFEST_SCHEMA.names, "synth_classes", "snr_db"]
    assert table.select(MANIFEST_SCHEMA.names).schema == MANIFEST_SCHEMA
    for got, want in zip(table.to_pylist(), written, strict=True):
        want = {**want, "video_path": os.path.normpath(tmp_path / "avg" / want["video_path"])}
        assert got == want


def test_relative_paths_resolve_against_the_manifest_folder_wherever_it_moves(tmp_path):
    manifest_rows = [
        row("rel"),
        row("up", video_path="../shared/up.mp4"),
        row("abs", video_path="/data/avg/abs.mp4"),
    ]
    write_manifest(manifest_rows, tmp_path / "a" / "manifest.parquet")
    shutil.move(tmp_path / "a", tmp_path / "b")
    paths = read_manifest(tmp_path / "b" / "manifest.parquet")["video_path"].to_pylist()
    assert paths == [
        str(tmp_path / "b" / "clips" / "rel.mp4"),
        str(tmp_path / "shared" / "up.mp4"),
        "/data/avg/abs.mp4",
    ]
    # The file keeps what was written, so the folder stays relocatable.
    stored = pq.read_table(tmp_path / "b" / "manifest.parquet")["video_path"].to_pylist()
    assert stored == [r["video_path"] for r in manifest_rows]


def test_unlabeled_rows_may_leave_labels_null(tmp_path):
    unknown = dict.fromkeys(("lat", "lon", "location_id", "place", "country", "continent"))
    table = read_manifest(
        write_manifest([row("u0", split="unlabeled", **unknown), row("l0")], tmp_path / "m.parquet")
    )
    assert table["lat"].to_pylist() == [None, 51.56]
    assert table["split"].to_pylist() == ["unlabeled", "train"]


@pytest.mark.parametrize(("lat", "lon"), [(90, 180), (-90, -180), (0, 0), (89.999, -179.999)])
def test_coordinate_bounds_are_inclusive(tmp_path, lat, lon):
    table = read_manifest(write_manifest([row(lat=lat, lon=lon)], tmp_path / "m.parquet"))
    assert table["lat"].type == pa.float64() and table["lat"][0].as_py() == float(lat)


def test_a_table_with_integer_coordinates_and_large_strings_is_cast_to_the_schema(tmp_path):
    strings = {
        field.name: pa.array([row()[field.name]], pa.large_string())
        for field in MANIFEST_SCHEMA
        if field.type == pa.string()
    }
    numbers = {
        "lat": pa.array([51], pa.int64()),
        "lon": pa.array([0], pa.int32()),
        "duration_s": pa.array([10], pa.int8()),
    }
    table = pa.table({**numbers, **strings})
    written = read_manifest(write_manifest(table, tmp_path / "m.parquet"))
    assert written.select(MANIFEST_SCHEMA.names).schema == MANIFEST_SCHEMA
    assert written["lat"].to_pylist() == [51.0]


def test_an_empty_manifest_round_trips(tmp_path):
    table = read_manifest(write_manifest([], tmp_path / "m.parquet"))
    assert table.num_rows == 0 and table.schema == MANIFEST_SCHEMA


@pytest.mark.parametrize(
    ("changes", "column", "words"),
    [
        ({"lat": 90.5}, "lat", "outside [-90, 90]"),
        ({"lat": math.nan}, "lat", "outside [-90, 90]"),
        ({"lon": -180.01}, "lon", "outside [-180, 180]"),
        ({"lat": None}, "lat", "null on a train/val/test row"),
        ({"continent": None, "split": "test"}, "continent", "null on a train/val/test row"),
        ({"split": "dev"}, "split", "not one of train, val, test, unlabeled"),
        ({"split": None}, "split", "null"),
        ({"duration_s": 0.0}, "duration_s", "positive"),
        ({"duration_s": -2.0}, "duration_s", "positive"),
        ({"duration_s": math.inf}, "duration_s", "finite"),
        ({"video_path": ""}, "video_path", "empty"),
        ({"clip_id": ""}, "clip_id", "empty"),
        ({"lat": "north"}, "lat", "not a double"),
        ({"place": 7}, "place", "not a string"),
    ],
)
def test_first_bad_row_is_named_by_number_and_clip_id(tmp_path, changes, column, words):
    manifest_rows = rows(4)
    manifest_rows[2] = row(**{"clip_id": "c2", **changes})
    manifest_rows[3] = row(**{"clip_id": "c3", **changes})
    path = tmp_path / "m.parquet"
    with pytest.raises(ManifestError) as excinfo:
        write_manifest(manifest_rows, path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: row 2 ")
    assert f"{column} = " in message and words in message
    if changes.get("clip_id") is None:
        assert "'c2'" in message
    assert not path.exists()


def test_duplicate_clip_id_names_both_rows(tmp_path):
    with pytest.raises(ManifestError, match=r"row 3: clip_id 'c1' repeats row 1"):
        write_manifest([*rows(3), row("c1")], tmp_path / "m.parquet")


def test_missing_or_mistyped_column_is_named(tmp_path):
    table = pa.Table.from_pylist(rows(2))
    with pytest.raises(ManifestError, match="missing column 'country'"):
        validate_manifest(table.drop_columns(["country"]), "m.parquet")
    mistyped = table.set_column(table.schema.get_field_index("lat"), "lat", pa.array(["51.5", "0"]))
    with pytest.raises(ManifestError, match="column 'lat' has type string; it must be double"):
        validate_manifest(mistyped, "m.parquet")


def test_reading_checks_the_file_as_writing_does(tmp_path):
    # A manifest written by another tool is validated on read, with the same messages.
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.Table.from_pylist([*rows(2), row("c9", lon=200.0)]), path)
    with pytest.raises(ManifestError, match=r"row 2 \(clip_id 'c9'\): lon = 200.0 is outside"):
        read_manifest(path)


def test_missing_and_non_parquet_files_are_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "absent.parquet")
    text = tmp_path / "manifest.parquet"
    text.write_text("clip_id,video_path\n")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(text)
