"""The feature table round-trips through Parquet (error rows included), validates, and yields matrices."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avgeo.data.features import (
    FEATURE_COLUMNS,
    FEATURES_SCHEMA,
    FeaturesError,
    embedded_rows,
    feature_matrix,
    features_table,
    labels_latlon,
    read_features,
    validate_features,
    write_features,
)


def embedded_row(clip_id: str, seed: int, num_frames: int = 3, num_windows: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    embedding = rng.normal(size=(num_windows, 512)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    mean = embedding.mean(axis=0)
    return {
        "clip_id": clip_id,
        "video_path": f"/data/{clip_id}.mp4",
        "split": "train",
        "lat": float(rng.uniform(-90, 90)),
        "lon": float(rng.uniform(-180, 180)),
        "visual_per_frame": rng.normal(size=(num_frames, 512)),
        "visual_mean": rng.normal(size=512),
        "audio_embedding": embedding,
        "audio_projection": embedding * 3.0,
        "audio_mean": mean / np.linalg.norm(mean),
        "atoms": [
            {
                "window": 0,
                "step": 1,
                "class_mid": "/m/09x0r",
                "class_name": "Speech",
                "kernel": 3,
                "strength": 0.5,
            }
        ],
        "atom_class_strength": rng.uniform(size=527),
        "models": {"visual": "tiny@0", "audio": "tiny@1", "icsae": "tiny@2"},
        "timings": {"decode_s": 0.1, "visual_s": 0.2, "audio_s": 0.3, "icsae_s": 0.01},
    }


def error_row(clip_id: str) -> dict:
    return {
        "clip_id": clip_id,
        "video_path": f"/data/{clip_id}.mp4",
        "split": "unlabeled",
        "error": f"TruncatedFileError: /data/{clip_id}.mp4: cut short",
        "timings": {"decode_s": 0.002},
    }


@pytest.fixture
def table() -> pa.Table:
    return features_table(
        [embedded_row("a", 0), error_row("b"), embedded_row("c", 1, num_frames=5, num_windows=1)]
    )


def test_round_trip_keeps_every_value_including_null_vectors_of_error_rows(tmp_path, table):
    # pyarrow 25 cannot read back a null fixed-size list from Parquet; the stored form must avoid it.
    path = write_features(table, tmp_path / "part-0.parquet")
    read = read_features(path)
    assert read.schema.equals(FEATURES_SCHEMA)
    assert read.equals(table)
    assert read["visual_mean"].null_count == 1 and read["atom_class_strength"].null_count == 1
    assert os.listdir(tmp_path) == ["part-0.parquet"], "no temp file left behind"


def test_folder_read_concatenates_files_by_name_and_ignores_hidden_temp_files(tmp_path, table):
    write_features(table.slice(2, 1), tmp_path / "part-b.parquet")
    write_features(table.slice(0, 2), tmp_path / "part-a.parquet")
    (tmp_path / ".part-c.parquet.1234.tmp").write_bytes(b"PAR1 half a file")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert read_features(tmp_path).equals(table)
    assert read_features(tmp_path, columns=["error", "clip_id"]).column_names == ["error", "clip_id"]


def test_empty_folder_reads_as_empty_table_and_missing_path_is_an_error(tmp_path):
    empty = read_features(tmp_path, columns=["clip_id"])
    assert empty.num_rows == 0 and empty.schema.field("clip_id").type == pa.string()
    with pytest.raises(FeaturesError, match="no such feature file or folder"):
        read_features(tmp_path / "missing")


def test_unreadable_file_and_unknown_column_are_named(tmp_path, table):
    (tmp_path / "part-x.parquet").write_text("not parquet")
    with pytest.raises(FeaturesError, match=r"part-x\.parquet: not a readable feature file"):
        read_features(tmp_path)
    with pytest.raises(FeaturesError, match="unknown feature column 'visual'"):
        read_features(tmp_path, columns=["visual"])


def test_duplicate_clip_across_files_is_an_error(tmp_path, table):
    write_features(table.slice(0, 1), tmp_path / "part-1.parquet")
    write_features(table.slice(0, 1), tmp_path / "part-2.parquet")
    with pytest.raises(FeaturesError, match="clip_id 'a' appears twice"):
        read_features(tmp_path)


@pytest.mark.parametrize("column", FEATURE_COLUMNS)
def test_feature_columns_are_null_exactly_on_error_rows(table, column):
    index, field = table.schema.get_field_index(column), FEATURES_SCHEMA.field(column)
    on_error_row = table.set_column(index, field, pa.array([table[column][0].as_py()] * 3, field.type))
    with pytest.raises(FeaturesError, match=f"row 1 \\(clip_id 'b'\\): {column} is set on an error row"):
        validate_features(on_error_row, "t")
    missing = table.set_column(index, field, pa.nulls(3, field.type))
    with pytest.raises(FeaturesError, match=f"row 0 \\(clip_id 'a'\\): {column} is null without an error"):
        validate_features(missing, "t")


def test_wrong_vector_width_and_window_mismatch_are_rejected(tmp_path):
    with pytest.raises(FeaturesError, match=r"shape \(511,\); expected \(512\)"):
        features_table([{**embedded_row("a", 0), "visual_mean": np.zeros(511)}])
    with pytest.raises(FeaturesError, match="different numbers of windows"):
        features_table([{**embedded_row("a", 0), "audio_projection": np.zeros((3, 512))}])
    with pytest.raises(FeaturesError, match="visual_per_frame holds no frame"):
        features_table([{**embedded_row("a", 0), "visual_per_frame": np.zeros((0, 512))}])
    # A stored file whose vectors have the wrong width fails on read, not later in training.
    stored = pa.table({"clip_id": ["a"], "visual_mean": pa.array([[0.0] * 511], pa.list_(pa.float32()))})
    pq.write_table(stored, tmp_path / "bad.parquet")
    with pytest.raises(FeaturesError, match="column 'visual_mean'"):
        read_features(tmp_path / "bad.parquet", columns=["clip_id", "visual_mean"])


def test_invalid_table_is_not_written(tmp_path, table):
    broken = table.set_column(0, FEATURES_SCHEMA.field("clip_id"), pa.array(["a", "a", "c"]))
    with pytest.raises(FeaturesError, match="appears twice"):
        write_features(broken, tmp_path / "part.parquet")
    assert list(tmp_path.iterdir()) == []


def test_feature_matrix_widths_and_audiovisual_is_the_concatenation(table):
    ok = embedded_rows(table)
    assert ok["clip_id"].to_pylist() == ["a", "c"]
    parts = {kind: feature_matrix(ok, kind) for kind in ("visual", "audio", "atoms")}
    assert {kind: m.shape for kind, m in parts.items()} == {
        "visual": (2, 512),
        "audio": (2, 512),
        "atoms": (2, 527),
    }
    audiovisual = feature_matrix(ok, "audiovisual")
    assert audiovisual.dtype == np.float32 and audiovisual.shape == (2, 1551)
    np.testing.assert_array_equal(
        audiovisual, np.concatenate([parts["visual"], parts["audio"], parts["atoms"]], 1)
    )
    np.testing.assert_array_equal(parts["visual"][1], np.asarray(ok["visual_mean"][1].as_py(), np.float32))
    np.testing.assert_allclose(np.linalg.norm(parts["audio"], axis=1), 1.0, rtol=1e-6)


def test_feature_matrix_refuses_error_rows_and_unknown_kinds(table):
    with pytest.raises(FeaturesError, match=r"1 of 3 rows have no features.*embedded_rows"):
        feature_matrix(table, "visual")
    with pytest.raises(FeaturesError, match="unknown feature kind 'video'"):
        feature_matrix(table, "video")


def test_labels_latlon_in_degrees_and_unlabeled_rows_refused(table):
    ok = embedded_rows(table)
    latlon = labels_latlon(ok)
    assert latlon.shape == (2, 2) and latlon.dtype == np.float64
    assert latlon[:, 0].tolist() == ok["lat"].to_pylist() and latlon[:, 1].tolist() == ok["lon"].to_pylist()
    with pytest.raises(FeaturesError, match="lat: 1 of 3 rows are unlabeled"):
        labels_latlon(table)
