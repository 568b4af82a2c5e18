"""ψ features on real avg-synth clips embedded by the tiny encoders: the ψ of a feature table's rows is the
Geolocator's ψ of the same clips, cached per MLLM; a ψ head trains through the rfm job and then serves as
the Geolocator's prediction head, as GRPO's R_calib head and as a row of the evaluation job."""

import contextlib
import dataclasses
import io
import json

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from avgeo.config import load_config
from avgeo.data.decode import DecodeConfig, decode_clip
from avgeo.data.features import VISUAL_DIM, features_table, read_features, write_features
from avgeo.data.manifest import read_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.distributed import evaluate
from avgeo.distributed.evaluate import EvaluateConfig, evaluate_row, row_specs
from avgeo.distributed.grpo import GRPOConfig, build_calib_head
from avgeo.distributed.model_registry import read_model_entry, save_trained_model
from avgeo.distributed.rfm import PSI_DIR, RFMJobConfig, run_rfm
from avgeo.distributed.rfm_training import training_rows
from avgeo.perception.checkpoints import CheckpointError
from avgeo.perception.embedder import AtomFeaturizer, AudioFeaturizer, ClipEmbedder, VisualFeaturizer
from avgeo.pipeline import GeolocatorConfig, PerceptionStage, PredictionStage
from avgeo.prediction.heads import FlowHead
from avgeo.prediction.vector_field import RFMConfig
from avgeo.psi import (
    PsiError,
    cached_psi,
    clip_psi,
    load_reasoning_stage,
    psi_key,
    read_psi,
    table_perceptions,
)
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig

# 12 places, one 1 s clip each; 8 of them are train places (the splits are location-disjoint).
SYNTH = dataclasses.replace(synth_preset("ci"), n_locations=12, clips_per_location=1, clip_duration_s=1.0)
MLLM = MLLMConfig(max_new_tokens=12, temperature=0.0, num_frames=4, max_atoms=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The decoded clips (every third with 3 frames, the others 4, so ψ sees clips of two lengths) and
    their manifest rows."""
    manifest = read_manifest(run_synth(SYNTH, tmp_path_factory.mktemp("avg-synth"), seed=0))
    stories = manifest.to_pylist()
    decoded = [
        decode_clip(story["video_path"], DecodeConfig(num_frames=3 if index % 3 == 0 else 4))
        for index, story in enumerate(stories)
    ]
    return decoded, stories


@pytest.fixture(scope="module")
def embedder():
    return ClipEmbedder(
        VisualFeaturizer.load("tiny"), AudioFeaturizer.load("tiny"), AtomFeaturizer.load("tiny", 4)
    )


@pytest.fixture(scope="module")
def features_path(clips, embedder, tmp_path_factory):
    """The clips' feature table, as the embedding job writes it (the same featurizers)."""
    decoded, stories = clips
    rows = [
        {**{key: story[key] for key in ("clip_id", "video_path", "split", "lat", "lon")}, **features}
        for story, features in zip(stories, embedder.embed(decoded), strict=True)
    ]
    return write_features(features_table(rows), tmp_path_factory.mktemp("features") / "features.parquet")


@pytest.fixture(scope="module")
def features(features_path):
    return read_features(features_path)


@pytest.fixture(scope="module")
def stage():
    return load_reasoning_stage(MLLM)


def test_psi_of_table_rows_is_the_geolocators_psi_of_their_clips(clips, embedder, features, stage):
    decoded, _ = clips
    perceptions = PerceptionStage(embedder).perceive(decoded)
    geolocator_psi = np.stack([reasoning.psi for reasoning in stage.reason(perceptions)])
    assert geolocator_psi.shape == (len(decoded), stage.psi_dim)

    psi = clip_psi(stage, features, batch_size=5)
    np.testing.assert_allclose(psi, geolocator_psi, rtol=1e-5, atol=1e-5)
    # A clip's ψ does not depend on its batch or its place in the table.
    order = np.random.default_rng(0).permutation(features.num_rows)
    np.testing.assert_allclose(clip_psi(stage, features.take(order), batch_size=4), psi[order], atol=1e-5)

    for row, perception in zip(table_perceptions(features), perceptions, strict=True):
        np.testing.assert_array_equal(row.visual_per_frame, perception.visual_per_frame)
        assert row.atoms == perception.atoms
        np.testing.assert_allclose(row.atom_vectors, perception.atom_vectors, atol=1e-7)


def test_psi_is_cached_per_mllm_and_read_back_by_clip(features, stage, tmp_path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        path = cached_psi(stage, features, tmp_path)
        written = path.stat().st_mtime_ns
        assert cached_psi(stage, features, tmp_path) == path
    assert "12 clips already in" in printed.getvalue() and path.stat().st_mtime_ns == written
    clip_ids = features["clip_id"].to_pylist()
    psi = read_psi(path, clip_ids)
    np.testing.assert_array_equal(read_psi(path, clip_ids[::-1]), psi[::-1])
    with pytest.raises(PsiError, match="no ψ for clip 'elsewhere' \\(1 in all\\)"):
        read_psi(path, [clip_ids[0], "elsewhere"])

    # Other weights, other settings or other clips: another key, hence another file.
    other = GeoMLLM.from_pretrained(config=MLLM)
    with torch.no_grad():
        other.projector.frame[0].bias.add_(0.01)
    other.save_pretrained(tmp_path / "other-mllm")
    other_weights = load_reasoning_stage(dataclasses.replace(MLLM, model=str(tmp_path / "other-mllm")))
    longer = load_reasoning_stage(dataclasses.replace(MLLM, max_new_tokens=13))
    keys = {psi_key(s, features) for s in (stage, other_weights, longer)}
    assert len(keys | {psi_key(stage, features.slice(1))}) == 4
    # The same weights under another name share the file.
    stage.mllm.save_pretrained(tmp_path / "same-mllm")
    renamed = load_reasoning_stage(dataclasses.replace(MLLM, model=str(tmp_path / "same-mllm")))
    assert psi_key(renamed, features) == psi_key(stage, features)
    with pytest.raises(PsiError, match=r"set mllm\.temperature: 0"):
        load_reasoning_stage(dataclasses.replace(MLLM, temperature=0.7))


@pytest.mark.ray
def test_a_psi_head_trains_with_the_rfm_job_and_serves_the_geolocator_grpo_and_evaluation(
    ray_local, features_path, features, stage, tmp_path
):
    raw = {
        "features": str(features_path),
        "out_dir": str(tmp_path / "models"),
        "storage_path": str(tmp_path / "ray_train"),
        "feature_kind": "psi",
        "mllm": dataclasses.asdict(MLLM),
        "psi_batch_size": 4,
        "train": {"epochs": 2, "batch_size": 4},
        "rfm": {"width": 16, "cond_embed_dim": 8, "num_steps": 2},
        "num_workers": 2,
        "cpus_per_worker": 0.5,
    }
    config = load_config(RFMJobConfig, raw)
    summary = run_rfm(config)
    model_dir = tmp_path / "models" / "rfm-psi"
    train_rows = pc.equal(features["split"], "train")
    assert summary.model_dir == model_dir and summary.train_rows == pc.sum(train_rows).as_py() == 8

    # The training clips' ψ was computed once, as the Geolocator computes it, and cached by MLLM.
    (psi_file,) = (model_dir / PSI_DIR).glob("psi-*.parquet")
    train = features.filter(train_rows)
    cached = read_psi(psi_file, train["clip_id"].to_pylist())
    np.testing.assert_allclose(cached, clip_psi(stage, train), atol=1e-5)
    inputs, latlon_deg = training_rows(dataclasses.replace(config, features=features_path), psi_file)
    assert inputs.shape == (8, stage.psi_dim) and latlon_deg.shape == (8, 2)
    entry = read_model_entry(model_dir)
    assert (entry.feature_kind, entry.mllm) == ("psi", MLLM)
    assert json.loads((model_dir / "model.json").read_text())["psi_file"] == str(psi_file)

    # The Geolocator's prediction stage and GRPO's R_calib load it; heads over other inputs stay refused.
    geolocator = GeolocatorConfig(mllm=MLLM, rfm_model=str(model_dir), num_samples=8, flow_num_steps=2)
    prediction_stage = PredictionStage.from_config(geolocator)
    assert prediction_stage.head.config.cond_dim == stage.psi_dim
    (prediction,) = prediction_stage.predict(stage.reason(table_perceptions(features.slice(0, 1))))
    assert np.isfinite(prediction.log_density)
    grpo = {"features": str(features_path), "mllm": {"model": "tiny"}, "calib_head": str(model_dir)}
    assert build_calib_head(load_config(GRPOConfig, grpo)).config.cond_dim == stage.psi_dim
    visual_dir = tmp_path / "models" / "rfm-visual"
    visual_head = FlowHead(RFMConfig(cond_dim=VISUAL_DIM, width=8, cond_embed_dim=4, num_steps=2))
    save_trained_model(visual_dir, visual_head, "visual", {"epochs": 0})
    with pytest.raises(CheckpointError, match="conditioned on 512-d inputs"):
        PredictionStage.from_config(dataclasses.replace(geolocator, rfm_model=str(visual_dir)))
    with pytest.raises(CheckpointError, match="trained this head on 'visual' features"):
        build_calib_head(load_config(GRPOConfig, {**grpo, "calib_head": str(visual_dir)}))
    visual_head.save_pretrained(tmp_path / "bare-visual")  # no model.json: the width check still applies
    with pytest.raises(CheckpointError, match="R_calib needs one over ψ of tiny \\(128-d\\)"):
        build_calib_head(load_config(GRPOConfig, {**grpo, "calib_head": str(tmp_path / "bare-visual")}))

    # The evaluation job scores it on the test clips' ψ, in the Audiovisual group.
    evaluate_config = load_config(
        EvaluateConfig,
        {"features": str(features_path), "models_dir": str(tmp_path / "models"),
         "out_dir": str(tmp_path / "evaluate"), "num_samples": 4, "prdc_k": 1, "heatmap_clips": 0,
         "late_fusion": False, "psi_batch_size": 2},
    )  # fmt: skip
    spec = next(spec for spec in row_specs(evaluate_config) if spec.name == "rfm-psi")
    assert spec.group == "Audiovisual"
    row, _ = evaluate_row(spec, evaluate_config)
    torch.set_num_threads(1)  # evaluate_row sets the task's threads
    assert row.metrics["num_clips"] == pc.sum(pc.equal(features["split"], "test")).as_py()
    assert np.isfinite(row.metrics["nll"])
    assert len(list((tmp_path / "evaluate" / evaluate.PSI_DIR).glob("psi-*.parquet"))) == 1
