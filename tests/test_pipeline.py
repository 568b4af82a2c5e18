"""The composed Geolocator on real avg-synth clips: a valid result, stage-by-stage equals geolocate, a batch
equals its clips one by one (frame counts mixed), the density PNG, RFM checkpoints and typed decode errors."""

import dataclasses
import json
import re
import struct

import numpy as np
import pytest

from avgeo.config import ConfigError, load_config
from avgeo.data.errors import NoAudioStreamError
from avgeo.data.mp4 import write_clip
from avgeo.data.synth import run_synth, synth_preset
from avgeo.geo.sphere import EARTH_RADIUS_KM, SPHERE_AREA_SR
from avgeo.perception.checkpoints import CheckpointError
from avgeo.pipeline import Geolocator, GeolocatorConfig, PredictionStage
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.heatmap import FIGURE_SIZE_PX
from avgeo.prediction.vector_field import RFMConfig
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.mllm import MLLMConfig

CONFIG = GeolocatorConfig(
    mllm=MLLMConfig(temperature=0.0, max_new_tokens=16),
    num_samples=64,
    flow_num_steps=4,
    heatmap_resolution_deg=30.0,
)
"""Small enough for 2 shared cores; every stage still runs in full."""

MODEL_VERSION = re.compile(r"^tiny@[0-9a-f]{12}$")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_paths(tmp_path_factory):
    """Six avg-synth ci clips (3 s, one per location), paths in manifest order."""
    out_dir = tmp_path_factory.mktemp("avg-synth")
    config = dataclasses.replace(synth_preset("ci"), n_locations=6, clips_per_location=1)
    run_synth(config, out_dir, seed=0)
    return sorted(str(path) for path in (out_dir / "clips").rglob("*.mp4"))


@pytest.fixture(scope="module")
def geolocator():
    return Geolocator.from_config(CONFIG)


def test_geolocate_returns_a_valid_result(geolocator, clip_paths):
    result = geolocator.geolocate(clip_paths[0])
    perception, reasoning, prediction = result.perception, result.reasoning, result.prediction

    assert perception.clip == clip_paths[0]
    assert perception.visual_per_frame.shape == (CONFIG.decode.num_frames, 512)
    strengths = [atom["strength"] for atom in perception.atoms]
    assert strengths == sorted(strengths, reverse=True) and min(strengths) > 0
    assert len(perception.atoms) <= CONFIG.atoms_per_window  # one 10 s window in a 3 s clip
    # Each atom vector is its unit-norm kernel scaled by its strength.
    np.testing.assert_allclose(np.linalg.norm(perception.atom_vectors, axis=1), strengths, rtol=1e-5)

    parsed = parse_response(reasoning.completion)
    assert (reasoning.trace, reasoning.answer_latlon_deg, reasoning.parse_error) == (
        parsed.trace,
        parsed.latlon_deg,
        parsed.error,
    )
    assert reasoning.psi.shape == (geolocator.reasoning.psi_dim,) and np.isfinite(reasoning.psi).all()

    lat_deg, lon_deg = prediction.latlon_deg
    assert -90 <= lat_deg <= 90 and -180 < lon_deg <= 180
    assert 1 <= len(prediction.modes) <= CONFIG.top_k
    # The greedy modes start at the densest sample, which is also the point estimate.
    assert prediction.modes[0].latlon_deg == prediction.latlon_deg
    assert prediction.modes[0].log_density == prediction.log_density
    mode_log_densities = [mode.log_density for mode in prediction.modes]
    assert mode_log_densities == sorted(mode_log_densities, reverse=True)
    probabilities = [mode.probability for mode in prediction.modes]
    assert all(p >= 1 / CONFIG.num_samples for p in probabilities) and sum(probabilities) <= 1 + 1e-9
    area_50, area_90 = (prediction.credible_areas_km2[level] for level in CONFIG.credible_levels)
    assert 0 < area_50 < area_90 < SPHERE_AREA_SR * EARTH_RADIUS_KM**2

    assert set(result.models) == {"visual", "audio", "icsae", "mllm", "rfm"}
    assert all(MODEL_VERSION.match(version) for version in result.models.values())
    stage_times = [result.timings_s[stage] for stage in ("decode", "perceive", "reason", "predict")]
    assert min(stage_times) > 0 and sum(stage_times) <= result.timings_s["total"]

    as_json = json.loads(json.dumps(result.as_dict()))
    assert as_json["latlon_deg"] == list(prediction.latlon_deg)
    assert as_json["log_density_units"] == "nats/sr"
    assert [region["level"] for region in as_json["credible_regions"]] == list(CONFIG.credible_levels)
    assert [atom["class_name"] for atom in as_json["atoms"]] == [
        atom["class_name"] for atom in perception.atoms
    ]


def test_stage_by_stage_equals_geolocate(geolocator, clip_paths):
    result = geolocator.geolocate(clip_paths[1])
    (perception,) = geolocator.perceive([geolocator.decode(clip_paths[1])])
    (reasoning,) = geolocator.reason([perception])
    (prediction,) = geolocator.predict([reasoning])

    np.testing.assert_array_equal(perception.visual_per_frame, result.perception.visual_per_frame)
    np.testing.assert_array_equal(perception.atom_vectors, result.perception.atom_vectors)
    assert perception.atoms == result.perception.atoms
    assert reasoning.completion == result.reasoning.completion
    np.testing.assert_array_equal(reasoning.psi, result.reasoning.psi)
    assert prediction == result.prediction


def test_a_batch_equals_its_clips_one_by_one(geolocator, clip_paths):
    clips = [geolocator.decode(path) for path in clip_paths[2:5]]
    perceptions = geolocator.perceive(clips)
    for clip, perception in zip(clips, perceptions, strict=True):
        (single,) = geolocator.perceive([clip])
        np.testing.assert_allclose(single.visual_per_frame, perception.visual_per_frame, atol=1e-5)
        assert [atom["kernel"] for atom in single.atoms] == [atom["kernel"] for atom in perception.atoms]
        np.testing.assert_allclose(single.atom_vectors, perception.atom_vectors, atol=1e-5)

    # A clip with fewer frames joins the batch: the reasoning stage must batch it apart, not pad it.
    perceptions[1] = dataclasses.replace(perceptions[1], visual_per_frame=perceptions[1].visual_per_frame[:5])
    reasonings = geolocator.reason(perceptions)
    predictions = geolocator.predict(reasonings)
    for perception, reasoning, prediction in zip(perceptions, reasonings, predictions, strict=True):
        (single_reasoning,) = geolocator.reason([perception])
        (single_prediction,) = geolocator.predict([single_reasoning])
        assert single_reasoning.completion == reasoning.completion
        np.testing.assert_allclose(single_reasoning.psi, reasoning.psi, atol=1e-4)
        np.testing.assert_allclose(single_prediction.latlon_deg, prediction.latlon_deg, atol=1e-2)
        np.testing.assert_allclose(single_prediction.log_density, prediction.log_density, atol=1e-3)
    # Different clips give different ψ, so the comparisons above are not between identical inputs.
    assert not np.allclose(reasonings[0].psi, reasonings[2].psi, atol=1e-3)


def test_density_png_has_the_heatmap_layout(geolocator, clip_paths):
    (perception,) = geolocator.perceive([geolocator.decode(clip_paths[5])])
    (reasoning,) = geolocator.reason([perception])
    (prediction,) = geolocator.predict([reasoning])
    png = geolocator.prediction.density_png(reasoning.psi, prediction.latlon_deg)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == FIGURE_SIZE_PX  # IHDR width, height


def test_prediction_stage_loads_a_trained_head_and_refuses_one_for_another_psi(tmp_path):
    psi_dim = PredictionStage.from_config(CONFIG).head.config.cond_dim
    trained = tmp_path / "rfm-trained"
    RFMHead(RFMConfig(cond_dim=psi_dim, seed=7)).save_pretrained(trained)
    stage = PredictionStage.from_config(dataclasses.replace(CONFIG, rfm_model=str(trained)))
    assert stage.models["rfm"].startswith(f"{trained}@")
    assert stage.head.config.num_steps == CONFIG.flow_num_steps
    assert stage.models["rfm"] != PredictionStage.from_config(CONFIG).models["rfm"]

    other = tmp_path / "rfm-other-psi"
    RFMHead(RFMConfig(cond_dim=psi_dim + 1)).save_pretrained(other)
    with pytest.raises(CheckpointError, match=rf"{other}.*{psi_dim + 1}-d inputs.*{psi_dim}-d ψ"):
        PredictionStage.from_config(dataclasses.replace(CONFIG, rfm_model=str(other)))


def test_a_clip_without_audio_is_a_typed_error(geolocator, tmp_path):
    silent = tmp_path / "silent.mp4"
    write_clip(silent, np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=4, audio=None)
    with pytest.raises(NoAudioStreamError, match=r"silent\.mp4: no audio stream"):
        geolocator.geolocate(silent)


def test_config_loads_from_a_mapping_and_names_bad_keys():
    config = load_config(
        GeolocatorConfig, {"num_samples": 32, "mllm": {"max_new_tokens": 8}, "credible_levels": [0.8]}
    )
    assert (config.num_samples, config.mllm.max_new_tokens, config.credible_levels) == (32, 8, (0.8,))
    with pytest.raises(ConfigError, match="num_sample"):
        load_config(GeolocatorConfig, {"num_sample": 32})
    with pytest.raises(ConfigError, match="credible_levels"):
        load_config(GeolocatorConfig, {"credible_levels": [0.5, 1.5]})
