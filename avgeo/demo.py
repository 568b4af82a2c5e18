"""`make demo`: the embedded default end to end, on the avg-synth `demo` preset.

Today it builds the benchmark, decodes every clip through `avgeo.data` and prints what the benchmark
holds and how much each modality's ground truth reveals (the story oracle). Each model stage joins here
as it lands (embed → MART → RFM → GRPO → geotag → tables).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pyarrow.compute as pc
from tqdm import tqdm

from avgeo.data.decode import DecodeConfig, decode_clip
from avgeo.data.errors import DecodeError
from avgeo.data.manifest import read_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.data.synth.oracle import story_oracle


def run_demo(out_dir: str | Path, seed: int = 0) -> None:
    """Build avg-synth `demo` under `out_dir`, decode it, and print the benchmark's make-up."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    manifest_path = run_synth(synth_preset("demo"), out_dir / "avg-synth", seed=seed)
    manifest = read_manifest(manifest_path)

    decode_started = time.perf_counter()
    failures = collections.Counter()
    for path in tqdm(manifest["video_path"].to_pylist(), desc="decode", unit="clip"):
        try:
            decode_clip(path, DecodeConfig(num_frames=8, frame_size=(224, 224)))
        except DecodeError as err:
            failures[type(err).__name__] += 1
    decode_s = time.perf_counter() - decode_started

    splits = collections.Counter(manifest["split"].to_pylist())
    test_rows = manifest.filter(pc.equal(manifest["split"], "test"))
    continents = collections.Counter(test_rows["continent"].to_pylist())
    print(f"\navg-synth demo: {manifest.num_rows} clips in {manifest_path}")
    print("  splits: " + ", ".join(f"{name} {count}" for name, count in sorted(splits.items())))
    print("  test clips per continent: " + ", ".join(f"{k} {v}" for k, v in sorted(continents.items())))
    failed = f"; failures: {dict(failures)}" if failures else ""
    print(
        f"  decoded {manifest.num_rows - sum(failures.values())}/{manifest.num_rows} clips "
        f"({manifest.num_rows / decode_s:.1f} clips/s){failed}"
    )
    print("\nWhat each modality's ground truth reveals on the test split (a ceiling, not a model):")
    print("| modality | region acc | median km | ≤200 km | ≤750 km | ≤2500 km |")
    print("|---|---|---|---|---|---|")
    for modality, scores in story_oracle(manifest).items():
        print(
            f"| {modality} | {scores['region_acc']:.1%} | {scores['median_km']:.0f} | "
            f"{scores['acc_200km']:.1%} | {scores['acc_750km']:.1%} | {scores['acc_2500km']:.1%} |"
        )
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs under {out_dir}")
