"""Geotag throughput: the Ray Data job (`run_geotag`) against the bound its stages imply and a plain loop.

    python benchmarks/geotag_throughput.py --manifest data/avg-synth-demo/manifest.parquet --clips 600

On the first `--clips` rows of the manifest, in one run:
1. each stage's CPU-seconds per clip, measured alone in this process (one torch thread, as each actor
   runs, and the config's batch sizes): decode, the visual encoder, CLAP, the IC-SAE, the MLLM, the RFM
   head (perception is also timed whole, as its actor runs it, on the same clips). Measured before and
   after the job runs, and averaged: the same work on this shared machine takes up to ~1.4x longer at
   some minutes than at others, and the spread printed says how much it drifted during this run;
2. the bound they imply: cores ÷ Σ CPU-s per clip (decode + perception + MLLM + RFM), the rate at which
   the cores would finish clips if they did nothing but this work;
3. the Ray Data job's clips/s: end to end (actor start-up and model loading included) on all the clips,
   and marginal: the extra clips over the extra seconds of that run against one on the first third, which
   cancels start-up (what a long archive run sees; start-up varies by ~10 s between runs, so the extra
   clips must take far longer than that: a few hundred); both after an untimed run on a few clips, since a
   fresh cluster's first job also starts Ray's worker processes;
4. a plain single-process loop's clips/s: `Geolocator.geolocate` on each of the `--stage-clips` clips in
   turn (models loaded before the clock starts);
5. the ratios job / bound and job / plain, and the job's peak memory: the RSS of its Ray worker
   processes, summed, sampled every 0.5 s (shared pages count once per process, so this over-counts);
6. the same stage costs with the cores shared the way the job shares them: `--processes-per-core` x cores
   processes timing the stages at once (no Ray), against the costs alone timed just before (the machine's
   speed drifts by the minute), and the bound those imply. A process that shares its
   core with others is switched in and out and finds its caches holding the others' data, so the same
   work takes it more CPU time; no pipeline that runs more processes than cores escapes that;
7. the job's CPU-seconds per extra clip (the driver and every Ray process, the same two runs) against
   the stages' sum, and where they went: each stage's actors, the writer, the decode tasks, Ray's own
   processes (raylet, GCS, dashboard agent, Ray Data's stats, autoscaling and actor-location actors),
   the driver (Ray Data's streaming executor).
The load average is printed at the start and the end: other work on the machine slows every figure.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import multiprocessing
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from avgeo.config import load_config
from avgeo.data.manifest import read_manifest
from avgeo.distributed.data_stages import decode_or_error, prepare_model_worker
from avgeo.distributed.geotag import GeotagConfig, run_geotag
from avgeo.pipeline import Geolocator

ROOT = Path(__file__).resolve().parents[1]

WARM_UP_CLIPS = 16
"""Clips of the untimed job run that warms up a fresh local Ray cluster."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest", type=Path, required=True, help="AVG manifest whose first --clips to use"
    )
    parser.add_argument("--clips", type=int, default=600, help="clips to geotag")
    parser.add_argument("--stage-clips", type=int, default=64, help="clips the per-stage costs are timed on")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "geotag" / "tiny.yaml")
    parser.add_argument(
        "--processes-per-core",
        type=int,
        default=3,
        help="processes sharing each core for the shared-core costs (the job: 3 actors, decode tasks)",
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    args = parser.parse_args()

    import ray

    print(f"load average at start: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="geotag-bench-") as scratch:
        scratch = Path(scratch)
        rows = read_manifest(args.manifest).slice(0, args.clips).select(["clip_id", "video_path"])
        config = load_config(GeotagConfig, args.config, input="unused", out_dir="unused")
        paths = rows["video_path"].to_pylist()
        print(f"{len(paths)} clips from {args.manifest}; config {args.config}")

        # The same process settings as the job's stage actors, so "alone" differs from them only by Ray.
        prepare_model_worker(config.torch_threads)
        geolocator = Geolocator.from_config(config.geolocator)
        stage_paths = paths[: args.stage_clips]
        costs_before_s = stage_cpu_s(geolocator, stage_paths, config)

        start_s = time.perf_counter()
        for path in stage_paths:
            geolocator.geolocate(path)
        plain_rate = len(stage_paths) / (time.perf_counter() - start_s)

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        # A throwaway first run: a fresh cluster's first job also pays for starting Ray's worker processes
        # and its dashboard agent, which would count against the smaller of the two measured runs.
        run_job(rows.slice(0, WARM_UP_CLIPS), config, scratch / "warm-up")
        first = run_job(rows.slice(0, rows.num_rows // 3), config, scratch / "first")
        whole = run_job(rows, config, scratch / "whole")
        ray.shutdown()
        costs_after_s = stage_cpu_s(geolocator, stage_paths, config)
        processes = args.processes_per_core * args.num_cpus
        costs_shared_s = shared_core_stage_cpu_s(processes, stage_paths, args.config)

        print(f"CPU-s per clip, each stage alone ({len(stage_paths)} clips), before / after the job / mean:")
        costs_s = {}
        for name, before_s in costs_before_s.items():
            costs_s[name] = (before_s + costs_after_s[name]) / 2
            print(
                f"  {name:<28} {before_s * 1000:8.1f} {costs_after_s[name] * 1000:8.1f} "
                f"{costs_s[name] * 1000:8.1f} ms"
            )
        total_s = sum(costs_s[name] for name in STAGES_OF_A_CLIP)
        bound = args.num_cpus / total_s
        print(f"  {'sum (decode+perception+MLLM+RFM)':<28} {total_s * 1000:26.1f} ms")
        print(f"bound: {args.num_cpus} cores / {total_s:.3f} CPU-s = {bound:.2f} clips/s")
        print(f"plain loop (Geolocator.geolocate, 1 process, 1 torch thread): {plain_rate:.2f} clips/s")

        end_to_end = whole.clips / whole.wall_s
        extra_clips = whole.clips - first.clips
        marginal = extra_clips / (whole.wall_s - first.wall_s)
        print(
            f"ray data job ({args.num_cpus} CPUs): {whole.clips} clips in {whole.wall_s:.1f} s = "
            f"{end_to_end:.2f} clips/s end to end; {first.clips} clips in {first.wall_s:.1f} s; marginal: "
            f"{extra_clips} more in {whole.wall_s - first.wall_s:.1f} s = {marginal:.2f}/s"
        )
        print(f"job / bound: {marginal / bound:.2f} marginal, {end_to_end / bound:.2f} end to end")
        print(f"CPU-s per clip, each stage with {processes} processes sharing the {args.num_cpus} cores:")
        for name, shared_s in costs_shared_s.items():
            ratio = shared_s / costs_after_s[name]
            print(f"  {name:<28} {shared_s * 1000:8.1f} ms = {ratio:.2f} x alone just before")
        shared_total_s = sum(costs_shared_s[name] for name in STAGES_OF_A_CLIP)
        shared_bound = args.num_cpus / shared_total_s
        print(
            f"shared-core bound: {args.num_cpus} cores / {shared_total_s:.3f} CPU-s = "
            f"{shared_bound:.2f} clips/s"
        )
        print(f"job / shared-core bound: {marginal / shared_bound:.2f} marginal")
        print(
            f"job / plain: {marginal / plain_rate:.2f}x marginal, {end_to_end / plain_rate:.2f}x end to end"
        )
        extra_cpu_s = {
            name: (whole.cpu_s[name] - first.cpu_s.get(name, 0.0)) / extra_clips for name in whole.cpu_s
        }
        marginal_cpu_s = sum(extra_cpu_s.values())
        print(
            f"job CPU-s per extra clip (driver + every Ray process): {marginal_cpu_s * 1000:.1f} ms "
            f"= {marginal_cpu_s / total_s:.2f} x the stages' sum; by process:"
        )
        for name, seconds in sorted(extra_cpu_s.items(), key=lambda item: -item[1]):
            print(f"  {name:<28} {seconds * 1000:8.1f} ms")
        print(f"job peak memory (RSS of Ray worker processes, summed): {whole.peak_bytes / 2**30:.2f} GiB")
    print(f"load average at end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


STAGES_OF_A_CLIP = ("decode", "perception (whole)", "MLLM", "RFM")
"""The stage costs whose sum is a clip's CPU time (the encoders and IC-SAE are perception's parts)."""


SHARED_TIMEOUT_S = 900
"""Longest wait for the shared-core processes to load their models, and then to time the stages."""


def shared_core_stage_cpu_s(processes: int, paths: list[str], config_path: Path) -> dict[str, float]:
    """`stage_cpu_s` timed in `processes` processes at once, averaged over them: what each stage costs
    when the cores are shared by that many processes busy with the same work."""
    context = multiprocessing.get_context("spawn")
    # Timeouts, so one worker that dies (out of memory, a bad clip) fails the benchmark instead of hanging it.
    start = context.Barrier(processes, timeout=SHARED_TIMEOUT_S)
    results = context.Queue()
    workers = [
        context.Process(target=_time_stages_together, args=(start, results, paths, config_path))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    costs = [results.get(timeout=SHARED_TIMEOUT_S) for _ in workers]
    for worker in workers:
        worker.join()
    return {name: sum(cost[name] for cost in costs) / len(costs) for name in costs[0]}


def _time_stages_together(start, results, paths: list[str], config_path: Path) -> None:
    """One of `shared_core_stage_cpu_s`'s processes: load the models, wait for the others, time the stages."""
    config = load_config(GeotagConfig, config_path, input="unused", out_dir="unused")
    prepare_model_worker(config.torch_threads)
    geolocator = Geolocator.from_config(config.geolocator)
    stage_cpu_s(geolocator, paths[: config.perception_stage.batch_size], config)  # warm-up
    start.wait()
    results.put(stage_cpu_s(geolocator, paths, config))


def stage_cpu_s(geolocator: Geolocator, paths: list[str], config: GeotagConfig) -> dict[str, float]:
    """CPU-seconds per clip of each stage alone, batched as the job's actors batch."""
    cpu_s: dict[str, float] = dict.fromkeys(
        ("decode", "visual encoder", "CLAP", "IC-SAE", "perception (whole)", "MLLM", "RFM"), 0.0
    )

    def timed(name: str, run, *inputs):
        start_s = time.process_time()
        result = run(*inputs)
        cpu_s[name] += time.process_time() - start_s
        return result

    clips = []
    for path in paths:
        clip, error = timed("decode", decode_or_error, path, config.geolocator.decode)
        if error is not None:
            raise SystemExit(f"{path}: {error}; benchmark on clips that decode")
        clips.append(clip)
    embedder = geolocator.perception.embedder
    perceptions = []
    for batch in chunks(clips, config.perception_stage.batch_size):
        audio = timed("CLAP", embedder.audio, [clip.audio for clip in batch])
        timed("visual encoder", embedder.visual, [clip.frames for clip in batch])
        timed("IC-SAE", embedder.atoms, [row["audio_projection"] for row in audio])
        perceptions += timed("perception (whole)", geolocator.perceive, batch)
    reasonings = []
    for batch in chunks(perceptions, config.reasoning_stage.batch_size):
        reasonings += timed("MLLM", geolocator.reason, batch)
    for batch in chunks(reasonings, config.prediction_stage.batch_size):
        timed("RFM", geolocator.predict, batch)
    return {name: seconds / len(paths) for name, seconds in cpu_s.items()}


def chunks(items: list, size: int) -> list[list]:
    return [items[first : first + size] for first in range(0, len(items), size)]


@dataclasses.dataclass
class JobRun:
    clips: int
    wall_s: float
    """The job's own wall time (`RunSummary.wall_s`): listing, actor start-up, model loading, writing."""
    cpu_s: dict[str, float]
    """CPU seconds during the run by kind of process (`process_kind`), and of the driver."""
    peak_bytes: int
    """Peak summed RSS of the Ray worker processes."""


def run_job(rows: pa.Table, config: GeotagConfig, scratch: Path) -> JobRun:
    """`run_geotag` on `rows` (a manifest of their own) into a fresh folder, with its CPU and memory."""
    scratch.mkdir()
    pq.write_table(rows, scratch / "clips.parquet")
    job_config = dataclasses.replace(config, input=str(scratch / "clips.parquet"), out_dir=scratch / "out")
    sampler = RayProcessSampler()
    sampler.start()
    driver_cpu_s = time.process_time()
    summary = run_geotag(job_config)
    driver_cpu_s = time.process_time() - driver_cpu_s
    sampler.stop()
    if summary.errors or summary.written != rows.num_rows:
        raise SystemExit(
            f"the job wrote {summary.written} rows, {summary.errors} errors: {summary.error_types}"
        )
    cpu_s = {**sampler.cpu_s_by_kind(), "driver (Ray Data's executor)": driver_cpu_s}
    return JobRun(rows.num_rows, summary.wall_s, cpu_s, sampler.peak_bytes)


STAGE_ACTOR = re.compile(r"MapBatches\((\w+(?:Actor|Writer))\)")
"""A stage actor's process title, e.g. `ray::MapWorker(MapBatches(PerceptionActor))`, or the writer's."""

TASKS = "decode tasks"
"""Kind of a Ray worker that runs tasks (or idles), never a stage actor."""
SYSTEM = "Ray's own processes"
"""Kind of every other process below the driver: raylet, GCS, agents, Ray Data's helper actors."""


def process_kind(title: str, kind_before: str | None) -> str:
    """What a process below the driver is: a stage actor (its class), the writer, a worker running the decode
    tasks, or one of Ray's own processes. A process keeps the most specific kind it has shown: a worker
    starts as a plain python command line, idles as `ray::IDLE` and may later become an actor."""
    actor = STAGE_ACTOR.search(title)
    if actor:
        kind = actor.group(1)
    elif title.startswith("ray::IDLE") or "MapBatches(" in title:
        kind = TASKS
    else:
        kind = SYSTEM
    ranks = {SYSTEM: 0, TASKS: 1}
    return kind if kind_before is None or ranks.get(kind, 2) > ranks.get(kind_before, 2) else kind_before


class RayProcessSampler:
    """Every 0.5 s: the summed RSS of this process's Ray worker processes (`ray::…`), and the CPU time
    every process below this one (Ray's own included) spends from `start` on, by `process_kind`."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._cpu_s_at_start: dict[int, float] = {}
        self._cpu_s_by_pid: dict[int, float] = {}
        self._kind_by_pid: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_s_by_kind(self) -> dict[str, float]:
        """CPU seconds of the processes below this one by kind, as last sampled (up to 0.5 s per process
        unseen)."""
        by_kind: dict[str, float] = collections.defaultdict(float)
        for pid, cpu_s in self._cpu_s_by_pid.items():
            by_kind[self._kind_by_pid[pid]] += cpu_s - self._cpu_s_at_start.get(pid, 0.0)
        return dict(by_kind)

    def start(self) -> None:
        # Processes from before the run (Ray's own, idle workers) count only what they spend during it.
        for process in psutil.Process().children(recursive=True):
            try:
                times = process.cpu_times()
                self._cpu_s_at_start[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.5):
            total = 0
            for process in me.children(recursive=True):
                try:
                    times = process.cpu_times()
                    title = " ".join(process.cmdline())
                    self._cpu_s_by_pid[process.pid] = times.user + times.system
                    self._kind_by_pid[process.pid] = process_kind(title, self._kind_by_pid.get(process.pid))
                    if title.startswith("ray::"):
                        total += process.memory_info().rss
                except psutil.Error:
                    continue  # a process that exited between the listing and the read
            self.peak_bytes = max(self.peak_bytes, total)


if __name__ == "__main__":
    main()
