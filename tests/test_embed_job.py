"""The embedding job on avg-synth `ci` with corrupted clips (Ray Data, in process and via `ray job submit`),
and the featurizers' batching invariants (plain torch)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.audioset import class_by_mid
from avgeo.data.decode import DecodeConfig
from avgeo.data.features import embedded_rows, feature_files, read_features
from avgeo.data.manifest import read_manifest, write_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.distributed.embed import EmbedConfig, embed_in_process, run_embed
from avgeo.perception.embedder import (
    AtomFeaturizer,
    AudioFeaturizer,
    ClipEmbedder,
    VisualFeaturizer,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "embed" / "tiny.yaml"
NUM_ATOMS = load_config(EmbedConfig, TINY_CONFIG).num_atoms
CORRUPTED = {0: "TruncatedFileError", 1: "NotAVideoError", 2: "MissingFileError"}
"""Manifest row -> the error its clip gets: cut in half, overwritten with text, deleted."""
VECTOR_COLUMNS = (
    "visual_per_frame",
    "visual_mean",
    "audio_embedding",
    "audio_projection",
    "audio_mean",
    "atom_class_strength",
)
"""Float feature columns: equal to float tolerance between runs whose batches differ."""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """avg-synth `ci` (48 clips of 3 s) with three clips corrupted as CORRUPTED says."""
    path = run_synth(synth_preset("ci"), tmp_path_factory.mktemp("avg-synth-ci"), seed=0)
    clips = [Path(clip) for clip in read_manifest(path)["video_path"].to_pylist()]
    data = clips[0].read_bytes()
    clips[0].write_bytes(data[: len(data) // 2])
    clips[1].write_text("this is not a video\n")
    clips[2].unlink()
    return path


@pytest.fixture(scope="module")
def featurizers() -> ClipEmbedder:
    torch.set_num_threads(1)
    return ClipEmbedder(
        VisualFeaturizer.load("tiny"), AudioFeaturizer.load("tiny"), AtomFeaturizer.load("tiny", NUM_ATOMS)
    )


@pytest.fixture(scope="module")
def first_run(manifest, ray_local, tmp_path_factory):
    """The tiny config over the corrupted manifest, 16 rows per file so there are several files."""
    out_dir = tmp_path_factory.mktemp("features")
    config = load_config(
        EmbedConfig, TINY_CONFIG, manifest=str(manifest), out_dir=str(out_dir), rows_per_file=16
    )
    return config, run_embed(config)


@pytest.mark.ray
@pytest.mark.slow
def test_one_row_per_manifest_row_and_corrupt_clips_become_error_rows(manifest, first_run):
    config, summary = first_run
    rows = read_manifest(manifest)
    table = read_features(config.out_dir)
    assert sorted(table["clip_id"].to_pylist()) == sorted(rows["clip_id"].to_pylist())
    assert summary.inputs == summary.written == summary.rows_in_output == rows.num_rows == 48
    assert (
        summary.skipped == 0
        and summary.errors == 3
        and summary.files_written == len(feature_files(config.out_dir))
    )
    assert summary.error_types == {name: 1 for name in CORRUPTED.values()}

    errors = dict(zip(table["clip_id"].to_pylist(), table["error"].to_pylist(), strict=True))
    for row, error_type in CORRUPTED.items():
        clip_id, video_path = rows["clip_id"][row].as_py(), rows["video_path"][row].as_py()
        assert errors.pop(clip_id).startswith(f"{error_type}: {video_path}: ")
    assert set(errors.values()) == {None}

    by_id = table.sort_by("clip_id")
    expected = rows.select(["clip_id", "video_path", "split", "lat", "lon"]).sort_by("clip_id")
    assert by_id.select(expected.column_names).equals(expected)
    assert (config.out_dir / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.ray
def test_features_have_the_documented_shapes_and_invariants(first_run):
    config, _ = first_run
    table = embedded_rows(read_features(config.out_dir))
    assert table.num_rows == 45
    for row in table.to_pylist():
        per_frame = np.asarray(row["visual_per_frame"], np.float32)
        assert per_frame.shape == (config.decode.num_frames, 512)
        np.testing.assert_allclose(row["visual_mean"], per_frame.mean(axis=0), atol=1e-5)
        embedding = np.asarray(row["audio_embedding"])
        projection = np.asarray(row["audio_projection"])
        assert embedding.shape == projection.shape == (1, 512), "3 s of audio is one 10 s window"
        np.testing.assert_allclose(
            embedding, projection / np.linalg.norm(projection, axis=1, keepdims=True), atol=1e-6
        )
        np.testing.assert_allclose(np.linalg.norm(row["audio_mean"]), 1.0, atol=1e-6)
        steps = [atom["step"] for atom in row["atoms"]]
        assert 0 < len(steps) <= NUM_ATOMS and steps == sorted(set(steps))
        assert all(atom["window"] == 0 and atom["strength"] > 0 for atom in row["atoms"])
        class_strength = np.zeros(527)
        for atom in row["atoms"]:
            class_strength[class_by_mid(atom["class_mid"]).index] += atom["strength"]
        np.testing.assert_allclose(row["atom_class_strength"], class_strength, atol=1e-5)
        assert set(row["models"]) == {"visual", "audio", "icsae"}
        assert all(
            name.startswith("tiny@") and len(name) == len("tiny@") + 12 for name in row["models"].values()
        )
        assert all(seconds > 0 for seconds in row["timings"].values())
    assert len(set(table["models"].to_pylist()[0].values())) == 3


@pytest.mark.ray
def test_ray_job_matches_the_plain_loop(manifest, first_run):
    config, _ = first_run
    rows = read_manifest(manifest).slice(0, 6)  # the three corrupted clips and three good ones
    plain = embed_in_process(rows, config)
    assert plain["clip_id"].to_pylist() == rows["clip_id"].to_pylist()
    assert plain["error"].null_count == 3
    table = read_features(config.out_dir)
    assert_same_rows(plain, table.filter(pc.is_in(table["clip_id"], rows["clip_id"])))


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_skips_done_clips_and_re_embeds_only_a_lost_file(first_run):
    config, _ = first_run
    files = feature_files(config.out_dir)
    assert len(files) >= 3
    contents = {file.name: file.read_bytes() for file in files}

    again = run_embed(config)
    assert (again.written, again.skipped, again.files_written, again.rows_in_output) == (0, 48, 0, 48)
    assert {file.name: file.read_bytes() for file in feature_files(config.out_dir)} == contents

    lost = files[1]
    lost_rows = read_features(lost)
    lost.unlink()
    refill = run_embed(config)
    assert refill.written == lost_rows.num_rows and refill.skipped == 48 - lost_rows.num_rows
    assert refill.rows_in_output == 48
    for name, data in contents.items():
        if name != lost.name:
            assert (config.out_dir / name).read_bytes() == data, "a finished file was rewritten"
    table = read_features(config.out_dir)
    assert_same_rows(table.filter(pc.is_in(table["clip_id"], lost_rows["clip_id"])), lost_rows)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_jobs_embed(manifest, first_run, ray_head, tmp_path):
    config, _ = first_run
    rows = read_manifest(manifest).take([0, 3, 4, 5])  # row 0 is the truncated clip
    small = write_manifest(rows, tmp_path / "manifest.parquet")
    out_dir = tmp_path / "features"
    entrypoint = ["python", "jobs/embed.py", "--config", str(TINY_CONFIG.relative_to(ROOT))]
    entrypoint += ["--set", f"manifest={small}", "--set", f"out_dir={out_dir}"]
    command = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_head]
    command += ["--working-dir", ".", "--", *entrypoint]
    # The head answers HTTP before its job agent is up; it then refuses with "No available agent".
    for _ in range(30):
        submitted = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submitted.stderr + submitted.stdout:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "embed: 4 clips (1 errors: TruncatedFileError 1)" in submitted.stdout
    in_process = read_features(config.out_dir)
    assert_same_rows(
        read_features(out_dir), in_process.filter(pc.is_in(in_process["clip_id"], rows["clip_id"]))
    )


def test_featurizers_give_each_clip_the_same_features_alone_or_batched(featurizers):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(num_frames, 48, 64, 3), dtype=np.uint8) for num_frames in (3, 5)]
    waveforms = [rng.normal(scale=0.1, size=seconds * 48_000).astype(np.float32) for seconds in (25, 4)]
    visual = featurizers.visual(frames)
    audio = featurizers.audio(waveforms)
    assert [row["visual_per_frame"].shape for row in visual] == [(3, 512), (5, 512)]
    assert [row["audio_embedding"].shape for row in audio] == [(3, 512), (1, 512)], "10 s windows every 10 s"
    for batched, clip_frames in zip(visual, frames, strict=True):
        alone = featurizers.visual([clip_frames])[0]
        np.testing.assert_allclose(batched["visual_per_frame"], alone["visual_per_frame"], atol=1e-4)
    for batched, waveform in zip(audio, waveforms, strict=True):
        alone = featurizers.audio([waveform])[0]
        np.testing.assert_allclose(batched["audio_projection"], alone["audio_projection"], atol=1e-4)
    # Window 1 of the 25 s clip is its seconds 10-20, whatever else is in the batch.
    window = featurizers.audio([waveforms[0][10 * 48_000 : 20 * 48_000]])[0]
    np.testing.assert_allclose(audio[0]["audio_projection"][1], window["audio_projection"][0], atol=1e-4)

    atoms = featurizers.atoms([row["audio_projection"] for row in audio])
    for row, clip_audio in zip(atoms, audio, strict=True):
        num_windows = len(clip_audio["audio_projection"])
        assert {atom["window"] for atom in row["atoms"]} <= set(range(num_windows))
        assert len(row["atoms"]) <= NUM_ATOMS * num_windows
        np.testing.assert_allclose(
            row["atom_class_strength"].sum(), sum(a["strength"] for a in row["atoms"]), rtol=1e-5
        )
    assert (
        featurizers.visual([])
        == featurizers.audio([])
        == featurizers.atoms([])
        == featurizers.embed([])
        == []
    )


def test_audio_featurizer_refuses_empty_audio(featurizers):
    with pytest.raises(ValueError, match="no audio samples; decode with require_audio: true"):
        featurizers.audio([np.zeros(0, np.float32)])


def test_configs_load_and_audio_is_required():
    h100 = load_config(EmbedConfig, ROOT / "configs" / "embed" / "h100.yaml")
    assert h100.visual_stage.num_gpus == h100.audio_stage.num_gpus == 1 and h100.decode_stage.num_gpus == 0
    assert Path(h100.manifest).is_absolute() and Path(h100.out_dir).is_absolute()
    with pytest.raises(ConfigError, match="require_audio is false"):
        load_config(EmbedConfig, TINY_CONFIG, **{"decode.require_audio": False})
    with pytest.raises(ConfigError, match=r"unknown config key visual_stage\.gpus"):
        load_config(EmbedConfig, TINY_CONFIG, **{"visual_stage.gpus": 1})
    assert load_config(EmbedConfig, TINY_CONFIG).decode == DecodeConfig()


def assert_same_rows(ours: pa.Table, theirs: pa.Table) -> None:
    """Same clips, labels, errors and models; features equal to float tolerance."""
    ours, theirs = ours.sort_by("clip_id"), theirs.sort_by("clip_id")
    exact = ["clip_id", "video_path", "split", "lat", "lon", "error", "models"]
    assert ours.select(exact).equals(theirs.select(exact))
    for our_row, their_row in zip(ours.to_pylist(), theirs.to_pylist(), strict=True):
        if our_row["error"] is not None:
            continue
        for name in VECTOR_COLUMNS:
            np.testing.assert_allclose(our_row[name], their_row[name], atol=1e-4, err_msg=name)
        assert [atom["kernel"] for atom in our_row["atoms"]] == [
            atom["kernel"] for atom in their_row["atoms"]
        ]
