"""Throughput of avg-synth generation, then decode throughput over the clips it wrote.

    python benchmarks/synth_throughput.py --preset demo --out out/bench-demo
    python benchmarks/synth_throughput.py --preset full --locations 60 --out out/bench-full

Generation is timed end to end (gazetteer, planning, rendering on `--workers` processes, manifest) in
an empty folder, and reported as clips/s and as seconds of clip per wall second; the baseline is real
time (1.0 s/s). `--locations` times a slice of a preset: every clip costs the same whatever their
number, so 60 locations of `full` give its rate in two minutes instead of its whole 20,000 clips.
Decoding runs benchmarks/decode_throughput.py on the manifest it wrote. Last comes the story oracle
(avgeo.data.synth.oracle): how well each modality's ground truth locates the test clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from avgeo.data.manifest import read_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.data.synth.oracle import story_oracle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("ci", "demo", "full"), default="ci")
    parser.add_argument("--out", type=Path, required=True, help="an empty or missing folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the preset's)")
    parser.add_argument("--locations", type=int, default=None, help="locations (default: the preset's)")
    parser.add_argument("--decode-limit", type=int, default=200, help="clips to decode afterwards")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty: a resumed build would time only the missing clips")

    config = synth_preset(args.preset)
    if args.workers is not None:
        config = dataclasses.replace(config, num_workers=args.workers)
    if args.locations is not None:
        config = dataclasses.replace(config, n_locations=args.locations)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    manifest_path = run_synth(config, args.out, seed=args.seed)
    wall_s, cpu_s = time.perf_counter() - start, _cpu_seconds() - cpu_start
    n_clips = config.n_locations * config.clips_per_location
    setup = f"{args.preset}, {config.n_locations} locations, {config.num_workers} workers"
    print(
        f"generated {n_clips} clips of {config.clip_duration_s:g} s ({setup}) in {wall_s:.1f} s: "
        f"{n_clips / wall_s:.2f} clips/s; baseline real time 1.0 s/s: "
        f"{n_clips * config.clip_duration_s / wall_s:.1f}x real time"
    )
    # CPU time does not depend on what else the machine runs; it bounds the rate on idle cores.
    cores = min(config.num_workers, os.cpu_count() or 1)
    bound_clips_per_s = cores * n_clips / cpu_s
    print(
        f"CPU: {cpu_s / n_clips * 1000:.0f} ms per clip; {cores} idle cores would give "
        f"{bound_clips_per_s:.2f} clips/s; measured / that bound = {n_clips / wall_s / bound_clips_per_s:.2f}"
    )

    decode_script = Path(__file__).with_name("decode_throughput.py")
    decode_args = ["--manifest", str(manifest_path), "--limit", str(args.decode_limit)]
    subprocess.run([sys.executable, str(decode_script), *decode_args], check=True)

    report = story_oracle(read_manifest(manifest_path))
    print("story oracle on the test split (region accuracy, median km, accuracy within 200/750/2500 km):")
    for modality, scores in report.items():
        print(
            f"  {modality:>6}: {scores['region_acc']:.3f}  {scores['median_km']:7.0f} km  "
            f"{scores['acc_200km']:.3f} / {scores['acc_750km']:.3f} / {scores['acc_2500km']:.3f}"
        )


def _cpu_seconds() -> float:
    """User + system seconds of this process and of its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


if __name__ == "__main__":
    main()
