"""The evaluation job: score every registered model on the test clips and write the method's tables.

    model registry (<models_dir>/*/model.json) + late-fusion pairs + GeoCLIP's gallery (optional)
    -> one Ray task per row (GPU or CPU) -> tables.md + tables.json (+ heatmaps/*.png)

Rows: every trained model (head × feature kind); for each probabilistic head type, the late fusion of
each visual-only model with each audio-only model (`audio` or `atoms`); and, when asked, GeoCLIP's own
gallery prediction, which reads the visual features (GeoCLIP image features in every checkpoint).
Each task reads the feature table itself (a shared path on a cluster). A model over ψ (`feature_kind:
psi`) is scored on the test clips' ψ under the MLLM its `model.json` names, computed as the Geolocator
does and cached under `<out_dir>/psi/` (`avgeo.psi.cached_psi`); it sits in the Audiovisual group, as ψ
reads both the frames and the atoms.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from avgeo.config import ConfigError, config_to_dict
from avgeo.data.features import embedded_split, feature_matrix, labels_latlon
from avgeo.distributed.model_registry import HEAD_TYPES, MODEL_FILE, ModelEntry, model_entries
from avgeo.distributed.rfm_training import FEATURE_COLUMNS
from avgeo.evaluation import GROUP_OF_FEATURE_KIND, EvaluationRow, evaluate_predictor, markdown_tables
from avgeo.prediction.baselines import GalleryPredictor, LateFusion
from avgeo.prediction.heads import GeoPredictor
from avgeo.prediction.heatmap import plot_density, predictor_log_density_fn
from avgeo.psi import PSI, PSI_INPUT_COLUMNS, cached_psi, load_reasoning_stage, read_psi

MARKDOWN_FILE = "tables.md"
"""Table 1 and Table 3 layouts, as printed."""

JSON_FILE = "tables.json"
"""The config and every row's metrics (`EvaluationRow` as a dict; accuracies as fractions)."""

HEATMAP_DIR = "heatmaps"
"""PNG densities of the first test clips, one file per (row, clip)."""

PSI_DIR = "psi"
"""Folder under `out_dir` caching the test clips' ψ per MLLM (`avgeo.psi.cached_psi` files)."""

GROUP_OF_INPUT = {**GROUP_OF_FEATURE_KIND, PSI: "Audiovisual"}
"""The Table 1 group of a model by what it reads: ψ is computed from the frames and the atoms."""


@dataclass
class EvaluateConfig:
    """The evaluation job: which clips, which models, how many samples, where the tables go."""

    features: Path
    """Feature table (a Parquet file or a folder of them) written by the embedding job."""

    models_dir: Path = Path("out/models")
    """Model registry written by the rfm job; every sub-folder with a model.json is a row."""

    out_dir: Path = Path("out/evaluate")
    """Where tables.md, tables.json and heatmaps/ go."""

    split: str = "test"
    """Feature-table rows of this split (and without an error) are scored."""

    num_samples: int = 64
    """Draws per clip: the candidates of the point estimate for sampling heads (RFM, late fusion)."""

    samples_per_clip: int = 1
    """Of those, how many per clip join the pool scored by precision / recall / density / coverage."""

    prdc_k: int = 5
    """k of the k-nearest-neighbour balls of precision / recall / density / coverage."""

    batch_size: int = 256
    """Clips per prediction call."""

    psi_batch_size: int = 16
    """Clips per MLLM call while computing the test clips' ψ for a `psi` model."""

    late_fusion: bool = True
    """Add a late-fusion row for every visual-only × audio-only pair of one probabilistic head type."""

    geoclip_gallery_size: int | None = None
    """Add GeoCLIP's gallery row, keeping the first this many of its 100,000 GPS points; null: no row."""

    gallery_top_k: int = 100
    """Gallery points per clip kept as GeoCLIP's candidates and sampled from."""

    heatmap_clips: int = 1
    """Density heatmaps (PNG) drawn per probabilistic row, for the first clips of the split."""

    heatmap_resolution_deg: float = 2.0
    """Grid step of the heatmaps, degrees (must divide 180)."""

    seed: int = 0
    """Seed of every row's draws."""

    cpus_per_task: float = 1.0
    """CPUs reserved per row's task; fractions let tasks share cores."""

    gpus_per_task: float = 0.0
    """GPUs per row's task; above 0 the heads run on CUDA."""

    torch_threads: int = 1
    """torch threads per task."""

    def __post_init__(self) -> None:
        if not 1 <= self.samples_per_clip <= self.num_samples:
            raise ConfigError(
                f"samples_per_clip {self.samples_per_clip} must be in [1, num_samples = {self.num_samples}]"
            )
        positive = (self.prdc_k, self.batch_size, self.psi_batch_size, self.gallery_top_k, self.torch_threads)
        if min(positive) < 1:
            raise ConfigError(
                "prdc_k, batch_size, psi_batch_size, gallery_top_k and torch_threads must be >= 1"
            )
        if self.heatmap_clips < 0 or self.cpus_per_task < 0 or self.gpus_per_task < 0:
            raise ConfigError("heatmap_clips, cpus_per_task and gpus_per_task must be >= 0")
        if self.geoclip_gallery_size is not None and self.geoclip_gallery_size < 1:
            raise ConfigError("geoclip_gallery_size must be >= 1, or null for no gallery row")


@dataclass(frozen=True)
class RowSpec:
    """What one row evaluates, before anything is loaded."""

    name: str
    """Row label."""
    group: str
    """Table 1 group."""
    kind: Literal["model", "late_fusion", "gallery"]
    """A registered model, the late fusion of two of them, or GeoCLIP's gallery."""
    models: tuple[ModelEntry, ...]
    """The registered model, or the visual then the audio model (late fusion); none for the gallery."""
    feature_kinds: tuple[str, ...]
    """Feature matrices the predictor reads, side by side in this order."""


@dataclass
class EvaluateSummary:
    """What one run of the evaluation job wrote."""

    rows: list[EvaluationRow]
    """Every row, in table order."""
    markdown: str
    """The tables as printed and written to tables.md."""
    markdown_path: Path
    json_path: Path
    heatmaps: list[Path]
    """PNG files written."""
    wall_s: float

    def report(self) -> str:
        """The tables plus one line on where they went."""
        return (
            f"{self.markdown}\nwrote {self.markdown_path}, {self.json_path} and {len(self.heatmaps)} heatmaps"
        )


def run_evaluate(config: EvaluateConfig) -> EvaluateSummary:
    """Score the registered models (plus late fusion, GeoCLIP's gallery); write Markdown + JSON tables."""
    import ray

    start_s = time.perf_counter()
    config = _absolute_paths(config)
    specs = row_specs(config)
    if not specs:
        raise ConfigError(
            f"{config.models_dir}: no trained models (folders with {MODEL_FILE}); run the rfm job first, "
            "or set geoclip_gallery_size for the gallery row"
        )
    if not ray.is_initialized():
        ray.init()
    task = ray.remote(evaluate_row).options(num_cpus=config.cpus_per_task, num_gpus=config.gpus_per_task)
    results = ray.get([task.remote(spec, config) for spec in specs])
    rows = [row for row, _ in results]
    heatmaps = [path for _, paths in results for path in paths]

    truth = labels_latlon(_test_rows(config))
    title = (
        f"Evaluation on {config.features.name}, split {config.split}: {len(truth)} clips at "
        f"{len(np.unique(truth, axis=0))} locations"
    )
    markdown = markdown_tables(rows, title)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = config.out_dir / MARKDOWN_FILE
    markdown_path.write_text(markdown)
    json_path = config.out_dir / JSON_FILE
    report = {"config": config_to_dict(config), "rows": [asdict(row) for row in rows]}
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    summary = EvaluateSummary(
        rows, markdown, markdown_path, json_path, heatmaps, time.perf_counter() - start_s
    )
    print(summary.report())
    return summary


def row_specs(config: EvaluateConfig) -> list[RowSpec]:
    """The rows to evaluate: registered models sorted by name, then late-fusion pairs, then the gallery."""
    entries = model_entries(config.models_dir)
    specs = [
        RowSpec(entry.name, GROUP_OF_INPUT[entry.feature_kind], "model", (entry,), (entry.feature_kind,))
        for entry in entries
    ]
    if config.late_fusion:
        specs += [
            RowSpec(
                f"late-fusion({visual.name} + {audio.name})",
                "Audiovisual",
                "late_fusion",
                (visual, audio),
                (visual.feature_kind, audio.feature_kind),
            )
            for visual in entries
            for audio in entries
            if visual.feature_kind == "visual"
            and GROUP_OF_INPUT[audio.feature_kind] == "Audio-only"
            and visual.head_type == audio.head_type
            and HEAD_TYPES[visual.head_type].has_density
        ]
    if config.geoclip_gallery_size is not None:
        specs.append(RowSpec("geoclip-gallery", "Visual-only", "gallery", (), ("visual",)))
    return specs


def evaluate_row(spec: RowSpec, config: EvaluateConfig) -> tuple[EvaluationRow, list[Path]]:
    """Score one row on the test clips and draw its heatmaps (runs as a Ray task, or anywhere)."""
    torch.set_num_threads(config.torch_threads)
    device = "cuda" if config.gpus_per_task > 0 else "cpu"
    table = _test_rows(config, with_psi_inputs=PSI in spec.feature_kinds)
    blocks = [
        _test_psi(spec.models[0], table, config, device) if kind == PSI else feature_matrix(table, kind)
        for kind in spec.feature_kinds
    ]
    features = torch.from_numpy(np.concatenate(blocks, axis=1))
    truth_latlon_deg = labels_latlon(table)
    predictor = _build_predictor(spec, config, device, first_block_width=blocks[0].shape[1])
    metrics = evaluate_predictor(
        predictor,
        features,
        truth_latlon_deg,
        num_samples=config.num_samples,
        samples_per_clip=config.samples_per_clip,
        prdc_k=config.prdc_k,
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    heatmaps = []
    if predictor.has_density:
        generator = torch.Generator().manual_seed(config.seed)
        for index in range(min(config.heatmap_clips, len(features))):
            clip_features = features[index]
            with torch.no_grad():
                prediction = predictor.predict(clip_features[None], config.num_samples, generator)
            clip_id = table["clip_id"][index].as_py()
            heatmaps.append(
                plot_density(
                    predictor_log_density_fn(predictor, clip_features),
                    config.out_dir / HEATMAP_DIR / _file_name(f"{spec.name}-{clip_id}.png"),
                    truth_latlon_deg=tuple(truth_latlon_deg[index]),
                    estimate_latlon_deg=tuple(prediction.point_latlon_deg[0].tolist()),
                    resolution_deg=config.heatmap_resolution_deg,
                    title=f"{spec.name}: clip {clip_id}",
                )
            )
    return EvaluationRow(spec.name, spec.group, metrics), heatmaps


def _build_predictor(
    spec: RowSpec, config: EvaluateConfig, device: str, first_block_width: int
) -> GeoPredictor:
    if spec.kind == "model":
        return spec.models[0].load(device)
    if spec.kind == "late_fusion":
        visual, audio = (entry.load(device) for entry in spec.models)
        return LateFusion(visual, audio, visual_dim=first_block_width)
    from avgeo.perception.geoclip_gallery import GeoCLIPGallery  # geoclip's import is slow: only when asked

    return GalleryPredictor(
        GeoCLIPGallery.from_geoclip_package(config.geoclip_gallery_size), config.gallery_top_k
    )


def _test_psi(entry: ModelEntry, table: pa.Table, config: EvaluateConfig, device: str) -> np.ndarray:
    """(N, H) ψ of the test clips under the MLLM that `entry`, a psi model, was trained on."""
    stage = load_reasoning_stage(entry.mllm, device)
    psi_file = cached_psi(stage, table, config.out_dir / PSI_DIR, config.psi_batch_size)
    return read_psi(psi_file, table["clip_id"].to_pylist())


def _test_rows(config: EvaluateConfig, with_psi_inputs: bool = False) -> pa.Table:
    columns = [*FEATURE_COLUMNS, *PSI_INPUT_COLUMNS] if with_psi_inputs else ["clip_id", *FEATURE_COLUMNS]
    return embedded_split(config.features, config.split, columns, "`split`")


def _file_name(label: str) -> str:
    """`label` with every run of characters other than letters, digits, `.`, `_`, `-` made one `_`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def _absolute_paths(config: EvaluateConfig) -> EvaluateConfig:
    """Tasks may run on other nodes: hand them absolute paths."""
    return replace(
        config,
        features=config.features.resolve(),
        models_dir=config.models_dir.resolve(),
        out_dir=config.out_dir.resolve(),
    )
