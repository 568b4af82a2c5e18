"""The supervised warm-up on a small avg-synth build embedded by the tiny encoders: after a short run the
tiny MLLM's greedy answers parse on clips it never saw; resume and refusals."""

import contextlib
import dataclasses
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.decode import DecodeConfig, decode_clip
from avgeo.data.features import features_table
from avgeo.data.manifest import read_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.perception.embedder import AtomFeaturizer, AudioFeaturizer, ClipEmbedder, VisualFeaturizer
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig
from avgeo.reasoning.warmup import METRICS_FILE, WarmupConfig, WarmupError, mllm_features, run_warmup
from avgeo.runlog import MetricsLog

# One short clip at each of 80 places: 48 train, 16 val, 16 test locations. Many places matter more
# than many clips: with the ci preset's 14 training places the model learns 14 answers by heart.
SYNTH = dataclasses.replace(synth_preset("ci"), n_locations=80, clips_per_location=1, clip_duration_s=1.0)
FRAMES, ATOMS = 4, 4
BROKEN_CLIP, OTHER_TRAIN_CLIP = "loc0000_c00", "loc0001_c00"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """The feature table of every clip (embedded by the tiny encoders; one an error row, as the embedding
    job writes for a clip that fails to decode) and the manifest."""
    manifest = read_manifest(run_synth(SYNTH, tmp_path_factory.mktemp("avg-synth"), seed=0))
    embedder = ClipEmbedder(
        VisualFeaturizer.load("tiny"), AudioFeaturizer.load("tiny"), AtomFeaturizer.load("tiny", ATOMS)
    )
    stories = manifest.to_pylist()
    split_of = {story["clip_id"]: story["split"] for story in stories}
    assert split_of[BROKEN_CLIP] == split_of[OTHER_TRAIN_CLIP] == "train"
    clips = [decode_clip(story["video_path"], DecodeConfig(num_frames=FRAMES)) for story in stories]
    embedded = embedder.embed(clips)
    rows = []
    for story, features in zip(stories, embedded, strict=True):
        labels = {key: story[key] for key in ("clip_id", "video_path", "split", "lat", "lon")}
        broken = story["clip_id"] == BROKEN_CLIP
        rows.append({**labels, "error": "DecodeError: truncated"} if broken else {**labels, **features})
    return features_table(rows), manifest


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return WarmupConfig(
        out_dir=tmp_path_factory.mktemp("warmup"),
        epochs=17,
        batch_size=8,
        learning_rate=4e-3,
        lr_warmup_steps=10,
        num_frames=FRAMES,
        max_atoms=ATOMS,
        eval_clips=16,
    )


@pytest.fixture(scope="module")
def warmed(synth_data, config):
    """The warm-up's output folder and its printed summary."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model_dir = run_warmup(config, *synth_data)
    return model_dir, printed.getvalue()


def greedy_parse_rate(model: GeoMLLM, features: pa.Table) -> float:
    generation = model.generate(model.build_inputs(*mllm_features(features, FRAMES)))
    return float(np.mean([parse_response(text).ok for text in generation.texts]))


def test_warmup_makes_greedy_answers_parse_on_unseen_clips(synth_data, warmed, config):
    model_dir, printed = warmed
    # The broken training clip is skipped: 48 training places, 47 embedded.
    assert "warm-up: 47 clips, 17 epochs (102 steps)" in printed
    records = MetricsLog(model_dir / METRICS_FILE).read()
    evals = [record for record in records if "parse_rate" in record]
    assert [record["step"] for record in evals] == [0, 102]
    assert evals[0]["parse_rate"] == 0.0
    assert evals[-1]["parse_rate"] >= 0.8
    # The saved checkpoint on the test split, which neither training nor evaluation touched.
    features, _ = synth_data
    test_clips = features.filter(pc.equal(features["split"], "test"))
    greedy = MLLMConfig(config.max_new_tokens, temperature=0.0, num_frames=FRAMES, max_atoms=ATOMS)
    assert greedy_parse_rate(GeoMLLM.from_pretrained("tiny", greedy), test_clips) == 0.0
    assert greedy_parse_rate(GeoMLLM.from_pretrained(model_dir, greedy), test_clips) >= 0.8


def test_warmup_loss_falls(warmed):
    losses = [record["loss"] for record in MetricsLog(warmed[0] / METRICS_FILE).read() if "loss" in record]
    assert len(losses) == 102
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:10])


def test_rerun_returns_the_finished_model_and_refuses_another_config(synth_data, warmed, config):
    model_dir, _ = warmed
    metrics_before = (model_dir / METRICS_FILE).read_text()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # Threads and evaluation settings do not shape the weights.
        unchanged = dataclasses.replace(config, torch_threads=2, eval_clips=4, eval_every_steps=5)
        assert run_warmup(unchanged, *synth_data) == model_dir
    assert "nothing to do" in printed.getvalue()
    assert (model_dir / METRICS_FILE).read_text() == metrics_before
    with pytest.raises(ConfigError, match="another learning_rate"):
        run_warmup(dataclasses.replace(config, learning_rate=1e-3), *synth_data)
    features, manifest = synth_data
    fewer_clips = features.filter(pc.not_equal(features["clip_id"], OTHER_TRAIN_CLIP))
    with pytest.raises(ConfigError, match="another training data; use another out_dir"):
        run_warmup(config, fewer_clips, manifest)


def test_mllm_features_resample_frames_and_scale_kernels(synth_data):
    features = synth_data[0].filter(pc.equal(synth_data[0]["split"], "val"))
    visual, atoms = mllm_features(features, num_frames=2 * FRAMES)
    assert visual.shape == (features.num_rows, 2 * FRAMES, 512)
    first_clip = np.array(features["visual_per_frame"][0].as_py(), dtype=np.float32)
    assert torch.equal(visual[0, ::2], torch.from_numpy(first_clip))  # shorter clips repeat frames
    assert torch.equal(mllm_features(features, FRAMES)[0][0], torch.from_numpy(first_clip))
    for clip_atoms, records in zip(atoms, features["atoms"].to_pylist(), strict=True):
        assert len(clip_atoms) == len(records)
        strengths = [atom.strength for atom in clip_atoms]
        assert strengths == sorted(strengths, reverse=True)
        # Unit-norm kernels: a scaled kernel's norm is its strength.
        norms = torch.stack([atom.vector.norm() for atom in clip_atoms])
        assert torch.allclose(norms, torch.tensor(strengths), rtol=1e-5)


def test_inputs_the_warmup_cannot_use_are_refused(synth_data, tmp_path):
    features, manifest = synth_data
    config = WarmupConfig(out_dir=tmp_path, epochs=1, eval_clips=0)
    other_manifest = manifest.filter(pc.not_equal(manifest["clip_id"], OTHER_TRAIN_CLIP))
    with pytest.raises(WarmupError, match=r"'loc0001_c00' \(1 in all\) of the feature table is not in the"):
        run_warmup(config, features, other_manifest)
    models = features["models"].combine_chunks()
    other_icsae = pa.array(
        [None if entry is None else {**entry, "icsae": "tiny@000000000000"} for entry in models.to_pylist()],
        models.type,
    )
    other_atoms = features.set_column(features.schema.get_field_index("models"), "models", other_icsae)
    with pytest.raises(WarmupError, match="extracted by IC-SAE tiny@000000000000, but tiny now loads as"):
        run_warmup(config, other_atoms, manifest)
    with pytest.raises(WarmupError, match="no embedded clips of split 'unlabeled'"):
        run_warmup(dataclasses.replace(config, split="unlabeled"), features, manifest)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="epochs=0: expected an int >= 1"):
        load_config(WarmupConfig, {"epochs": 0})
    with pytest.raises(ConfigError, match="unknown config key lr for WarmupConfig"):
        load_config(WarmupConfig, {"lr": 0.1})
