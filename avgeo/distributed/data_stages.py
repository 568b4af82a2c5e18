"""Ray Data pieces shared by the jobs that stream clips through model stages (embed, geotag).

- `StageResources`: one stage's CPUs, GPUs, pool size and batch size, as configs write them;
  `actor_pool_options` and `stage_device` turn it into `map_batches` arguments and a torch device.
- `input_dataset`: input rows as a dataset of one block per decode batch, so decode tasks run in parallel.
- `decode_batch`: the decode task. It adds the decoded clip as raw bytes (`frames`, `frames_shape`,
  `frame_times_s`, `audio`, `duration_s`), an `error` ("<ErrorType>: <message>", null when the clip
  decoded) and `decode_s`; `decoded_clips` turns those columns back into `DecodedClip`s in an actor.
- `prepare_model_worker`: the process settings of an actor that runs a model stage.
- `content_file_name`: names an output file by the ids it holds, so a retried write task replaces its own
  file instead of adding a second copy of its rows.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from avgeo.data.decode import DecodeConfig, DecodedClip, decode_clip
from avgeo.data.errors import DecodeError, MissingFileError
from avgeo.data.video_inputs import local_video
from avgeo.distributed.allocator import retain_freed_memory
from avgeo.runlog import MetricsLog

WRITE_NUM_CPUS = 0.25
"""CPUs reserved per Parquet-writing task: it only serialises, and must not starve the stages upstream."""

DECODED_COLUMNS = ("frames", "frames_shape", "frame_times_s", "audio", "duration_s")
"""Columns `decode_batch` adds to hold the decoded clip; a stage drops them once it has used them."""


@dataclass
class StageResources:
    """Ray resources and batching of one pipeline stage."""

    num_cpus: float = 0.5
    """CPUs reserved per task or actor. Fractions let stages share cores: on a 2-core machine, whole-CPU
    actor pools keep the decode tasks from ever running (Ray Data then stalls)."""
    num_gpus: float = 0.0
    """GPUs per actor (fractions share a GPU); above 0 the stage's model runs on CUDA."""
    pool_size: int = 1
    """Actors in the stage's pool; for the decode stage, the most decode tasks running at once."""
    batch_size: int = 8
    """Clips per batch handed to a task or actor (encoders share their forward passes across a batch)."""

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.pool_size < 1 or self.batch_size < 1:
            raise ValueError(
                f"pool_size and batch_size must be >= 1, got {self.pool_size}, {self.batch_size}"
            )


def actor_pool_options(stage: StageResources) -> dict[str, Any]:
    """`map_batches` keyword arguments for a callable class run by an actor pool of `stage`'s shape."""
    return {
        "batch_format": "pyarrow",
        "batch_size": stage.batch_size,
        "num_cpus": stage.num_cpus,
        "num_gpus": stage.num_gpus,
        "compute": ray.data.ActorPoolStrategy(size=stage.pool_size),
    }


def stage_device(stage: StageResources) -> str:
    """The torch device of a stage's model: CUDA when it holds a GPU share."""
    return "cuda" if stage.num_gpus > 0 else "cpu"


def prepare_model_worker(torch_threads: int) -> None:
    """Set up this process to run a model stage's batches: `torch_threads` torch threads, and glibc malloc
    keeping freed memory for the next batch (`avgeo.distributed.allocator`)."""
    import torch

    torch.set_num_threads(torch_threads)
    retain_freed_memory()


def input_dataset(rows: pa.Table, decode_stage: StageResources, config: DecodeConfig) -> ray.data.Dataset:
    """`rows` (with a `video_path` column) decoded by tasks of `decode_stage`'s shape (`decode_batch`)."""
    # One block per decode batch, so decode tasks run in parallel from the start. Slicing here rather
    # than `repartition`: its shuffle task wants a whole CPU, which the actor pools may already hold.
    batch_size = decode_stage.batch_size
    blocks = [rows.slice(first, batch_size) for first in range(0, rows.num_rows, batch_size)]
    return ray.data.from_arrow(blocks).map_batches(
        decode_batch,
        fn_kwargs={"config": config},
        batch_format="pyarrow",
        batch_size=batch_size,
        num_cpus=decode_stage.num_cpus,
        compute=ray.data.TaskPoolStrategy(size=decode_stage.pool_size),
    )


def decode_or_error(video_path: str | Path, config: DecodeConfig) -> tuple[DecodedClip | None, str | None]:
    """`decode_clip` of a local path or a URI (fetched to a temporary file first), with a bad clip's
    DecodeError returned as its `error` value instead of raised: "<ErrorType>: <message>"."""
    video_path = str(video_path)
    try:
        with local_video(video_path) as local_path:
            try:
                return decode_clip(local_path, config), None
            except DecodeError as exc:
                # A fetched copy's errors name the temporary file: name the URI the user gave instead.
                raise type(exc)(video_path, exc.problem) from None
    except FileNotFoundError:
        exc = MissingFileError(video_path, "no such file on its filesystem; check the path")
        return None, f"{type(exc).__name__}: {exc}"
    except DecodeError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def decode_batch(batch: pa.Table, config: DecodeConfig) -> pa.Table:
    """Decode each row's `video_path`; adds `DECODED_COLUMNS` (null on error rows), `error` and `decode_s`."""
    decoded: dict[str, list[Any]] = {name: [] for name in (*DECODED_COLUMNS, "error", "decode_s")}
    for video_path in batch["video_path"].to_pylist():
        start_s = time.perf_counter()
        clip, error = decode_or_error(video_path, config)
        decoded["decode_s"].append(time.perf_counter() - start_s)
        decoded["error"].append(error)
        decoded["frames"].append(None if clip is None else clip.frames.tobytes())
        decoded["frames_shape"].append(None if clip is None else list(clip.frames.shape))
        decoded["frame_times_s"].append(None if clip is None else clip.frame_times_s.tolist())
        decoded["audio"].append(None if clip is None else clip.audio.tobytes())
        decoded["duration_s"].append(None if clip is None else clip.duration_s)
    types = {
        "frames": pa.large_binary(),
        "frames_shape": pa.list_(pa.int32()),
        "frame_times_s": pa.list_(pa.float64()),
        "audio": pa.large_binary(),
        "duration_s": pa.float64(),
        "error": pa.string(),
        "decode_s": pa.float32(),
    }
    for name, values in decoded.items():
        batch = batch.append_column(name, pa.array(values, types[name]))
    return batch


def decoded_clips(batch: pa.Table, rows: Sequence[int], sample_rate: int) -> list[DecodedClip]:
    """The `DecodedClip`s of a decoded batch's `rows` (those without an `error`)."""
    clips = []
    for row in rows:
        shape = batch["frames_shape"][row].as_py()
        clips.append(
            DecodedClip(
                frames=np.frombuffer(batch["frames"][row].as_py(), np.uint8).reshape(shape),
                frame_times_s=np.asarray(batch["frame_times_s"][row].as_py(), np.float64),
                # np.frombuffer views immutable bytes; torch wants writable memory, hence the copy.
                audio=np.frombuffer(batch["audio"][row].as_py(), np.float32).copy(),
                sample_rate=sample_rate,
                duration_s=batch["duration_s"][row].as_py(),
                path=batch["video_path"][row].as_py(),
            )
        )
    return clips


def ok_rows(batch: pa.Table) -> list[int]:
    """Indices of the batch's rows without an `error` so far."""
    return np.flatnonzero(pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)).tolist()


def content_file_name(ids: Sequence[str]) -> str:
    """Name of the file of rows with these ids: `part-<16 hex of a SHA-256 over the sorted ids>.parquet`."""
    digest = hashlib.sha256(chr(0).join(sorted(ids)).encode()).hexdigest()[:16]
    return f"part-{digest}.parquet"


@dataclass
class RunSummary:
    """What one run of a resumable Ray Data job (embed, geotag) did."""

    job: str
    """The job's name, first word of the report."""
    inputs: int
    """Clips the job's input names (manifest rows, listed videos)."""
    skipped: int
    """Of those, clips already in the output folder before the run (not redone)."""
    written: int
    """Rows this run wrote, error rows included."""
    errors: int
    """Of those, rows with an `error`."""
    error_types: dict[str, int]
    """Error rows of this run per error type, e.g. {"TruncatedFileError": 1}."""
    files_written: int
    """Parquet files this run wrote."""
    rows_in_output: int
    """Inputs with a row in the output folder after the run (equals `inputs` when complete)."""
    wall_s: float
    """Seconds the run took, Ray start-up excluded."""
    clips_per_s: float
    """Rows written per second of wall time (0 when nothing was left to do)."""

    def report(self) -> str:
        """One human-readable line."""
        errors = ", ".join(f"{name} {count}" for name, count in sorted(self.error_types.items())) or "none"
        return (
            f"{self.job}: {self.written} clips ({self.errors} errors: {errors}) in {self.files_written} "
            f"files, {self.skipped} already done; {self.rows_in_output}/{self.inputs} inputs in the output; "
            f"{self.wall_s:.1f} s, {self.clips_per_s:.2f} clips/s"
        )


def summarize_run(
    job: str,
    inputs: int,
    pending: int,
    written_files: Sequence[dict[str, Any]],
    rows_in_output: int,
    wall_s: float,
    metrics_file: Path,
) -> RunSummary:
    """The summary of a run whose writes returned `written_files` (`rows`, `error_types` each),
    appended to `metrics_file` as a JSON line and printed."""
    error_types = collections.Counter(name for row in written_files for name in row["error_types"])
    num_written = sum(row["rows"] for row in written_files)
    summary = RunSummary(
        job=job,
        inputs=inputs,
        skipped=inputs - pending,
        written=num_written,
        errors=sum(error_types.values()),
        error_types=dict(error_types),
        files_written=len(written_files),
        rows_in_output=rows_in_output,
        wall_s=wall_s,
        clips_per_s=num_written / wall_s if num_written else 0.0,
    )
    MetricsLog(metrics_file).write(**asdict(summary))
    print(summary.report())
    return summary
