"""A bounded load on the geolocation endpoint over loopback, against in-process calls of the same Geolocator.

    python benchmarks/serve_load.py                          # 300 requests from 8 clients, serve/config.yaml
    python benchmarks/serve_load.py --requests 60 --clients 4 --cooldown-s 30   # a quick look

1. Baseline: `Geolocator.geolocate` on the clips in this process, one call at a time, before Serve starts.
2. Starts a local Ray, deploys the config as `serve run` does, sends `--baseline-calls` requests one at a
   time (the serving overhead: HTTP, the stage hops, batch waits), then `--requests` uploads of the clips
   from `--clients` concurrent clients (each waits for its answer before sending the next).
3. Prints throughput, p50/p99 latency, the overhead against the in-process call, the HTTP statuses, and
   each stage's running replicas over time: during the load and for `--cooldown-s` after it, so the
   autoscaler's scale-up under load and scale-down afterwards both show.
The clips are avg-synth `ci` clips (3 s) built into a temporary folder, or every mp4 under `--clips-dir`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# `serve.app` lives at the repository root, outside the installed package: put the root on this process's
# path and, through PYTHONPATH, on the path of every Ray worker the local cluster starts.
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from avgeo.config import load_config  # noqa: E402
from avgeo.data.synth import run_synth, synth_preset  # noqa: E402
from avgeo.pipeline import Geolocator  # noqa: E402
from avgeo.serving import ServeAppConfig  # noqa: E402

APP_NAME = "avgeo"
STAGES = ("Ingress", "Perception", "Reasoning", "Prediction")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "serve" / "config.yaml", help="Serve config")
    parser.add_argument("--requests", type=int, default=300, help="requests in the load")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--clips-dir", type=Path, help="folder of mp4s to send (default: avg-synth ci clips)")
    parser.add_argument("--baseline-calls", type=int, default=16, help="in-process geolocate calls")
    parser.add_argument("--cooldown-s", type=float, default=120.0, help="longest wait for the scale-down")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between replica-count samples")
    return parser.parse_args()


def clip_paths(clips_dir: Path | None, work_dir: Path) -> list[Path]:
    if clips_dir is not None:
        paths = sorted(clips_dir.rglob("*.mp4"))
        if not paths:
            raise SystemExit(f"{clips_dir}: no .mp4 files")
        return paths
    config = dataclasses.replace(synth_preset("ci"), n_locations=8, clips_per_location=1)
    run_synth(config, work_dir, seed=0)
    return sorted((work_dir / "clips").rglob("*.mp4"))


def in_process_latencies_s(args: ServeAppConfig, paths: list[Path], calls: int) -> np.ndarray:
    """Seconds per `Geolocator.geolocate` call, one at a time, after one warm-up call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    geolocator = Geolocator.from_config(args.geolocator)
    geolocator.geolocate(paths[0])
    latencies_s = []
    for path in itertools.islice(itertools.cycle(paths), calls):
        started_s = time.perf_counter()
        geolocator.geolocate(path)
        latencies_s.append(time.perf_counter() - started_s)
    torch.set_num_threads(threads)
    return np.asarray(latencies_s)


@dataclasses.dataclass(frozen=True)
class ReplicaSample:
    """Each stage's replicas at one moment."""

    t_s: float
    """Seconds since sampling began."""
    running: tuple[int, ...]
    """RUNNING replicas per stage, in `STAGES` order."""
    starting: tuple[int, ...]
    """Replicas being started per stage (new processes importing and loading their models)."""
    steady: bool
    """Every stage is HEALTHY: no scale-up or scale-down under way."""


class ReplicaSampler(threading.Thread):
    """Samples the stages' replicas every `period_s` into `samples` until `stopping` is set."""

    def __init__(self, period_s: float) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.samples: list[ReplicaSample] = []
        self.started_s = time.monotonic()
        self.stopping = threading.Event()

    def sample(self) -> ReplicaSample:
        from ray import serve

        deployments = serve.status().applications[APP_NAME].deployments
        states = [deployments[name].replica_states for name in STAGES]
        return ReplicaSample(
            t_s=time.monotonic() - self.started_s,
            running=tuple(state.get("RUNNING", 0) for state in states),
            starting=tuple(state.get("STARTING", 0) for state in states),
            steady=all(deployments[name].status == "HEALTHY" for name in STAGES),
        )

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append(self.sample())
            self.stopping.wait(self.period_s)


def send_load(url: str, paths: list[Path], num_requests: int, num_clients: int) -> list[tuple[float, int]]:
    """(latency s, HTTP status) of each request; `num_clients` threads, each one request at a time."""
    videos = [(path.name, path.read_bytes()) for path in paths]
    next_index = itertools.count()
    lock = threading.Lock()
    results: list[tuple[float, int]] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(next_index)
                if index >= num_requests:
                    return
                name, video = videos[index % len(videos)]
                started_s = time.perf_counter()
                response = session.post(f"{url}/v1/geolocate", files={"file": (name, video)}, timeout=600)
                with lock:
                    results.append((time.perf_counter() - started_s, response.status_code))

    clients = [threading.Thread(target=client) for _ in range(num_clients)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_replica_timeline(samples: list[ReplicaSample], load_end_s: float) -> None:
    print("\nReplicas over time: running(+starting), a row per change; * = after the load ended")
    print("| t (s) | " + " | ".join(STAGES) + " |\n|---|" + "---|" * len(STAGES))
    previous = None
    for sample in samples:
        cells = [
            f"{running}+{starting}" if starting else str(running)
            for running, starting in zip(sample.running, sample.starting, strict=True)
        ]
        if cells != previous:
            marker = "*" if sample.t_s >= load_end_s else " "
            print(f"| {sample.t_s:6.1f}{marker} | " + " | ".join(cells) + " |")
            previous = cells
    peak = [max(sample.running[i] for sample in samples) for i in range(len(STAGES))]
    last = samples[-1].running
    print(f"peak: {dict(zip(STAGES, peak, strict=True))}; last: {dict(zip(STAGES, last, strict=True))}")


def main() -> None:
    options = parse_args()
    raw_config = yaml.safe_load(options.config.read_text())
    (application,) = raw_config["applications"]
    app_args = load_config(ServeAppConfig, application.get("args") or {})
    min_replicas = {
        d["name"]: d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
        for d in application.get("deployments", [])
    }
    raw_config["http_options"] = {"host": "127.0.0.1", "port": free_port()}

    with tempfile.TemporaryDirectory(prefix="avgeo-serve-load-") as work_dir:
        paths = clip_paths(options.clips_dir, Path(work_dir))
        print(f"{len(paths)} clips; config {options.config}; {os.cpu_count()} CPU cores")
        baseline_s = in_process_latencies_s(app_args, paths, options.baseline_calls)
        print(
            f"in-process Geolocator.geolocate: mean {baseline_s.mean():.3f} s, "
            f"p50 {np.median(baseline_s):.3f} s "
            f"({1 / baseline_s.mean():.2f} clips/s, one call at a time, {len(baseline_s)} calls)"
        )

        import ray
        from ray import serve

        from serve.app import run_config

        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            started_s = time.monotonic()
            url = run_config(raw_config)
            print(f"Serve app up in {time.monotonic() - started_s:.1f} s at {url}")
            single = send_load(url, paths, options.baseline_calls, num_clients=1)
            single_s = np.asarray([latency for latency, status in single if status == 200])
            sampler = ReplicaSampler(options.sample_s)
            sampler.start()
            load_started_s = time.perf_counter()
            results = send_load(url, paths, options.requests, options.clients)
            load_s = time.perf_counter() - load_started_s
            load_end_s = time.monotonic() - sampler.started_s
            settled = tuple(min_replicas.get(name, 1) for name in STAGES)
            deadline_s = time.monotonic() + options.cooldown_s
            while time.monotonic() < deadline_s:
                time.sleep(options.sample_s)
                latest = sampler.samples[-1]
                if latest.steady and latest.running == settled and latest.t_s > load_end_s:
                    break
            sampler.stopping.set()
            sampler.join()
        finally:
            serve.shutdown()
            ray.shutdown()

    latencies_s = np.asarray([latency for latency, status in results if status == 200])
    statuses = {
        status: sum(1 for _, s in results if s == status) for status in sorted({s for _, s in results})
    }
    print(
        f"\n{options.requests} requests from {options.clients} clients in {load_s:.1f} s; statuses {statuses}"
    )
    if len(latencies_s):
        p50_s, p99_s = np.percentile(latencies_s, [50, 99])
        print(f"throughput: {len(latencies_s) / load_s:.2f} answers/s "
              f"({len(latencies_s) / load_s * baseline_s.mean():.2f}x in-process one at a time)")  # fmt: skip
        print(f"latency: p50 {p50_s:.3f} s, p99 {p99_s:.3f} s")
        print(f"latency / in-process mean: p50 {p50_s / baseline_s.mean():.2f}x (queueing at "
              f"{options.clients} clients included)")  # fmt: skip
    print(f"serving overhead, one client at a time: mean {single_s.mean():.3f} s per request vs "
          f"{baseline_s.mean():.3f} s in process: {single_s.mean() - baseline_s.mean():+.3f} s "
          f"({single_s.mean() / baseline_s.mean():.2f}x, {len(single_s)} requests)")  # fmt: skip
    print_replica_timeline(sampler.samples, load_end_s)


if __name__ == "__main__":
    main()
