"""The embedding job: an AVG manifest -> the feature table (`avgeo.data.features`), on Ray Data.

    decode (CPU tasks) -> visual encoder (actor pool) -> CLAP (actor pool) -> IC-SAE atoms (actor pool)
    -> Parquet files (tasks)

Between stages a batch is an Arrow table whose columns grow into the feature table's: the manifest's
columns, then the decoded clip (`frames`, `audio` as raw bytes with their shapes, dropped once encoded),
`error`, and each stage's feature columns in their final types plus its model name and seconds. A clip
that fails to decode gets its `error` in the decode task ("<ErrorType>: <message>") and passes through
every later stage untouched, its feature columns null: one row comes out per row that goes in.

Resume: before decoding, the clip ids already in `out_dir`'s Parquet files are read and left out, so a
re-run embeds only what is missing. Every file is written whole or not at all (`write_features` writes
a hidden temp file and renames it), so an interrupted run leaves no half file that could count as done;
its file name is a hash of the clip ids it holds, so a retried write task replaces its own file instead
of adding a second copy of the rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from avgeo.data.decode import DecodeConfig
from avgeo.data.features import (
    FEATURES_SCHEMA,
    MODEL_FIELDS,
    TIMING_FIELDS,
    feature_column,
    features_table,
    read_features,
    write_features,
)
from avgeo.data.manifest import read_manifest
from avgeo.distributed.data_stages import (
    DECODED_COLUMNS,
    WRITE_NUM_CPUS,
    RunSummary,
    StageResources,
    actor_pool_options,
    content_file_name,
    decode_or_error,
    input_dataset,
    ok_rows,
    prepare_model_worker,
    stage_device,
    summarize_run,
)

MANIFEST_COLUMNS = ("clip_id", "video_path", "split", "lat", "lon")
"""The manifest columns the feature table keeps."""

METRICS_FILE = "metrics.jsonl"
"""One JSON line per run in `out_dir`: what the run embedded, skipped and how fast."""

_STAGE_COLUMNS = {
    "visual": ("visual_per_frame", "visual_mean"),
    "audio": ("audio_embedding", "audio_projection", "audio_mean"),
    "icsae": ("atoms", "atom_class_strength"),
}
"""The feature columns each model stage adds."""


@dataclass
class EmbedConfig:
    """The embedding job: which manifest, which models, where the features go, and each stage's resources."""

    manifest: Path
    """AVG manifest (Parquet) whose rows to embed."""
    out_dir: Path
    """Folder of the feature table's Parquet files (and metrics.jsonl); a re-run skips clips already here."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How frames and audio are sampled from each clip; audio is required."""
    visual_model: str = "tiny"
    """Visual encoder: `tiny`, a local CLIP directory or a hub id (VisualEncoder.from_pretrained)."""
    audio_model: str = "tiny"
    """CLAP audio tower: `tiny`, a save_pretrained directory or a laion-clap .pt checkpoint
    (AudioEncoder.from_pretrained)."""
    icsae_model: str = "tiny"
    """IC-SAE dictionary: `tiny` or a directory written by save_pretrained, e.g. the MART job's output."""
    num_atoms: int = 5
    """K, greedy IC-SAE steps per audio window (Algorithm 1's iterations; the method fixes no K for
    inference)."""
    hop_s: float = 10.0
    """Seconds between the starts of consecutive CLAP windows (at most the 10 s window length)."""
    frames_per_forward: int = 32
    """Frames per visual-encoder forward pass (bounds activation memory; clips of a batch share passes)."""
    windows_per_forward: int = 16
    """Audio windows per CLAP forward pass."""
    torch_threads: int = 1
    """torch threads per actor: small models on shared cores run fastest with 1 each."""
    rows_per_file: int = 1024
    """Most feature rows per Parquet file; also the most work a crash can lose (rows not yet written)."""
    decode_stage: StageResources = field(
        default_factory=lambda: StageResources(num_cpus=0.5, pool_size=2, batch_size=4)
    )
    """Decode tasks (CPU only)."""
    visual_stage: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
    """Visual-encoder actor pool."""
    audio_stage: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
    """CLAP actor pool."""
    icsae_stage: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.25, batch_size=64))
    """IC-SAE actor pool."""

    def __post_init__(self) -> None:
        if not self.decode.require_audio:
            raise ValueError(
                "decode.require_audio is false, but every embedded row needs audio features; "
                "set it to true (clips without audio then become error rows)"
            )
        if self.decode_stage.num_gpus:
            raise ValueError("decode_stage.num_gpus must be 0: decoding runs on CPU")
        if self.num_atoms < 1 or self.rows_per_file < 1 or self.torch_threads < 1:
            raise ValueError("num_atoms, rows_per_file and torch_threads must be >= 1")
        if self.frames_per_forward < 1 or self.windows_per_forward < 1:
            raise ValueError("frames_per_forward and windows_per_forward must be >= 1")
        if not 0 < self.hop_s <= 10.0:
            raise ValueError(
                f"hop_s must be in (0, 10] seconds so CLAP windows cover the audio, got {self.hop_s}"
            )


def run_embed(config: EmbedConfig) -> RunSummary:
    """Embed an AVG manifest into feature-table Parquet files with Ray Data (resumable)."""
    if not ray.is_initialized():
        ray.init()
    start_s = time.perf_counter()
    manifest = read_manifest(config.manifest)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = manifest.filter(pc.invert(_in_output(manifest, out_dir))).select(list(MANIFEST_COLUMNS))
    written = build_dataset(pending, config).take_all() if pending.num_rows else []
    wall_s = time.perf_counter() - start_s

    in_output = pc.sum(_in_output(manifest, out_dir)).as_py() or 0
    return summarize_run(
        "embed", manifest.num_rows, pending.num_rows, written, in_output, wall_s, out_dir / METRICS_FILE
    )


def build_dataset(pending: pa.Table, config: EmbedConfig) -> ray.data.Dataset:
    """The Ray Data pipeline over `pending` manifest rows; each output row names one written file.

    Output rows: `file` (name in out_dir), `rows` (rows in it), `error_types` (one entry per error row).
    """

    common = {"torch_threads": config.torch_threads}
    dataset = input_dataset(pending, config.decode_stage, config.decode)
    dataset = dataset.map_batches(
        VisualStage,
        fn_constructor_kwargs={
            "model": config.visual_model,
            "device": stage_device(config.visual_stage),
            "frames_per_forward": config.frames_per_forward,
            **common,
        },
        **actor_pool_options(config.visual_stage),
    )
    dataset = dataset.map_batches(
        AudioStage,
        fn_constructor_kwargs={
            "model": config.audio_model,
            "device": stage_device(config.audio_stage),
            "hop_s": config.hop_s,
            "windows_per_forward": config.windows_per_forward,
            **common,
        },
        **actor_pool_options(config.audio_stage),
    )
    dataset = dataset.map_batches(
        AtomStage,
        fn_constructor_kwargs={
            "model": config.icsae_model,
            "device": stage_device(config.icsae_stage),
            "num_atoms": config.num_atoms,
            **common,
        },
        **actor_pool_options(config.icsae_stage),
    )
    return dataset.map_batches(
        write_batch,
        fn_kwargs={"out_dir": str(config.out_dir)},
        batch_format="pyarrow",
        batch_size=config.rows_per_file,
        num_cpus=WRITE_NUM_CPUS,
    )


def embed_in_process(rows: pa.Table, config: EmbedConfig) -> pa.Table:
    """The job's work without Ray, in this process: the feature table of manifest `rows`, in row order.

    Same decode, featurizers and batches (`visual_stage.batch_size` clips) as the pipeline, one stage
    after another; the baseline the Ray job is measured against, and a way to embed a few clips.
    """
    from avgeo.perception.embedder import AtomFeaturizer, AudioFeaturizer, ClipEmbedder, VisualFeaturizer

    embedder = ClipEmbedder(
        VisualFeaturizer.load(
            config.visual_model, stage_device(config.visual_stage), config.frames_per_forward
        ),
        AudioFeaturizer.load(
            config.audio_model, stage_device(config.audio_stage), config.hop_s, config.windows_per_forward
        ),
        AtomFeaturizer.load(config.icsae_model, config.num_atoms, stage_device(config.icsae_stage)),
    )
    feature_rows = []
    for batch in rows.select(list(MANIFEST_COLUMNS)).to_batches(max_chunksize=config.visual_stage.batch_size):
        manifest_rows = batch.to_pylist()
        decoded = []
        for row in manifest_rows:
            start_s = time.perf_counter()
            clip, error = decode_or_error(row["video_path"], config.decode)
            decoded.append((clip, error, time.perf_counter() - start_s))
        features = iter(embedder.embed([clip for clip, _, _ in decoded if clip is not None]))
        for row, (clip, error, decode_s) in zip(manifest_rows, decoded, strict=True):
            if clip is None:
                feature_rows.append({**row, "error": error, "timings": {"decode_s": decode_s}})
            else:
                clip_features = next(features)
                timings = {"decode_s": decode_s, **clip_features["timings"]}
                feature_rows.append({**row, **clip_features, "timings": timings})
    return features_table(feature_rows)


class VisualStage:
    """Actor: frames -> `visual_per_frame`, `visual_mean`, `visual_model`, `visual_s`; drops the frames."""

    def __init__(self, model: str, device: str, frames_per_forward: int, torch_threads: int) -> None:
        from avgeo.perception.embedder import VisualFeaturizer

        prepare_model_worker(torch_threads)
        self.featurizer = VisualFeaturizer.load(model, device, frames_per_forward)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = ok_rows(batch)
        frames = [
            np.frombuffer(batch["frames"][row].as_py(), np.uint8).reshape(batch["frames_shape"][row].as_py())
            for row in rows
        ]
        start_s = time.perf_counter()
        features = self.featurizer(frames)
        stage_s = time.perf_counter() - start_s
        batch = batch.drop_columns([name for name in DECODED_COLUMNS if name != "audio"])
        return _append_stage(batch, rows, features, "visual", self.featurizer.model, stage_s)


class AudioStage:
    """Actor: audio -> `audio_embedding`, `audio_projection`, `audio_mean`, `audio_model`, `audio_s`;
    drops the waveform."""

    def __init__(
        self, model: str, device: str, hop_s: float, windows_per_forward: int, torch_threads: int
    ) -> None:
        from avgeo.perception.embedder import AudioFeaturizer

        prepare_model_worker(torch_threads)
        self.featurizer = AudioFeaturizer.load(model, device, hop_s, windows_per_forward)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = ok_rows(batch)
        # np.frombuffer views immutable bytes; torch wants writable memory, hence the copy.
        waveforms = [np.frombuffer(batch["audio"][row].as_py(), np.float32).copy() for row in rows]
        start_s = time.perf_counter()
        features = self.featurizer(waveforms)
        stage_s = time.perf_counter() - start_s
        batch = batch.drop_columns(["audio"])
        return _append_stage(batch, rows, features, "audio", self.featurizer.model, stage_s)


class AtomStage:
    """Actor: `audio_projection` -> `atoms`, `atom_class_strength`, `icsae_model`, `icsae_s`."""

    def __init__(self, model: str, device: str, num_atoms: int, torch_threads: int) -> None:
        from avgeo.perception.embedder import AtomFeaturizer

        prepare_model_worker(torch_threads)
        self.featurizer = AtomFeaturizer.load(model, num_atoms, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = ok_rows(batch)
        dim = FEATURES_SCHEMA.field("audio_projection").type.value_type.list_size
        projections = [
            np.asarray(batch["audio_projection"][row].values.flatten(), np.float32).reshape(-1, dim)
            for row in rows
        ]
        start_s = time.perf_counter()
        features = self.featurizer(projections)
        stage_s = time.perf_counter() - start_s
        return _append_stage(batch, rows, features, "icsae", self.featurizer.model, stage_s)


def write_batch(batch: pa.Table, out_dir: str) -> pa.Table:
    """Write a batch of finished rows as one feature-table file; returns one row describing it."""
    model_names = zip(*(batch[f"{name}_model"].to_pylist() for name in MODEL_FIELDS), strict=True)
    models = [
        None if error is not None else dict(zip(MODEL_FIELDS, names, strict=True))
        for error, names in zip(batch["error"].to_pylist(), model_names, strict=True)
    ]
    timings = [
        dict(zip(TIMING_FIELDS, seconds, strict=True))
        for seconds in zip(*(batch[name].to_pylist() for name in TIMING_FIELDS), strict=True)
    ]
    batch = batch.append_column("models", feature_column("models", models))
    batch = batch.append_column("timings", feature_column("timings", timings))
    table = batch.select(FEATURES_SCHEMA.names)
    # Named by content: a retried task rewrites the same file rather than adding a copy of its rows.
    name = content_file_name(table["clip_id"].to_pylist())
    write_features(table, Path(out_dir) / name)
    error_types = [error.split(":", 1)[0] for error in table["error"].to_pylist() if error is not None]
    return pa.table(
        {
            "file": [name],
            "rows": [table.num_rows],
            "error_types": pa.array([error_types], pa.list_(pa.string())),
        }
    )


def _in_output(manifest: pa.Table, out_dir: Path) -> pa.ChunkedArray:
    """(N,) bool: whether each manifest row's clip already has a row in `out_dir`'s feature files."""
    done_ids = read_features(out_dir, columns=["clip_id"])["clip_id"].combine_chunks()
    return pc.is_in(manifest["clip_id"], value_set=done_ids)


def _append_stage(
    batch: pa.Table, rows: list[int], features: list[dict[str, Any]], stage: str, model: str, stage_s: float
) -> pa.Table:
    """Append a stage's feature columns (null on error rows), `<stage>_model` and `<stage>_s`.

    The stage's wall time is shared evenly among the batch's embedded clips.
    """
    per_row: list[dict[str, Any] | None] = [None] * batch.num_rows
    for row, row_features in zip(rows, features, strict=True):
        per_row[row] = row_features
    for name in _STAGE_COLUMNS[stage]:
        values = [None if row_features is None else row_features[name] for row_features in per_row]
        batch = batch.append_column(name, feature_column(name, values))
    share_s = stage_s / len(rows) if rows else None
    embedded = [row_features is not None for row_features in per_row]
    models = pa.array([model if ok else None for ok in embedded], pa.string())
    seconds = pa.array([share_s if ok else None for ok in embedded], pa.float32())
    return batch.append_column(f"{stage}_model", models).append_column(f"{stage}_s", seconds)
