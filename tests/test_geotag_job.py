"""The geotag job on real avg-synth clips and deliberately broken files (Ray Data, in process and killed
half-way in a subprocess), its inputs (folder, glob, manifest, URI) and its config doors."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from avgeo.config import ConfigError, load_config
from avgeo.data.manifest import read_manifest
from avgeo.data.mp4 import write_clip
from avgeo.data.parquet_files import parquet_files
from avgeo.data.predictions import PREDICTIONS_SCHEMA, bucket_folder, read_predictions
from avgeo.data.synth import run_synth, synth_preset
from avgeo.data.video_inputs import VideoInputError, fetched, list_videos
from avgeo.distributed.geotag import GeotagConfig, StageFailure, isolated, result_row, run_geotag
from avgeo.geo.sphere import EARTH_RADIUS_KM, SPHERE_AREA_SR
from avgeo.pipeline import Geolocator

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "geotag" / "tiny.yaml"
SMALL = {
    "geolocator.mllm": {"model": "tiny", "max_new_tokens": 16, "temperature": 0.0},
    "geolocator.num_samples": 64,
    "geolocator.flow_num_steps": 4,
    "geolocator.heatmap_resolution_deg": 30.0,
    "rows_per_file": 3,
    "num_buckets": 3,
}
"""Small enough for 2 shared cores; every stage still runs in full."""
NUM_GOOD = 4
BROKEN = {
    "zero_bytes.mp4": "EmptyClipError",
    "text.mp4": "NotAVideoError",
    "audio_only.mp4": "NoVideoStreamError",
    "video_only.mp4": "NoAudioStreamError",
    "truncated.mp4": "TruncatedFileError",
}
"""Broken input file -> the error type its row names."""
MODEL_VERSION = re.compile(r"^tiny@[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder of NUM_GOOD avg-synth ci clips (3 s) named good_<i>.mp4, the BROKEN files, and a notes
    file and a hidden clip that a folder INPUT leaves out."""
    synth_dir = tmp_path_factory.mktemp("avg-synth")
    config = dataclasses.replace(synth_preset("ci"), n_locations=6, clips_per_location=1)
    clips = read_manifest(run_synth(config, synth_dir, seed=0))["video_path"].to_pylist()
    folder = tmp_path_factory.mktemp("videos")
    for index, clip in enumerate(sorted(clips)[:NUM_GOOD]):
        shutil.copy(clip, folder / f"good_{index}.mp4")
    (folder / "zero_bytes.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    data = (folder / "good_0.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    frames = np.full((12, 64, 64, 3), 128, np.uint8)
    write_clip(folder / "video_only.mp4", frames, 12.0, None)
    write_audio_only(folder / "audio_only.mp4")
    (folder / "notes.txt").write_text("not an input\n")
    shutil.copy(folder / "good_1.mp4", folder / ".hidden.mp4")
    return folder


@pytest.fixture(scope="module")
def first_run(videos, ray_local, tmp_path_factory):
    """The folder geotagged with heatmaps, 3 rows per write over 3 buckets."""
    out_dir = tmp_path_factory.mktemp("predictions")
    config = load_config(
        GeotagConfig, TINY_CONFIG, input=str(videos), out_dir=str(out_dir), heatmaps=True, **SMALL
    )
    return config, run_geotag(config)


@pytest.mark.ray
def test_one_row_per_input_and_broken_files_become_named_errors(videos, first_run):
    config, summary = first_run
    table = read_predictions(config.out_dir)
    expected_paths = sorted(str(videos / name) for name in [*BROKEN, *(f"good_{i}.mp4" for i in range(4))])
    assert sorted(table["video_path"].to_pylist()) == expected_paths
    assert table["clip_id"].to_pylist() == table["video_path"].to_pylist(), "a folder's ids are its paths"
    assert summary.inputs == summary.written == summary.rows_in_output == len(expected_paths)
    assert summary.skipped == 0 and summary.errors == len(BROKEN)
    assert summary.error_types == {name: 1 for name in BROKEN.values()}
    assert summary.files_written == len(parquet_files(config.out_dir)) >= 3

    errors = dict(zip(table["video_path"].to_pylist(), table["error"].to_pylist(), strict=True))
    for name, error_type in BROKEN.items():
        assert errors.pop(str(videos / name)).startswith(f"{error_type}: {videos / name}: ")
    assert set(errors.values()) == {None}
    assert (Path(config.out_dir) / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.ray
def test_files_are_partitioned_by_clip_bucket_and_follow_the_schema(first_run):
    config, _ = first_run
    for file in parquet_files(config.out_dir):
        assert pq.read_schema(file).remove_metadata().equals(PREDICTIONS_SCHEMA)
        folder = file.parent.name
        clip_ids = pq.read_table(file, columns=["clip_id"])["clip_id"].to_pylist()
        assert {bucket_folder(clip_id, config.num_buckets) for clip_id in clip_ids} == {folder}

    table = read_predictions(config.out_dir)
    good = table.filter(pc.is_null(table["error"])).to_pylist()
    assert len(good) == NUM_GOOD
    for row in good:
        assert -90 <= row["lat"] <= 90 and -180 <= row["lon"] <= 180
        assert 1 <= len(row["modes"]) <= config.geolocator.top_k
        # The modes start at the densest sample, which is also the point estimate.
        assert (row["modes"][0]["lat"], row["modes"][0]["lon"]) == (row["lat"], row["lon"])
        assert sum(mode["probability"] for mode in row["modes"]) <= 1 + 1e-9
        levels = [region["level"] for region in row["credible_regions"]]
        areas = [region["area_km2"] for region in row["credible_regions"]]
        assert levels == list(config.geolocator.credible_levels)
        assert 0 < areas[0] < areas[1] < SPHERE_AREA_SR * EARTH_RADIUS_KM**2
        strengths = [atom["strength"] for atom in row["atoms"]]
        assert strengths == sorted(strengths, reverse=True) and min(strengths) > 0
        assert all(MODEL_VERSION.match(version) for version in row["models"].values())
        assert all(seconds > 0 for seconds in row["timings"].values())
        png = Path(config.out_dir) / row["heatmap_path"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in table.filter(pc.is_valid(table["error"])).to_pylist():
        assert row["lat"] is row["modes"] is row["models"] is row["heatmap_path"] is None
        assert row["timings"]["decode_s"] >= 0 and row["timings"]["perceive_s"] is None


@pytest.mark.ray
def test_a_good_clip_equals_the_in_process_geolocator(videos, first_run):
    config, _ = first_run
    geolocator = Geolocator.from_config(config.geolocator)
    result = geolocator.geolocate(videos / "good_2.mp4")
    expected = result_row(result.perception, result.reasoning, result.prediction, result.models)
    table = read_predictions(config.out_dir)
    (row,) = table.filter(pc.equal(table["video_path"], str(videos / "good_2.mp4"))).to_pylist()
    for name in ("completion", "trace", "parse_error", "models", "answer_lat", "answer_lon"):
        assert row[name] == expected[name], name
    assert [atom["kernel"] for atom in row["atoms"]] == [atom["kernel"] for atom in expected["atoms"]]
    np.testing.assert_allclose([row["lat"], row["lon"]], [expected["lat"], expected["lon"]], atol=1e-2)
    np.testing.assert_allclose(row["log_density"], expected["log_density"], atol=1e-3)
    np.testing.assert_allclose(
        [r["area_km2"] for r in row["credible_regions"]],
        [r["area_km2"] for r in expected["credible_regions"]],
        rtol=1e-3,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_killed_half_way_resumes_with_one_row_per_input(videos, first_run, ray_local, tmp_path):
    config, _ = first_run
    out_dir = tmp_path / "killed"
    pattern = str(videos / "*.mp4")  # a glob: like pathlib's, `*` also matches the hidden clip
    expected_ids = list_videos(pattern)["clip_id"].to_pylist()
    assert len(expected_ids) == NUM_GOOD + 1 + len(BROKEN)
    command = [sys.executable, "jobs/geotag.py", "--config", str(TINY_CONFIG)]
    command += ["--set", f"input={pattern}", "--set", f"out_dir={out_dir}", "--set", "rows_per_file=1"]
    # One clip per batch and per file, so files appear one by one and the kill lands between them.
    for stage in ("decode", "perception", "reasoning", "prediction"):
        command += ["--set", f"{stage}_stage.batch_size=1"]
    for key, value in SMALL.items():
        if key != "rows_per_file":
            command += ["--set", f"{key}={value}"]
    # Its own local Ray (not this session's), in its own process group so the kill reaches all of it.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    log = tmp_path / "job.log"
    with log.open("w") as log_file:
        job = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300  # a cold Ray and five actors loading models, on shared cores
    while not parquet_files(out_dir):
        if job.poll() is not None or time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"the job ended or stalled before writing:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    os.killpg(job.pid, signal.SIGKILL)
    for process in processes:
        if process.is_running():
            process.kill()
    job.wait(timeout=30)
    psutil.wait_procs(processes, timeout=30)

    done = read_predictions(out_dir, columns=["clip_id"]).num_rows
    total = len(expected_ids)
    assert 0 < done < total, "the kill must land half-way"

    resumed = run_geotag(dataclasses.replace(config, input=pattern, out_dir=out_dir, heatmaps=False))
    assert (resumed.skipped, resumed.written, resumed.rows_in_output) == (done, total - done, total)
    table = read_predictions(out_dir)  # validates: one row per clip id
    assert sorted(table["clip_id"].to_pylist()) == sorted(expected_ids)
    assert table["error"].null_count == NUM_GOOD + 1


@pytest.mark.ray
def test_a_manifest_gives_the_folders_rows(videos, first_run, tmp_path):
    config, _ = first_run
    by_path = {row["video_path"]: row for row in read_predictions(config.out_dir).to_pylist()}
    manifest = tmp_path / "clips" / "manifest.csv"
    manifest.parent.mkdir()
    for name in ("good_3.mp4", "truncated.mp4"):
        shutil.copy(videos / name, manifest.parent / name)
    pv.write_csv(pa.table({"clip_id": ["a", "b"], "video_path": ["good_3.mp4", "truncated.mp4"]}), manifest)
    listed = dataclasses.replace(config, input=str(manifest), out_dir=tmp_path / "out", heatmaps=False)
    assert run_geotag(listed).written == 2

    rows = {row["clip_id"]: row for row in read_predictions(tmp_path / "out").to_pylist()}
    assert rows["a"]["video_path"] == str(manifest.parent / "good_3.mp4"), "resolved against its folder"
    assert rows["b"]["error"].startswith(f"TruncatedFileError: {manifest.parent / 'truncated.mp4'}: ")
    theirs = by_path[str(videos / "good_3.mp4")]
    assert rows["a"]["completion"] == theirs["completion"] and rows["a"]["models"] == theirs["models"]
    assert math.isclose(rows["a"]["lat"], theirs["lat"], abs_tol=1e-2)
    assert rows["a"]["heatmap_path"] is None


def test_inputs_list_folders_globs_manifests_and_uris(videos, tmp_path):
    folder = list_videos(videos)
    assert folder["video_path"].to_pylist() == sorted(
        str(videos / name) for name in [*BROKEN, *(f"good_{i}.mp4" for i in range(NUM_GOOD))]
    ), "video suffixes only, hidden files left out"
    assert list_videos(f"file://{videos}")["video_path"].to_pylist() == [
        f"file://{path}" for path in folder["video_path"].to_pylist()
    ]
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(videos / "good_0.mp4", nested / "deep.mp4")
    shutil.copy(videos / "good_0.mp4", tmp_path / "top.mp4")
    assert list_videos(tmp_path / "**" / "*.mp4")["video_path"].to_pylist() == [
        str(nested / "deep.mp4"), str(tmp_path / "top.mp4")
    ]  # fmt: skip
    assert list_videos(tmp_path / "*.mp4")["video_path"].to_pylist() == [str(tmp_path / "top.mp4")]

    parquet = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"video_path": ["a/b/deep.mp4", "s3://bucket/x.mp4"], "split": ["t", "t"]}), parquet
    )
    listed = list_videos(parquet)
    assert listed["video_path"].to_pylist() == [str(nested / "deep.mp4"), "s3://bucket/x.mp4"]
    assert listed["clip_id"].to_pylist() == listed["video_path"].to_pylist()

    pq.write_table(pa.table({"path": ["x.mp4"]}), tmp_path / "bad.parquet")
    with pytest.raises(VideoInputError, match="no video_path column"):
        list_videos(tmp_path / "bad.parquet")
    pq.write_table(
        pa.table({"clip_id": ["x", "x"], "video_path": ["x.mp4", "y.mp4"]}), tmp_path / "d.parquet"
    )
    with pytest.raises(VideoInputError, match="clip_id must be set and unique"):
        list_videos(tmp_path / "d.parquet")
    with pytest.raises(VideoInputError, match="no videos found"):
        list_videos(tmp_path / "*.mkv")
    with pytest.raises(VideoInputError, match="not a folder, a glob or a manifest"):
        list_videos(tmp_path / "missing")


def test_a_video_on_another_filesystem_is_fetched_to_a_temporary_copy(videos):
    remote = pafs.SubTreeFileSystem(str(videos), pafs.LocalFileSystem())
    with fetched(remote, "good_1.mp4") as local_path:
        assert local_path.endswith(".mp4") and local_path != str(videos / "good_1.mp4")
        assert Path(local_path).read_bytes() == (videos / "good_1.mp4").read_bytes()
    assert not Path(local_path).exists()
    with pytest.raises(FileNotFoundError), fetched(remote, "missing.mp4"):
        pass


def test_a_failing_clip_fails_alone_and_its_batch_mates_keep_their_results():
    calls = []

    def reciprocals(values):
        calls.append(list(values))
        return [1 / value for value in values]

    assert isolated(reciprocals, [1, 0, 4]) == [
        1.0,
        StageFailure("ZeroDivisionError: division by zero"),
        0.25,
    ]
    assert isinstance(isolated(reciprocals, [0])[0], StageFailure)
    assert calls[:4] == [[1, 0, 4], [1], [0], [4]], "the batch first, then each clip alone"
    assert isolated(reciprocals, [2, 5]) == [0.5, 0.2] and calls[-1] == [2, 5]


def test_a_bad_config_is_refused_naming_the_key(videos, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key perception_stage\.gpus"):
        load_config(GeotagConfig, TINY_CONFIG, **{"perception_stage.gpus": 1})
    with pytest.raises(ConfigError, match="require_audio is false"):
        load_config(GeotagConfig, TINY_CONFIG, **{"geolocator.decode.require_audio": False})
    h100 = load_config(GeotagConfig, ROOT / "configs" / "geotag" / "h100.yaml")
    assert h100.reasoning_stage.num_gpus == 1 and h100.decode_stage.num_gpus == 0
    gpus = sum(
        s.num_gpus * s.pool_size for s in (h100.perception_stage, h100.reasoning_stage, h100.prediction_stage)
    )
    assert gpus <= 8, "one 8-GPU node"
    done = subprocess.run(
        [sys.executable, "-m", "avgeo.cli", "geotag", str(videos), "--out", str(tmp_path), "--set",
         "reasoning_stage.pool=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown config key reasoning_stage.pool" in done.stderr and "Traceback" not in done.stderr


def write_audio_only(path: Path) -> Path:
    """An mp4 holding one second of AAC audio and no video stream."""
    sample_rate = 48_000
    tone = np.sin(2 * np.pi * 440 * np.arange(sample_rate) / sample_rate).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
