"""Embedding throughput: the Ray Data job (`run_embed`) against a plain single-process loop, same clips.

    python benchmarks/embed_throughput.py --preset ci                  # builds avg-synth ci in a temp dir
    python benchmarks/embed_throughput.py --manifest data/avg-synth-demo/manifest.parquet --limit 200

Both embed the first `--limit` manifest rows with the config's models, decode settings and featurizers
(`avgeo.perception.embedder`) and write the same feature table. The baseline is `embed_in_process`: one
process decoding, embedding (batches of the config's `visual_stage.batch_size` clips) and writing in turn.
Printed: each side's clips/s end to end, model loading and Ray's actor start-up included (a user waits
for both; Ray's own `ray.init` is not counted), and the ratio Ray / plain. Both outputs are checked to
hold the same rows with the same features.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from avgeo.config import load_config
from avgeo.data.features import embedded_rows, feature_matrix, read_features, write_features
from avgeo.data.manifest import read_manifest, write_manifest
from avgeo.distributed.embed import EmbedConfig, embed_in_process, run_embed

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="AVG manifest whose first --limit rows to embed")
    source.add_argument("--preset", choices=("ci", "demo"), help="build this avg-synth preset (seed 0) first")
    parser.add_argument(
        "--limit", type=int, default=None, help="embed at most this many clips (default: all)"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "embed" / "tiny.yaml")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    parser.add_argument(
        "--plain-threads", type=int, default=None, help="torch threads of the plain loop (default: torch's)"
    )
    args = parser.parse_args()

    import ray
    import torch

    with tempfile.TemporaryDirectory(prefix="embed-bench-") as scratch:
        scratch = Path(scratch)
        manifest_path = args.manifest
        if args.preset is not None:
            from avgeo.data.synth import run_synth, synth_preset

            manifest_path = run_synth(synth_preset(args.preset), scratch / "avg-synth", seed=0)
        rows = read_manifest(manifest_path)
        rows = rows.slice(0, args.limit) if args.limit is not None else rows
        clips_manifest = write_manifest(rows, scratch / "manifest.parquet")
        config = load_config(
            EmbedConfig, args.config, manifest=str(clips_manifest), out_dir=str(scratch / "ray_features")
        )
        print(f"{rows.num_rows} clips from {manifest_path}; config {args.config}")

        if args.plain_threads is not None:
            torch.set_num_threads(args.plain_threads)
        start_s = time.perf_counter()
        plain = embed_in_process(rows, config)
        write_features(plain, scratch / "plain_features.parquet")
        plain_s = time.perf_counter() - start_s

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        summary = run_embed(config)
        ray.shutdown()

        check_same_features(plain, read_features(config.out_dir))
        plain_rate = rows.num_rows / plain_s
        threads = torch.get_num_threads()
        print(f"plain loop (1 process, {threads} torch threads): {plain_s:.1f} s, {plain_rate:.2f} clips/s")
        ray_rate = summary.clips_per_s
        print(f"ray data job ({args.num_cpus} CPUs): {summary.wall_s:.1f} s, {ray_rate:.2f} clips/s")
        print(f"ratio ray / plain: {ray_rate / plain_rate:.2f}x")


def check_same_features(plain, from_ray) -> None:
    """Both runs hold the same clips, the same errors and (to float tolerance) the same features."""
    plain, from_ray = plain.sort_by("clip_id"), from_ray.sort_by("clip_id")
    if plain["clip_id"] != from_ray["clip_id"] or plain["error"] != from_ray["error"]:
        raise SystemExit("the Ray job and the plain loop wrote different rows or errors")
    for kind in ("visual", "audio", "atoms"):
        difference = np.abs(
            feature_matrix(embedded_rows(plain), kind) - feature_matrix(embedded_rows(from_ray), kind)
        ).max(initial=0.0)
        if difference > 1e-3:
            raise SystemExit(f"{kind} features differ by up to {difference:g} between the two runs")
    print(f"same rows and features; {pc.sum(pc.is_valid(plain['error'])).as_py() or 0} error rows")


if __name__ == "__main__":
    main()
