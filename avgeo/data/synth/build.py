"""Build avg-synth: plan every clip, render the missing ones on worker processes, write the manifest.

Planning (locations, scenes) is cheap and runs in the caller; rendering (frames, soundtrack, H.264 + AAC)
is where the time goes and runs on `num_workers` processes. Every clip is a function of (seed, location,
clip number) alone, so the order in which workers finish does not matter, and a re-run on the same
folder renders only what is missing: clips are written under a temporary name and renamed when complete,
and a clip already there is kept if its header shows both streams at full length.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from avgeo.config import ConfigError, config_to_dict
from avgeo.data.audioset import class_by_name
from avgeo.data.errors import DecodeError
from avgeo.data.manifest import write_manifest
from avgeo.data.mp4 import probe, write_clip
from avgeo.data.soundbank import SoundBank
from avgeo.data.synth.audio import mix_soundscape
from avgeo.data.synth.config import SynthConfig
from avgeo.data.synth.scene import ClipScene, heard_class_names, sample_scene
from avgeo.data.synth.video import render_frames
from avgeo.data.synth.world import sample_locations
from avgeo.geo.gazetteer import Gazetteer

MANIFEST_NAME = "manifest.parquet"
"""The manifest's file name inside the output folder."""

BUILD_RECORD_NAME = "avg-synth.yaml"
"""Seed and config a folder was built with; a re-run must match it to resume."""

# Settings that change how fast a build runs, not what it produces: a resume may change them.
_SPEED_SETTINGS = ("num_workers", "chunk_size")


def run_synth(config: SynthConfig, out_dir: str | Path, seed: int = 0) -> Path:
    """Generate the benchmark into `out_dir` (mp4s under clips/, the manifest); returns the manifest path.

    Deterministic in `seed`; resumable: re-running on the same folder renders only missing clips.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}: expected an int >= 0")
    # Re-validate: callers (the CLI) may have set fields after the config was built.
    config = dataclasses.replace(config)
    out_dir = Path(out_dir)
    _claim(out_dir, config, seed)
    bank = SoundBank.procedural(sample_rate=config.sample_rate)
    _check_bank(bank)
    places = Gazetteer.load(config.min_population).cities(config.min_population)
    locations = sample_locations(places, config, seed)
    scenes = [
        sample_scene(location, clip_index, config.clip_duration_s, config.audio, seed)
        for location in locations
        for clip_index in range(config.clips_per_location)
    ]
    started = time.perf_counter()
    rendered = _render_missing(scenes, config, bank, out_dir)
    elapsed_s = time.perf_counter() - started
    manifest_path = write_manifest([manifest_row(scene, config) for scene in scenes], out_dir / MANIFEST_NAME)
    print(
        f"avg-synth: {len(scenes)} clips of {len(locations)} locations in {out_dir} ({rendered} rendered "
        f"at {rendered / max(elapsed_s, 1e-9):.1f} clips/s, {len(scenes) - rendered} kept)"
    )
    return manifest_path


def clip_path(scene: ClipScene) -> str:
    """Where a clip lives, relative to the output folder."""
    return f"clips/{scene.location.location_id}/{scene.clip_id}.mp4"


def manifest_row(scene: ClipScene, config: SynthConfig) -> dict[str, Any]:
    """The clip's manifest row: the AVG columns, then its ground-truth story (region, look, sounds)."""
    location = scene.location
    landscape = location.landscape
    lat_deg, lon_deg = location.place.latlon_deg
    return {
        "clip_id": scene.clip_id,
        "video_path": clip_path(scene),
        "lat": lat_deg,
        "lon": lon_deg,
        "location_id": location.location_id,
        "place": location.place.name,
        "country": location.place.country,
        "continent": location.place.continent,
        "split": location.split,
        "duration_s": config.clip_duration_s,
        "region": location.region.name,
        "climate": landscape.climate,
        "urbanity": landscape.urbanity,
        "coast": landscape.coast,
        "mountains": landscape.mountains,
        "facade": landscape.facade,
        "time_of_day_h": scene.time_of_day_h,
        "weather": scene.weather,
        "camera_pan": scene.pan_end - scene.pan_start,
        "camera_zoom_start": scene.zoom_start,
        "camera_zoom_end": scene.zoom_end,
        "source_mids": [s.audioset_class.mid for s in scene.sources],
        "source_names": [s.audioset_class.name for s in scene.sources],
        "source_roles": [s.role for s in scene.sources],
        "source_gains_db": [s.gain_db for s in scene.sources],
        "source_onsets_s": [s.onset_s for s in scene.sources],
        "source_durations_s": [s.duration_s for s in scene.sources],
    }


def _claim(out_dir: Path, config: SynthConfig, seed: int) -> None:
    """Record the seed and config in `out_dir`, or check that a previous build there used the same."""
    record = {
        "seed": seed,
        "config": {k: v for k, v in config_to_dict(config).items() if k not in _SPEED_SETTINGS},
    }
    # Through YAML and back, so tuples compare equal to the lists a stored record holds.
    record = yaml.safe_load(yaml.safe_dump(record))
    record_path = out_dir / BUILD_RECORD_NAME
    if record_path.is_file():
        previous = yaml.safe_load(record_path.read_text())
        if previous != record:
            differ = sorted(
                k
                for k in {**previous["config"], **record["config"]}
                if previous["config"].get(k) != record["config"].get(k)
            )
            if previous["seed"] != record["seed"]:
                differ.insert(0, "seed")
            raise ConfigError(
                f"{out_dir} holds avg-synth built with another {', '.join(differ)}; "
                "use a new output folder, or delete this one to rebuild"
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path.write_text(yaml.safe_dump(record, sort_keys=False))


def _check_bank(bank: SoundBank) -> None:
    missing = [name for name in heard_class_names() if not bank.has(class_by_name(name).mid)]
    if missing:
        raise ConfigError(
            f"the sound bank cannot render {', '.join(map(repr, missing))}; avg-synth's palettes "
            "(avgeo/data/synth/regions.py, scene.py) must only name classes the bank has"
        )


# The worker's share of the job, set once per process by _init_worker.
_worker: dict[str, Any] = {}


def _init_worker(config: SynthConfig, bank: SoundBank, out_dir: Path) -> None:
    _worker.update(config=config, bank=bank, out_dir=out_dir)


def _render_missing(scenes: list[ClipScene], config: SynthConfig, bank: SoundBank, out_dir: Path) -> int:
    """Render every clip not already complete in `out_dir`; returns how many were rendered."""
    init_args = (config, bank, out_dir)
    progress = tqdm(total=len(scenes), desc="avg-synth", unit="clip", smoothing=0.05)
    rendered = 0
    if config.num_workers == 1:
        _init_worker(*init_args)
        results = map(_ensure_clip, scenes)
        for was_rendered in results:
            rendered += was_rendered
            progress.update()
    else:
        # Fork, not spawn: workers start at once with the modules already imported (a spawned worker
        # would spend seconds importing torch); they never call torch, so its threads are no hazard.
        context = multiprocessing.get_context("fork")
        with context.Pool(config.num_workers, initializer=_init_worker, initargs=init_args) as pool:
            for was_rendered in pool.imap_unordered(_ensure_clip, scenes, chunksize=config.chunk_size):
                rendered += was_rendered
                progress.update()
    progress.close()
    return rendered


def _ensure_clip(scene: ClipScene) -> bool:
    """Render `scene` unless a complete file is already there; True if it was rendered."""
    config: SynthConfig = _worker["config"]
    path = _worker["out_dir"] / clip_path(scene)
    if _is_complete(path, config.clip_duration_s):
        return False
    frames = render_frames(scene, config.frame_size_px, config.fps, config.clip_duration_s, config.visual)
    audio = mix_soundscape(
        scene, _worker["bank"], config.clip_duration_s, config.sample_rate, config.audio.noise_floor_db
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.mp4")
    write_clip(partial, frames, config.fps, audio, sample_rate=config.sample_rate, crf=config.crf)
    os.replace(partial, path)
    return True


def _is_complete(path: Path, duration_s: float) -> bool:
    """A clip from an earlier run: both streams present and at least 90% of the expected length."""
    if not path.is_file():
        return False
    try:
        info = probe(path)
    except DecodeError:
        return False
    streams = (info["video"], info["audio"])
    return all(s is not None and (s["duration_s"] or 0.0) >= 0.9 * duration_s for s in streams)
