"""avg-synth: the ci preset builds a valid AVG benchmark, and the generative model keeps its promises."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.audioset import class_by_name
from avgeo.data.decode import DecodeConfig, decode_clip
from avgeo.data.manifest import read_manifest
from avgeo.data.soundbank import REFERENCE_RMS, SoundBank
from avgeo.data.synth import SynthConfig, run_synth, synth_preset
from avgeo.data.synth.audio import PEAK_LIMIT, mix_soundscape
from avgeo.data.synth.build import BUILD_RECORD_NAME, manifest_row
from avgeo.data.synth.oracle import story_oracle
from avgeo.data.synth.regions import REGIONS
from avgeo.data.synth.scene import Source, heard_class_names, sample_scene
from avgeo.data.synth.video import render_frames
from avgeo.data.synth.world import (
    COASTAL_KM,
    INHABITED_CONTINENTS,
    coast_distance_km,
    sample_locations,
)
from avgeo.geo.gazetteer import Gazetteer
from avgeo.geo.sphere import great_circle_km

CI = synth_preset("ci")
FULL = synth_preset("full")


@pytest.fixture(scope="module")
def places():
    return Gazetteer.load(FULL.min_population).cities(FULL.min_population)


@pytest.fixture(scope="module")
def full_locations(places):
    return sample_locations(places, FULL, seed=0)


@pytest.fixture(scope="module")
def ci_build(tmp_path_factory):
    """Built by the command users run: `avgeo synth --preset ci --out DIR --seed 0`."""
    out_dir = tmp_path_factory.mktemp("avg-synth-ci")
    avgeo_cli = Path(sys.executable).with_name("avgeo")
    done = subprocess.run(
        [str(avgeo_cli), "synth", "--preset", "ci", "--out", str(out_dir), "--seed", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    manifest_path = out_dir / "manifest.parquet"
    assert f"manifest: {manifest_path}" in done.stdout
    return out_dir, manifest_path


def _decode_with_pyav(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(T, H, W, 3) frames, (S,) mono audio and the codec names, read with PyAV alone."""
    frames, audio = [], []
    with av.open(path) as container:
        codecs = {
            "video": container.streams.video[0].codec_context.name,
            "audio": container.streams.audio[0].codec_context.name,
        }
        for packet in container.demux():
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    audio.append(frame.to_ndarray()[0])
    return np.stack(frames), np.concatenate(audio), codecs


def test_ci_build_writes_a_valid_avg_manifest(ci_build):
    out_dir, manifest_path = ci_build
    table = read_manifest(manifest_path)
    assert table.num_rows == CI.n_locations * CI.clips_per_location == 48
    rows = table.to_pylist()
    assert all(Path(row["video_path"]).is_file() for row in rows)
    assert {row["duration_s"] for row in rows} == {CI.clip_duration_s}
    for row in rows:
        # The story: parallel lists, one entry per audible source, loudest first.
        n_sources = len(row["source_mids"])
        assert (
            n_sources == len(row["source_names"]) == len(row["source_gains_db"]) == len(row["source_roles"])
        )
        assert row["source_gains_db"] == sorted(row["source_gains_db"], reverse=True)
        assert [class_by_name(name).mid for name in row["source_names"]] == row["source_mids"]
        assert row["region"] in {region.name for region in REGIONS}
    assert not list(out_dir.rglob("*.partial.mp4"))


def test_every_ci_clip_decodes_with_both_streams_through_avgeo_and_pyav(ci_build):
    table = read_manifest(ci_build[1])
    n_frames = round(CI.clip_duration_s * CI.fps)
    n_samples = round(CI.clip_duration_s * CI.sample_rate)
    for path in table["video_path"].to_pylist():
        clip = decode_clip(path, DecodeConfig(num_frames=4, frame_size=(CI.frame_size_px, CI.frame_size_px)))
        assert clip.frames.shape == (4, CI.frame_size_px, CI.frame_size_px, 3)
        assert abs(len(clip.audio) - n_samples) <= 1024  # at most one AAC frame of padding
        frames, audio, codecs = _decode_with_pyav(path)
        assert codecs == {"video": "h264", "audio": "aac"}
        assert frames.shape == (n_frames, CI.frame_size_px, CI.frame_size_px, 3)
        assert abs(len(audio) - n_samples) <= 1024
        # A soundscape, not silence: at least the noise floor and one source at -18 dB or louder.
        assert np.sqrt(np.mean(audio**2)) > REFERENCE_RMS * 10 ** (-20 / 20)
        assert frames.std() > 5  # a scene, not a flat colour


def test_same_seed_gives_the_same_benchmark_with_any_number_of_workers(ci_build, tmp_path):
    out_dir, manifest_path = ci_build
    serial_manifest = run_synth(dataclasses.replace(CI, num_workers=1), tmp_path, seed=0)
    assert pq.read_table(serial_manifest).equals(pq.read_table(manifest_path))
    for clip in ("clips/loc0000/loc0000_c00.mp4", "clips/loc0017/loc0017_c01.mp4"):
        parallel_frames, parallel_audio, _ = _decode_with_pyav(str(out_dir / clip))
        serial_frames, serial_audio, _ = _decode_with_pyav(str(tmp_path / clip))
        np.testing.assert_array_equal(parallel_frames, serial_frames)
        np.testing.assert_array_equal(parallel_audio, serial_audio)


def test_another_seed_gives_other_locations_and_other_clips(places):
    first, second = (sample_locations(places, CI, seed) for seed in (0, 1))
    assert {loc.place for loc in first} != {loc.place for loc in second}
    scenes = [sample_scene(first[0], 0, CI.clip_duration_s, CI.audio, seed) for seed in (0, 1)]
    assert scenes[0].render_seed != scenes[1].render_seed
    frames = [render_frames(scene, 32, 2, 1.0, CI.visual) for scene in scenes]
    assert not np.array_equal(*frames)


def test_resume_renders_only_missing_or_broken_clips(ci_build, tmp_path, capsys):
    out_dir, _ = ci_build
    resumed = tmp_path / "resumed"
    shutil.copytree(out_dir, resumed)
    missing = resumed / "clips/loc0003/loc0003_c01.mp4"
    truncated = resumed / "clips/loc0010/loc0010_c00.mp4"
    missing.unlink()
    truncated.write_bytes(truncated.read_bytes()[:2000])
    untouched = {path: path.stat().st_mtime_ns for path in resumed.rglob("*.mp4") if path != truncated}
    capsys.readouterr()
    run_synth(CI, resumed, seed=0)
    assert "(2 rendered" in capsys.readouterr().out
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in untouched.items())
    for path in (missing, truncated):
        original = out_dir / path.relative_to(resumed)
        np.testing.assert_array_equal(_decode_with_pyav(str(path))[1], _decode_with_pyav(str(original))[1])


def test_resume_refuses_a_folder_built_with_another_seed_or_config(ci_build, tmp_path):
    shutil.copy(ci_build[0] / BUILD_RECORD_NAME, tmp_path / BUILD_RECORD_NAME)
    with pytest.raises(ConfigError, match="seed"):
        run_synth(CI, tmp_path, seed=1)
    with pytest.raises(ConfigError, match="clip_duration_s"):
        run_synth(dataclasses.replace(CI, clip_duration_s=2.0), tmp_path, seed=0)
    # Speed settings do not change the output, so they may change on resume.
    assert load_config(SynthConfig, {"num_workers": 1}).num_workers == 1


def test_full_preset_has_avg_layout_and_covers_every_continent(full_locations):
    assert (FULL.n_locations, FULL.clips_per_location, FULL.clip_duration_s) == (1000, 20, 10.0)
    locations_per_split = {
        split: [loc for loc in full_locations if loc.split == split] for split in ("train", "val", "test")
    }
    clips_per_split = {
        split: len(locs) * FULL.clips_per_location for split, locs in locations_per_split.items()
    }
    assert clips_per_split == {"train": 12000, "val": 4000, "test": 4000}
    assert len({loc.location_id for loc in full_locations}) == 1000
    for locations in locations_per_split.values():
        assert {loc.place.continent for loc in locations} == set(INHABITED_CONTINENTS)
    assert all(loc.region.continent == loc.place.continent for loc in full_locations)
    latlon_deg = torch.tensor([loc.place.latlon_deg for loc in full_locations], dtype=torch.float64)
    dist_km = great_circle_km(latlon_deg[:, None], latlon_deg[None, :]) + torch.eye(len(full_locations)) * 1e9
    assert float(dist_km.min()) >= FULL.min_separation_km


def test_landscapes_follow_geography_when_noise_is_off(places):
    config = dataclasses.replace(FULL, visual=dataclasses.replace(FULL.visual, landscape_noise=0.0))
    locations = sample_locations(places, config, seed=3)
    latlon_deg = np.array([loc.place.latlon_deg for loc in locations])
    coast_km = coast_distance_km(latlon_deg)
    for location, km in zip(locations, coast_km, strict=True):
        landscape = location.landscape
        assert not landscape.coast or km <= COASTAL_KM
        assert abs(location.place.latlon_deg[0]) < 55 or landscape.climate == "cold"
        assert landscape.climate != "arid" or location.region.arid_share > 0
        assert landscape.facade in dict(location.region.facades)
    # The real coastline: Lisbon, Sydney and Rio are coastal, Madrid and Nairobi are not.
    assert (
        list(coast_distance_km(np.array([[38.72, -9.14], [-33.87, 151.21], [-22.91, -43.17]])) <= 50)
        == [True] * 3
    )
    assert list(coast_distance_km(np.array([[40.42, -3.70], [-1.29, 36.82]])) > 250) == [True] * 2


def test_scenes_draw_sounds_from_the_right_pools(full_locations):
    bank = SoundBank.procedural()
    assert all(bank.has(class_by_name(name).mid) for name in heard_class_names())
    audio = FULL.audio
    ranges = {
        "regional": audio.regional_gain_db,
        "confuser": audio.regional_gain_db,
        "landscape": audio.landscape_gain_db,
        "distractor": audio.distractor_gain_db,
    }
    scenes = [sample_scene(loc, k, 10.0, audio, seed=0) for loc in full_locations[::4] for k in range(4)]
    for scene in scenes:
        own_palette = {rule.name for rule in scene.location.region.palette}
        names = [source.audioset_class.name for source in scene.sources]
        assert len(names) == len(set(names))
        for source in scene.sources:
            low, high = ranges[source.role]
            assert low <= source.gain_db <= high
            assert source.onset_s >= 0 and source.onset_s + source.duration_s <= 10.0 + 1e-9
            assert source.role != "regional" or source.audioset_class.name in own_palette
            assert source.role != "confuser" or source.audioset_class.name not in own_palette
            assert source.role != "landscape" or source.duration_s == 10.0
        n_distractors = sum(source.role == "distractor" for source in scene.sources)
        assert audio.distractors_per_clip[0] <= n_distractors <= audio.distractors_per_clip[1]
    with_regional = [s for s in scenes if any(source.role == "regional" for source in s.sources)]
    # Informative sources are often not the loudest: what the IC-SAE's iterative subtraction is for.
    assert np.mean([s.sources[0].role != "regional" for s in with_regional]) > 0.5
    silent = dataclasses.replace(audio, regional_presence=0.0, confuser_prob=0.0)
    for scene in (sample_scene(loc, 0, 10.0, silent, seed=0) for loc in full_locations[:100]):
        assert {source.role for source in scene.sources} <= {"landscape", "distractor"}


def test_frames_depend_on_the_look_not_on_the_place(full_locations):
    location = full_locations[0]
    elsewhere = next(loc for loc in full_locations if loc.region.continent != location.region.continent)
    moved = dataclasses.replace(location, place=elsewhere.place, region=elsewhere.region)
    scene = sample_scene(location, 0, 2.0, FULL.audio, seed=0)
    frames = render_frames(scene, 64, 4, 2.0, FULL.visual)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(
        frames, render_frames(dataclasses.replace(scene, location=moved), 64, 4, 2.0, FULL.visual)
    )
    other_look = dataclasses.replace(
        location.landscape, climate="arid" if location.landscape.climate != "arid" else "cold"
    )
    relooked = dataclasses.replace(scene, location=dataclasses.replace(location, landscape=other_look))
    assert not np.array_equal(frames, render_frames(relooked, 64, 4, 2.0, FULL.visual))
    noon, midnight = (
        render_frames(
            dataclasses.replace(scene, time_of_day_h=hour, weather="clear"), 64, 4, 2.0, FULL.visual
        )
        for hour in (12.0, 0.5)
    )
    assert midnight.mean() < 0.5 * noon.mean()


def test_mixer_levels_follow_the_gains():
    bank = SoundBank.procedural()
    location = sample_locations(Gazetteer.load(CI.min_population).cities(CI.min_population), CI, seed=0)[0]
    scene = sample_scene(location, 0, 4.0, CI.audio, seed=0)
    for gain_db in (-12.0, -6.0):
        one_source = Source(class_by_name("Rain"), "landscape", gain_db, onset_s=0.0, duration_s=4.0)
        mix = mix_soundscape(dataclasses.replace(scene, sources=(one_source,)), bank, 4.0, 48000, -80.0)
        rms = float(np.sqrt(np.mean(mix[48000:-48000] ** 2)))  # away from the fades
        assert rms == pytest.approx(REFERENCE_RMS * 10 ** (gain_db / 20), rel=0.15)
    loud = [Source(class_by_name(name), "distractor", 20.0, 0.0, 4.0) for name in ("Crowd", "Speech")]
    mix = mix_soundscape(dataclasses.replace(scene, sources=tuple(loud)), bank, 4.0, 48000, -40.0)
    assert np.abs(mix).max() == pytest.approx(PEAK_LIMIT)


def test_neither_modality_alone_locates_as_well_as_both(full_locations):
    scenes = [sample_scene(loc, k, 10.0, FULL.audio, seed=0) for loc in full_locations for k in range(4)]
    report = story_oracle(_story_table([manifest_row(scene, FULL) for scene in scenes]))
    region_acc = {modality: scores["region_acc"] for modality, scores in report.items()}
    assert region_acc["chance"] < region_acc["seen"] < region_acc["both"]
    assert region_acc["heard"] < region_acc["both"] < 0.6
    assert report["both"]["median_km"] < report["heard"]["median_km"] < report["seen"]["median_km"]


def _story_table(rows):
    import pyarrow as pa

    return pa.Table.from_pylist(rows)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="n_locations"):
        load_config(SynthConfig, {"n_locations": 3})
    with pytest.raises(ConfigError, match="num_workers: 0"):
        load_config(SynthConfig, {"num_workers": 0})
    with pytest.raises(ConfigError, match="regional_gain_db"):
        load_config(SynthConfig, {"audio": {"regional_gain_db": [0.0, -5.0]}})
    with pytest.raises(ConfigError, match=r"unknown config key visual\.tint"):
        load_config(SynthConfig, {"visual": {"tint": 0.5}})
    with pytest.raises(ConfigError, match="ci, demo, full"):
        synth_preset("huge")
    with pytest.raises(ConfigError, match="seed"):
        run_synth(CI, "/nonexistent/never-written", seed=-1)
