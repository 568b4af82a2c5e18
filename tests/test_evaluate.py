"""Evaluation: scores with known answers (an exact point oracle, a uniform cell classifier), the tables'
layout, and the job scoring every registered model and late-fusion pair into Markdown, JSON and heatmaps."""

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import s2sphere
import torch
from PIL import Image
from test_rfm_job import write_synthetic_features

from avgeo.config import ConfigError, load_config
from avgeo.data.features import (
    AUDIO_DIM,
    NUM_AUDIOSET_CLASSES,
    VISUAL_DIM,
    embedded_rows,
    feature_matrix,
    labels_latlon,
    read_features,
)
from avgeo.distributed.evaluate import (
    HEATMAP_DIR,
    JSON_FILE,
    MARKDOWN_FILE,
    EvaluateConfig,
    evaluate_row,
    row_specs,
    run_evaluate,
)
from avgeo.distributed.model_registry import read_model_entry, save_trained_model
from avgeo.evaluation import GROUPS, EvaluationRow, evaluate_predictor, markdown_tables
from avgeo.geo.sphere import SPHERE_AREA_SR
from avgeo.prediction.baselines import (
    CellClassifierConfig,
    CellClassifierHead,
    RegressionConfig,
    RegressionHead,
    class_cells,
)
from avgeo.prediction.heads import FlowHead
from avgeo.prediction.heatmap import FIGURE_SIZE_PX
from avgeo.prediction.vector_field import RFMConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "evaluate"


@pytest.fixture(scope="module")
def features_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("features") / "features.parquet"
    write_synthetic_features(path)
    return path


def _rows(features_path: Path, split: str, kind: str) -> tuple[torch.Tensor, np.ndarray]:
    table = embedded_rows(read_features(features_path))
    table = table.filter(pc.equal(table["split"], split))
    return torch.from_numpy(feature_matrix(table, kind)), labels_latlon(table)


def _uniform_classifier(train_latlon_deg: np.ndarray, feature_dim: int) -> CellClassifierHead:
    """A level-4 cell classifier whose output layer is zero: every class cell gets probability 1 / C."""
    head = CellClassifierHead(
        CellClassifierConfig(
            feature_dim=feature_dim, s2_level=4, cell_tokens=class_cells(train_latlon_deg, 4), width=8
        )
    )
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.zero_()
    return head.eval()


def test_an_exact_point_oracle_scores_perfectly(features_path):
    features, truth_latlon_deg = _rows(features_path, "test", "visual")
    # visual_mean starts with the location's unit vector: one linear layer picking it out is exact.
    oracle = RegressionHead(RegressionConfig(feature_dim=VISUAL_DIM, num_layers=1))
    with torch.no_grad():
        oracle.mlp[0].weight.zero_()
        oracle.mlp[0].weight[:, :3] = torch.eye(3)
        oracle.mlp[0].bias.zero_()
    metrics = evaluate_predictor(oracle, features, truth_latlon_deg, num_samples=4, prdc_k=2, batch_size=5)
    assert [metrics[f"acc_{km}km"] for km in (1, 25, 200, 750, 2500)] == [1.0] * 5
    assert metrics["median_km"] < 0.01 and metrics["geoscore"] == pytest.approx(5000.0, rel=1e-6)
    assert metrics["nll"] is None
    assert metrics["precision"] == 1.0 and metrics["coverage"] == 1.0
    assert (metrics["num_clips"], metrics["num_locations"]) == (16, 4)


def test_nll_of_a_uniform_cell_classifier_is_exact(features_path):
    features, truth_latlon_deg = _rows(features_path, "train", "visual")
    head = _uniform_classifier(truth_latlon_deg, VISUAL_DIM)
    metrics = evaluate_predictor(head, features, truth_latlon_deg, num_samples=8, prdc_k=2, batch_size=5)
    # p(truth) = (1 − w) / (C · area of its cell) + w / 4π, with S2's exact cell areas.
    num_classes, weight = len(head.config.cell_tokens), head.config.uniform_weight
    expected = []
    for lat, lon in truth_latlon_deg:
        cell = s2sphere.Cell(s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat, lon)).parent(4))
        density = (1.0 - weight) / (num_classes * cell.exact_area()) + weight / SPHERE_AREA_SR
        expected.append(-math.log(density))
    assert metrics["nll"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert 0.0 <= metrics["recall"] <= 1.0 and 0.0 <= metrics["precision"] <= 1.0


def test_samples_per_clip_cannot_exceed_the_draws(features_path):
    features, truth_latlon_deg = _rows(features_path, "test", "visual")
    with pytest.raises(ValueError, match="samples_per_clip 5"):
        evaluate_predictor(
            _uniform_classifier(truth_latlon_deg, VISUAL_DIM), features, truth_latlon_deg, 4, 5
        )


def test_markdown_groups_rows_like_table_1_and_lists_table_3():
    def row(model, group, accuracy, nll):
        metrics = {f"acc_{km}km": accuracy for km in (25, 200, 750, 2500)}
        metrics |= {"median_km": 1234.4, "geoscore": 2345.6, "nll": nll}
        metrics |= {"precision": 0.5, "recall": 0.25, "density": 1.125, "coverage": 0.75}
        return EvaluationRow(model, group, metrics)

    rows = [
        row("av", "Audiovisual", 0.3, -0.5),
        row("a", "Audio-only", 0.05, None),
        row("v", "Visual-only", 0.123, 1.0),
    ]
    markdown = markdown_tables(rows, "title")
    lines = markdown.splitlines()
    headers = [lines.index(f"| *{group}* | | | | | | |") for group in GROUPS]
    assert headers == sorted(headers)
    assert "| v | 12.3 | 12.3 | 12.3 | 12.3 | 1234 | 2346 |" in lines
    assert "| a | — | 0.50 | 0.25 | 1.12 | 0.75 |" in lines
    table3_rows = lines[lines.index("## Probabilistic quality (Table 3 layout)") + 4 :]  # after the head
    assert [line.split(" | ")[0] for line in table3_rows] == ["| v", "| a", "| av"]


@pytest.mark.parametrize("name", ["tiny", "h100"])
def test_shipped_configs_load(name):
    config = load_config(EvaluateConfig, CONFIGS / f"{name}.yaml")
    assert config.split == "test" and config.late_fusion
    assert (config.gpus_per_task > 0) == (name == "h100")


def test_config_and_registry_errors(tmp_path, features_path):
    with pytest.raises(ConfigError, match="samples_per_clip 9"):
        load_config(EvaluateConfig, {"features": "f", "num_samples": 8, "samples_per_clip": 9})
    with pytest.raises(ConfigError, match="no trained models"):
        run_evaluate(
            load_config(EvaluateConfig, {"features": str(features_path), "models_dir": str(tmp_path)})
        )


@pytest.mark.ray
def test_run_evaluate_scores_every_model_and_late_fusion_pair(ray_local, features_path, tmp_path):
    _, train_latlon_deg = _rows(features_path, "train", "visual")
    registry = tmp_path / "models"
    heads = {
        ("rfm", "visual"): FlowHead(RFMConfig(cond_dim=VISUAL_DIM, width=16, cond_embed_dim=8, num_steps=2)),
        ("classification", "visual"): _uniform_classifier(train_latlon_deg, VISUAL_DIM),
        ("classification", "audio"): _uniform_classifier(train_latlon_deg, AUDIO_DIM),
        ("regression", "atoms"): RegressionHead(RegressionConfig(feature_dim=NUM_AUDIOSET_CLASSES, width=8)),
    }
    for (head_type, kind), head in heads.items():
        save_trained_model(registry / f"{head_type}-{kind}", head, kind, {"epochs": 0})
    config = load_config(
        EvaluateConfig,
        {
            "features": str(features_path),
            "models_dir": str(registry),
            "out_dir": str(tmp_path / "evaluate"),
            "num_samples": 8,
            "prdc_k": 2,
            "heatmap_resolution_deg": 6.0,
            "cpus_per_task": 0.5,
        },
    )
    summary = run_evaluate(config)

    fusion = "late-fusion(classification-visual + classification-audio)"  # rfm has no audio partner
    names = ["classification-audio", "classification-visual", "regression-atoms", "rfm-visual", fusion]
    assert [row.model for row in summary.rows] == names
    groups = ["Audio-only", "Visual-only", "Audio-only", "Visual-only", "Audiovisual"]
    assert [row.group for row in summary.rows] == groups
    assert (tmp_path / "evaluate" / MARKDOWN_FILE).read_text() == summary.markdown
    assert "| regression-atoms | — |" in summary.markdown
    written = json.loads((tmp_path / "evaluate" / JSON_FILE).read_text())
    assert written["rows"] == [asdict(row) for row in summary.rows]
    assert written["config"]["num_samples"] == 8

    # A row scored in a Ray task is the row scored here with the same seed.
    features, truth_latlon_deg = _rows(features_path, "test", "visual")
    direct = evaluate_predictor(
        read_model_entry(registry / "classification-visual").load(),
        features,
        truth_latlon_deg,
        num_samples=8,
        prdc_k=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert summary.rows[1].metrics == pytest.approx(direct)

    # One heatmap per probabilistic row (the first test clip), none for the regression head.
    assert sorted(path.parent for path in summary.heatmaps) == [tmp_path / "evaluate" / HEATMAP_DIR] * 4
    assert not any("regression" in path.name for path in summary.heatmaps)
    for path in summary.heatmaps:
        assert Image.open(path).size == FIGURE_SIZE_PX


def test_gallery_row_reads_the_visual_features(features_path, tmp_path):
    config = load_config(
        EvaluateConfig,
        {
            "features": str(features_path),
            "models_dir": str(tmp_path / "empty"),
            "out_dir": str(tmp_path / "evaluate"),
            "num_samples": 4,
            "prdc_k": 2,
            "geoclip_gallery_size": 300,
            "gallery_top_k": 5,
        },
    )
    (spec,) = row_specs(config)
    assert (spec.name, spec.group, spec.feature_kinds) == ("geoclip-gallery", "Visual-only", ("visual",))
    threads = torch.get_num_threads()
    try:
        row, heatmaps = evaluate_row(spec, config)  # in-process: the same function the Ray task runs
    finally:
        torch.set_num_threads(threads)  # evaluate_row sets the task's thread count
    assert row.metrics["nll"] is None and heatmaps == []  # a distribution over gallery points, no density
    assert row.metrics["num_clips"] == 16 and 0.0 <= row.metrics["acc_2500km"] <= 1.0
