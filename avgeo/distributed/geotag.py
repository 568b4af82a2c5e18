"""The geotag job: a folder, glob or manifest of videos -> the predictions table (`avgeo.data.predictions`).

    list (driver) -> decode (CPU tasks) -> PerceptionStage -> ReasoningStage -> PredictionStage
    (actor pools) -> Parquet files partitioned by a hash bucket of the clip id (PredictionWriter actor)

The three actor pools run the composed Geolocator's stage classes (`avgeo.pipeline`), each loading only its
own models, so a clip's row holds what `Geolocator.geolocate` returns for it. Between stages a batch is an
Arrow table: the input's `clip_id` and `video_path`, the decoded clip (`avgeo.distributed.data_stages`,
dropped once perceived), `error`, each stage's output pickled (`perception`, `reasoning`, `prediction`:
numpy arrays and plain values only), its seconds and its model versions. The prediction actor replaces
the pickled outputs with each clip's finished row values (`with_results`), so the writer
(`avgeo.distributed.prediction_files`) needs none of the model code.

Exactly one row per input: a clip that fails to decode gets its `error` in the decode task, and a clip
on which a stage raises gets "<ErrorType>: <message>" there (a failing batch is re-run clip by clip, so
one bad clip does not take its batch-mates down); an error row passes every later stage untouched.

Resume: the clip ids already in `out_dir`'s Parquet files are read before anything is decoded and left
out, so a re-run after an interruption geotags only what is missing. Each file is written whole or not at
all (temp file + rename) and named by a hash of the ids it holds, so a killed run leaves no half file and
a retried write replaces its own file instead of adding a second copy of its rows.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from avgeo.data.parquet_files import write_bytes_atomically
from avgeo.data.predictions import MODEL_FIELDS, read_predictions
from avgeo.data.video_inputs import list_videos
from avgeo.distributed.data_stages import (
    DECODED_COLUMNS,
    WRITE_NUM_CPUS,
    RunSummary,
    StageResources,
    actor_pool_options,
    decoded_clips,
    input_dataset,
    ok_rows,
    prepare_model_worker,
    stage_device,
    summarize_run,
)
from avgeo.distributed.prediction_files import RESULT_COLUMN, PredictionWriter
from avgeo.pipeline import GeolocatorConfig, PerceptionStage, PredictionStage, ReasoningStage
from avgeo.stage_outputs import Perception, Prediction, Reasoning

METRICS_FILE = "metrics.jsonl"
"""One JSON line per run in `out_dir`: what the run geotagged, skipped and how fast."""

HEATMAPS_FOLDER = "heatmaps"
"""Folder of the density PNGs inside `out_dir`."""


@dataclass
class GeotagConfig:
    """The geotag job: what to geotag, with which models, where the rows go, and each stage's resources."""

    input: str
    """A folder of videos, a glob, or a manifest (.parquet/.csv with a `video_path` column), as a local
    path or a URI pyarrow understands (s3://, gs://): see `avgeo.data.video_inputs`."""
    out_dir: Path
    """Local folder of the predictions' Parquet files, heatmaps and metrics.jsonl; a re-run skips the clips
    already here (resume keys on clip_id, so give each INPUT its own folder)."""
    geolocator: GeolocatorConfig = field(default_factory=GeolocatorConfig)
    """Models, decoding and inference settings: the same section the endpoint reads. `device` is set per
    stage from its `num_gpus`."""
    heatmaps: bool = False
    """Also write each clip's density over the globe as `heatmaps/<hash of clip id>.png`."""
    num_buckets: int = 16
    """Partition folders `bucket=KK` the rows are spread over by a hash of their clip id."""
    rows_per_file: int = 256
    """Most rows per write (one batch of the writer actor), split over the buckets they fall in; also the
    most finished work a crash can lose (rows not yet written)."""
    torch_threads: int = 1
    """torch threads per actor: small models on shared cores run fastest with 1 each."""
    decode_stage: StageResources = field(
        default_factory=lambda: StageResources(num_cpus=0.25, pool_size=2, batch_size=4)
    )
    """Decode tasks (CPU only); frames are resized as they are decoded (`geolocator.decode.frame_size`)."""
    perception_stage: StageResources = field(
        default_factory=lambda: StageResources(num_cpus=0.5, pool_size=1, batch_size=8)
    )
    """PerceptionStage actors: GeoCLIP, CLAP and the IC-SAE."""
    reasoning_stage: StageResources = field(
        default_factory=lambda: StageResources(num_cpus=0.5, pool_size=1, batch_size=8)
    )
    """ReasoningStage actors: the MLLM."""
    prediction_stage: StageResources = field(
        default_factory=lambda: StageResources(num_cpus=0.5, pool_size=1, batch_size=8)
    )
    """PredictionStage actors: the RFM head (and the heatmaps)."""

    def __post_init__(self) -> None:
        if not self.geolocator.decode.require_audio:
            raise ValueError(
                "geolocator.decode.require_audio is false, but perception needs each clip's audio; set it "
                "to true (clips without audio then become error rows)"
            )
        if self.decode_stage.num_gpus:
            raise ValueError("decode_stage.num_gpus must be 0: decoding runs on CPU")
        if self.num_buckets < 1 or self.rows_per_file < 1 or self.torch_threads < 1:
            raise ValueError("num_buckets, rows_per_file and torch_threads must be >= 1")


def run_geotag(config: GeotagConfig) -> RunSummary:
    """Geotag every video an INPUT names into partitioned predictions Parquet with Ray Data (resumable)."""
    if not ray.is_initialized():
        ray.init()
    start_s = time.perf_counter()
    inputs = list_videos(config.input)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = inputs.filter(pc.invert(_in_output(inputs, out_dir)))
    written = build_dataset(pending, config).take_all() if pending.num_rows else []
    wall_s = time.perf_counter() - start_s

    in_output = pc.sum(_in_output(inputs, out_dir)).as_py() or 0
    return summarize_run(
        "geotag", inputs.num_rows, pending.num_rows, written, in_output, wall_s, out_dir / METRICS_FILE
    )


def build_dataset(pending: pa.Table, config: GeotagConfig) -> ray.data.Dataset:
    """The Ray Data pipeline over `pending` input rows (`clip_id`, `video_path`); each output row names
    one written file: `file` (path in out_dir), `rows` (rows in it), `error_types` (one per error row)."""
    dataset = input_dataset(pending, config.decode_stage, config.geolocator.decode)
    heatmaps_dir = str(Path(config.out_dir) / HEATMAPS_FOLDER) if config.heatmaps else None
    for actor, stage, extra in (
        (PerceptionActor, config.perception_stage, {}),
        (ReasoningActor, config.reasoning_stage, {}),
        (PredictionActor, config.prediction_stage, {"heatmaps_dir": heatmaps_dir}),
    ):
        dataset = dataset.map_batches(
            actor,
            fn_constructor_kwargs={
                "config": dataclasses.replace(config.geolocator, device=stage_device(stage)),
                "torch_threads": config.torch_threads,
                **extra,
            },
            **actor_pool_options(stage),
        )
    writer = StageResources(num_cpus=WRITE_NUM_CPUS, pool_size=1, batch_size=config.rows_per_file)
    return dataset.map_batches(
        PredictionWriter,
        fn_constructor_kwargs={"out_dir": str(config.out_dir), "num_buckets": config.num_buckets},
        **actor_pool_options(writer),
    )


STAGE_OUTPUTS = ("perception", "reasoning", "prediction")
"""Columns of the three stages' pickled outputs, in order."""


class StageFailure(str):
    """A clip's "<ErrorType>: <message>" in place of a stage's output for it."""


def isolated(run: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
    """`run(items)`; if the batch raises, each item is run alone and a failing one gets a `StageFailure`."""
    try:
        return run(items)
    except Exception:
        # Any exception: one clip's failure must become its own error row, never a lost batch or job.
        results = []
        for item in items:
            try:
                results.extend(run([item]))
            except Exception as exc:
                results.append(StageFailure(f"{type(exc).__name__}: {exc}"))
        return results


class _StageActor(abc.ABC):
    """One Geolocator stage over Arrow batches: reads its input, appends its pickled `output`, seconds per
    clip as `timing` and a `model_<name>` column per model; a clip it fails on gets an `error`."""

    input_column = ""
    """Column of the pickled outputs of the stage before (empty for the first stage)."""
    output = ""
    """Column of this stage's pickled outputs."""
    timing = ""
    """`timings` field of the stage's seconds per clip."""

    def __init__(self, torch_threads: int) -> None:
        prepare_model_worker(torch_threads)
        self.models: dict[str, str] = {}

    @abc.abstractmethod
    def run(self, inputs: list[Any]) -> list[Any]:
        """The stage's outputs for a batch of inputs, in order."""

    def inputs(self, batch: pa.Table, rows: list[int]) -> list[Any]:
        """The stage's inputs for the batch's `rows`."""
        return [pickle.loads(batch[self.input_column][row].as_py()) for row in rows]

    def finish(self, batch: pa.Table) -> pa.Table:
        """The batch as the next stage gets it."""
        return batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = ok_rows(batch)
        start_s = time.perf_counter()
        outputs = isolated(self.run, self.inputs(batch, rows)) if rows else []
        share_s = (time.perf_counter() - start_s) / len(rows) if rows else None
        batch = append_outputs(batch, rows, outputs, self.output, self.timing, share_s, self.models)
        return self.finish(batch)


class PerceptionActor(_StageActor):
    """Actor: decoded clips -> `perception` (`PerceptionStage`); drops the decoded frames and audio."""

    output, timing = "perception", "perceive_s"

    def __init__(self, config: GeolocatorConfig, torch_threads: int) -> None:
        super().__init__(torch_threads)
        self.stage = PerceptionStage.from_config(config)
        self.models = self.stage.models
        self.sample_rate = config.decode.sample_rate

    def inputs(self, batch: pa.Table, rows: list[int]) -> list[Any]:
        return decoded_clips(batch, rows, self.sample_rate)

    def run(self, inputs: list[Any]) -> list[Perception]:
        return self.stage.perceive(inputs)

    def finish(self, batch: pa.Table) -> pa.Table:
        return batch.drop_columns(list(DECODED_COLUMNS))


class ReasoningActor(_StageActor):
    """Actor: `perception` -> `reasoning` (`ReasoningStage`, the MLLM)."""

    input_column, output, timing = "perception", "reasoning", "reason_s"

    def __init__(self, config: GeolocatorConfig, torch_threads: int) -> None:
        super().__init__(torch_threads)
        self.stage = ReasoningStage.from_config(config)
        self.models = self.stage.models

    def run(self, inputs: list[Any]) -> list[Reasoning]:
        return self.stage.reason(inputs)


class PredictionActor(_StageActor):
    """Actor: `reasoning` -> `prediction` (`PredictionStage`, the RFM head), then, with `heatmaps_dir`,
    each clip's density PNG and its `heatmap_path` (relative to out_dir) and `heatmap_s`."""

    input_column, output, timing = "reasoning", "prediction", "predict_s"

    def __init__(self, config: GeolocatorConfig, torch_threads: int, heatmaps_dir: str | None) -> None:
        super().__init__(torch_threads)
        self.stage = PredictionStage.from_config(config)
        self.models = self.stage.models
        self.heatmaps_dir = None if heatmaps_dir is None else Path(heatmaps_dir)

    def run(self, inputs: list[Any]) -> list[Prediction]:
        return self.stage.predict(inputs)

    def finish(self, batch: pa.Table) -> pa.Table:
        if self.heatmaps_dir is not None:
            batch = self._with_heatmaps(batch)
        return with_results(batch)

    def _with_heatmaps(self, batch: pa.Table) -> pa.Table:
        rows = ok_rows(batch)
        jobs = [
            (batch["clip_id"][row].as_py(), pickle.loads(batch["reasoning"][row].as_py()).psi,
             pickle.loads(batch["prediction"][row].as_py()).latlon_deg)
            for row in rows
        ]  # fmt: skip
        start_s = time.perf_counter()
        paths = isolated(lambda items: [self._heatmap(*item) for item in items], jobs) if rows else []
        share_s = (time.perf_counter() - start_s) / len(rows) if rows else None
        return append_outputs(batch, rows, paths, "heatmap_path", "heatmap_s", share_s, {}, pickled=False)

    def _heatmap(self, clip_id: str, psi: Any, latlon_deg: tuple[float, float]) -> str:
        name = f"{hashlib.sha256(clip_id.encode()).hexdigest()[:16]}.png"
        write_bytes_atomically(self.stage.density_png(psi, latlon_deg), self.heatmaps_dir / name)
        return f"{HEATMAPS_FOLDER}/{name}"


def append_outputs(
    batch: pa.Table,
    rows: Sequence[int],
    outputs: Sequence[Any],
    output: str,
    timing: str,
    share_s: float | None,
    models: dict[str, str],
    pickled: bool = True,
) -> pa.Table:
    """Append a stage's `output` column (pickled, null on rows it did not produce), its seconds per clip
    as `timing` and `model_<name>` columns; a `StageFailure` becomes the row's `error`."""
    values: list[Any] = [None] * batch.num_rows
    seconds: list[float | None] = [None] * batch.num_rows
    errors = batch["error"].to_pylist()
    for row, value in zip(rows, outputs, strict=True):
        seconds[row] = share_s
        if isinstance(value, StageFailure):
            errors[row] = str(value)
        else:
            values[row] = pickle.dumps(value, protocol=5) if pickled else value
    batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    batch = batch.append_column(output, pa.array(values, pa.large_binary() if pickled else pa.string()))
    batch = batch.append_column(timing, pa.array(seconds, pa.float32()))
    for name, version in models.items():
        produced = [version if value is not None else None for value in values]
        batch = batch.append_column(f"model_{name}", pa.array(produced, pa.string()))
    return batch


def with_results(batch: pa.Table) -> pa.Table:
    """The batch with each geotagged clip's `result_row`, pickled, as `RESULT_COLUMN`, in place of the
    stages' pickled outputs and the `model_<name>` columns: all the write stage needs."""
    results: list[bytes | None] = [None] * batch.num_rows
    for row in ok_rows(batch):
        stages = (pickle.loads(batch[column][row].as_py()) for column in STAGE_OUTPUTS)
        models = {name: batch[f"model_{name}"][row].as_py() for name in MODEL_FIELDS}
        results[row] = pickle.dumps(result_row(*stages, models), protocol=5)
    model_columns = [name for name in batch.column_names if name.startswith("model_")]
    batch = batch.drop_columns([*STAGE_OUTPUTS, *model_columns])
    return batch.append_column(RESULT_COLUMN, pa.array(results, pa.large_binary()))


def result_row(
    perception: Perception, reasoning: Reasoning, prediction: Prediction, models: dict[str, str]
) -> dict[str, Any]:
    """The predictions-table columns from `lat` to `models` of one geotagged clip."""
    answer = reasoning.answer_latlon_deg
    return {
        "lat": prediction.latlon_deg[0],
        "lon": prediction.latlon_deg[1],
        "log_density": prediction.log_density,
        "modes": [
            {
                "lat": mode.latlon_deg[0],
                "lon": mode.latlon_deg[1],
                "probability": mode.probability,
                "log_density": mode.log_density,
            }
            for mode in prediction.modes
        ],
        "credible_regions": [
            {"level": level, "area_km2": area} for level, area in prediction.credible_areas_km2.items()
        ],
        "atoms": perception.atoms,
        "completion": reasoning.completion,
        "trace": reasoning.trace,
        "answer_lat": None if answer is None else answer[0],
        "answer_lon": None if answer is None else answer[1],
        "parse_error": reasoning.parse_error,
        "models": {name: models[name] for name in MODEL_FIELDS},
    }


def _in_output(inputs: pa.Table, out_dir: Path) -> pa.ChunkedArray:
    """(N,) bool: whether each input's clip already has a row in `out_dir`'s predictions files."""
    done_ids = read_predictions(out_dir, columns=["clip_id"])["clip_id"].combine_chunks()
    return pc.is_in(inputs["clip_id"], value_set=done_ids)
