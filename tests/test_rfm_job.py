"""The RFM job: its configs, the training rows and heads it builds, and a real Ray Train run that
checkpoints, resumes where it stopped, and registers the model for evaluation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.features import AUDIO_DIM, NUM_AUDIOSET_CLASSES, VISUAL_DIM, features_table, write_features
from avgeo.distributed.model_registry import model_entries, read_model_entry, save_trained_model
from avgeo.distributed.rfm import JOB_CONFIG_FILE, RFMJobConfig, run_rfm
from avgeo.distributed.rfm_training import METRICS_FILE, build_head, training_rows
from avgeo.geo.s2cells import cell_tokens
from avgeo.geo.sphere import latlon_to_xyz
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.heads import FlowHead
from avgeo.prediction.vector_field import RFMConfig
from avgeo.reasoning.mllm import MLLMConfig
from avgeo.runlog import MetricsLog

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "rfm"


def write_synthetic_features(path: Path, num_locations: int = 12, clips_per_location: int = 4) -> np.ndarray:
    """A feature table whose vectors are functions of the clip's location; returns the (L, 2) locations.

    `visual_mean` starts with the location's unit vector (then a smooth random map of it), `audio_mean` is
    a noisy unit-norm map, atom strengths a rectified map. The first two thirds of the locations are the
    train split, the rest test (location-disjoint, like AVG); one more train row failed to decode.
    """
    rng = np.random.default_rng(0)
    latlon_deg = np.stack(
        (rng.uniform(-60, 70, num_locations), rng.uniform(-180, 180, num_locations)), axis=1
    )
    xyz = latlon_to_xyz(torch.from_numpy(latlon_deg)).numpy()
    visual_map, audio_map = rng.normal(size=(3, VISUAL_DIM - 3)), rng.normal(size=(3, AUDIO_DIM))
    atom_map = rng.normal(size=(3, NUM_AUDIOSET_CLASSES))
    rows = []
    for location in range(num_locations):
        for clip in range(clips_per_location):
            visual = np.concatenate((xyz[location], np.tanh(xyz[location] @ visual_map))).astype(np.float32)
            audio = xyz[location] @ audio_map + 0.3 * rng.normal(size=AUDIO_DIM)
            audio = (audio / np.linalg.norm(audio)).astype(np.float32)
            rows.append(
                {
                    "clip_id": f"loc{location:02d}-{clip}",
                    "video_path": f"/clips/loc{location:02d}-{clip}.mp4",
                    "split": "train" if location < num_locations * 2 // 3 else "test",
                    "lat": latlon_deg[location, 0],
                    "lon": latlon_deg[location, 1],
                    "visual_per_frame": visual[None],
                    "visual_mean": visual,
                    "audio_embedding": audio[None],
                    "audio_projection": audio[None],
                    "audio_mean": audio,
                    "atoms": [],
                    "atom_class_strength": np.maximum(xyz[location] @ atom_map, 0.0).astype(np.float32),
                    "models": {"visual": "tiny@0", "audio": "tiny@0", "icsae": "tiny@0"},
                    "timings": {"decode_s": 0.1, "visual_s": 0.1, "audio_s": 0.1, "icsae_s": 0.1},
                }
            )
    rows.append(
        {
            "clip_id": "broken",
            "video_path": "/clips/broken.mp4",
            "split": "train",
            "lat": 0.0,
            "lon": 0.0,
            "error": "DecodeError: broken.mp4: no audio stream",
            "timings": {"decode_s": 0.1},
        }
    )
    write_features(features_table(rows), path)
    return latlon_deg


@pytest.fixture(scope="module")
def features_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("features") / "features.parquet"
    write_synthetic_features(path)
    return path


def _job_config(features_path: Path, root: Path, **overrides) -> RFMJobConfig:
    raw = {
        "features": str(features_path),
        "out_dir": str(root / "models"),
        "storage_path": str(root / "ray_train"),
        "head": "rfm",
        "feature_kind": "visual",
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3},
        "rfm": {"width": 32, "cond_embed_dim": 16, "num_steps": 4},
        "num_workers": 2,
        "cpus_per_worker": 0.5,
    }
    return load_config(RFMJobConfig, raw, **overrides)


@pytest.mark.parametrize("name", ["tiny", "h100"])
def test_shipped_configs_load(name):
    config = load_config(RFMJobConfig, CONFIGS / f"{name}.yaml")
    assert config.train.epochs == 50
    assert config.use_gpu == (name == "h100")


def test_config_refuses_fields_the_job_derives_and_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"rfm\.cond_dim is set from the feature table"):
        load_config(RFMJobConfig, {"features": "f.parquet", "rfm": {"cond_dim": 512}})
    with pytest.raises(ConfigError, match=r"classification\.cell_tokens"):
        load_config(RFMJobConfig, {"features": "f.parquet", "classification": {"cell_tokens": ["47"]}})
    with pytest.raises(ConfigError, match=r"unknown config key train\.epoch "):
        load_config(RFMJobConfig, {"features": "f.parquet", "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="feature_kind"):
        load_config(RFMJobConfig, {"features": "f.parquet", "feature_kind": "video"})
    assert (
        load_config(RFMJobConfig, {"features": "f.parquet", "head": "regression"}).name
        == "regression-audiovisual"
    )
    # ψ comes from greedy completions: the default mllm decodes greedily, a given section must say so.
    psi = load_config(RFMJobConfig, {"features": "f.parquet", "feature_kind": "psi"})
    assert (psi.name, psi.mllm.temperature) == ("rfm-psi", 0.0)
    with pytest.raises(ConfigError, match=r"mllm\.temperature=1\.0: ψ comes from greedy completions"):
        load_config(RFMJobConfig, {"features": "f.parquet", "feature_kind": "psi", "mllm": {"model": "tiny"}})


def test_a_psi_model_entry_names_its_mllm(tmp_path):
    head = FlowHead(RFMConfig(cond_dim=128, width=8, cond_embed_dim=4))
    save_trained_model(tmp_path / "psi", head, "psi", {"mllm": {"model": "warm", "temperature": 0.0}})
    assert read_model_entry(tmp_path / "psi").mllm == MLLMConfig(model="warm", temperature=0.0)
    save_trained_model(tmp_path / "bare", head, "psi", {})
    with pytest.raises(ConfigError, match="a psi model without its `mllm`"):
        read_model_entry(tmp_path / "bare")


def test_training_rows_are_the_embedded_train_split(features_path, tmp_path):
    config = _job_config(features_path, tmp_path, feature_kind="audiovisual")
    features, latlon_deg = training_rows(config)
    assert features.shape == (8 * 4, VISUAL_DIM + AUDIO_DIM + NUM_AUDIOSET_CLASSES)
    assert len(np.unique(latlon_deg, axis=0)) == 8  # the broken clip is left out
    with pytest.raises(ConfigError, match="no embedded rows of split 'training'"):
        training_rows(_job_config(features_path, tmp_path, train_split="training"))


@pytest.mark.parametrize("head", ["rfm", "regression", "classification"])
def test_build_head_fills_in_what_the_features_give(features_path, tmp_path, head):
    config = _job_config(features_path, tmp_path, head=head, feature_kind="atoms")
    features, latlon_deg = training_rows(config)
    built = build_head(config, features.shape[1], latlon_deg)
    assert built.name == head
    loss = built.loss(torch.from_numpy(features), built.training_targets(torch.from_numpy(latlon_deg)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    if head == "classification":
        assert built.config.cell_tokens == sorted(set(cell_tokens(latlon_deg, (4,))[:, 0]))


@pytest.mark.ray
def test_run_rfm_checkpoints_resumes_and_registers(ray_local, features_path, tmp_path):
    summary = run_rfm(_job_config(features_path, tmp_path))
    model_dir = tmp_path / "models" / "rfm-visual"
    assert summary.model_dir == model_dir and summary.epochs == 2 and summary.train_rows == 32
    assert [record["epoch"] for record in MetricsLog(model_dir / METRICS_FILE).read()] == [1, 2]

    resumed = run_rfm(_job_config(features_path, tmp_path, **{"train.epochs": 3}))
    # Only the new epoch ran: the metrics log gained epoch 3 and nothing was trained twice.
    assert [record["epoch"] for record in MetricsLog(model_dir / METRICS_FILE).read()] == [1, 2, 3]
    assert resumed.epochs == 3

    # Resuming draws what an uninterrupted run draws, so both end with the same weights.
    straight = run_rfm(_job_config(features_path, tmp_path, model_name="straight", **{"train.epochs": 3}))
    assert straight.final_loss == pytest.approx(resumed.final_loss, rel=1e-5)
    resumed_head = RFMHead.from_pretrained(model_dir)  # the registry holds a plain RFM checkpoint
    straight_head = RFMHead.from_pretrained(straight.model_dir)
    for name, weights in resumed_head.state_dict().items():
        torch.testing.assert_close(weights, straight_head.state_dict()[name], rtol=1e-5, atol=1e-6)

    entry = read_model_entry(model_dir)
    assert (entry.head_type, entry.feature_kind, entry.name) == ("rfm", "visual", "rfm-visual")
    assert [entry.name for entry in model_entries(tmp_path / "models")] == ["rfm-visual", "straight"]
    job_config = load_config(RFMJobConfig, model_dir / JOB_CONFIG_FILE)
    assert job_config.train.epochs == 3 and job_config.features == features_path.resolve()
    assert entry.load().config.cond_dim == VISUAL_DIM
