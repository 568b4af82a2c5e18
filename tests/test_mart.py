"""MART: the factory's mixing maths, the two objectives by hand, decomposition accuracy, the dictionary
constraint, the Ray Data factory and its cache, and an in-driver training run that learns."""

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.audioset import audioset_classes
from avgeo.data.soundbank import REFERENCE_RMS, SoundBank
from avgeo.distributed.mart import MartConfig, run_mart
from avgeo.distributed.mart_factory import FACTORY_FILE, build_factory, mixture_schema, read_mixtures
from avgeo.distributed.mart_training import ICSAE_DIR, METRICS_FILE
from avgeo.perception.audio import AudioEncoder
from avgeo.perception.icsae import ICSAE, ICSAEConfig
from avgeo.perception.mart import (
    PAD_CLASS,
    MixtureBatch,
    MixtureRecipe,
    constrain_dictionary_,
    decomposition_accuracy,
    mart_loss,
    plan_mixture,
    render_mixture,
    shared_direction,
    standard_sae_decompose,
    standard_sae_loss,
)
from avgeo.runlog import MetricsLog

NUM_CLASSES = len(audioset_classes())
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mart"


@pytest.fixture(scope="module")
def bank16k():
    return SoundBank.procedural(16000)


def test_plans_have_distinct_classes_strictly_decreasing_gains_and_bounded_onsets(bank16k):
    recipe = MixtureRecipe(max_sources=4, min_gain_drop_db=2.0, max_gain_drop_db=5.0, max_onset_fraction=0.3)
    mids = [c.mid for c in bank16k.classes]
    sizes = set()
    for seed in range(300):
        plan = plan_mixture(recipe, mids, 16000, np.random.default_rng(seed))
        num_sources = len(plan.class_mids)
        sizes.add(num_sources)
        assert len(set(plan.class_mids)) == num_sources and set(plan.class_mids) <= set(mids)
        assert plan.gains[0] == 1.0
        drops_db = -20 * np.log10(plan.gains[1:] / plan.gains[:-1])
        assert np.all(drops_db >= 2.0 - 1e-9) and np.all(drops_db <= 5.0 + 1e-9)
        assert np.all(plan.onsets >= 0) and np.all(plan.onsets <= 0.3 * plan.num_samples)
        assert 2.0 * 16000 - 1 <= plan.num_samples <= 4.0 * 16000 + 1
    assert sizes == {1, 2, 3, 4}


def test_sources_are_scaled_placed_renders_that_sum_to_the_mixture(bank16k):
    recipe = MixtureRecipe(max_sources=3, min_duration_s=0.5, max_duration_s=1.0, max_onset_fraction=0.5)
    mids = [c.mid for c in bank16k.classes]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        plan = plan_mixture(recipe, mids, 16000, rng)
        replay = copy.deepcopy(rng)
        mixture, sources = render_mixture(plan, bank16k, rng)
        assert mixture.shape == (plan.num_samples,) and sources.shape == (
            len(plan.class_mids),
            plan.num_samples,
        )
        np.testing.assert_allclose(mixture, sources.sum(0), rtol=0, atol=1e-7)
        for source, mid, gain, onset in zip(sources, plan.class_mids, plan.gains, plan.onsets, strict=True):
            length = plan.num_samples - onset
            expected = gain * bank16k.render(mid, length / 16000, replay)
            assert not source[:onset].any()
            np.testing.assert_allclose(source[onset:], expected, rtol=1e-6, atol=1e-9)
            rms = math.sqrt(float(np.mean(np.square(source[onset:], dtype=np.float64))))
            assert rms == pytest.approx(gain * REFERENCE_RMS, rel=1e-4)


def test_recipe_rejects_gains_that_could_tie():
    with pytest.raises(ValueError, match="strictly decreasing"):
        MixtureRecipe(min_gain_drop_db=0.0)


@pytest.fixture
def hand_model():
    """One kernel per class in 3-d: class 3 along x, class 9 along y, every other class along z."""
    model = ICSAE(ICSAEConfig(dim=3, num_kernels=NUM_CLASSES)).double()
    with torch.no_grad():
        model.dictionary.zero_()
        model.dictionary[2] = 1.0
        model.dictionary[:, 3] = torch.tensor([1.0, 0.0, 0.0])
        model.dictionary[:, 9] = torch.tensor([0.0, 1.0, 0.0])
    return model


@pytest.fixture
def hand_batch():
    """Row 0: x = (2, 1, 0) with sources of classes 9 then 3; row 1: x = (2, 0, 0), one source of class 3."""
    return MixtureBatch(
        mixtures=torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64),
        targets=torch.tensor(
            [[[1.5, 0.0, 0.0], [0.0, 0.5, 0.0]], [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64
        ),
        classes=torch.tensor([[9, 3], [3, PAD_CLASS]]),
    )


def _cross_entropy(logits_by_class: dict[int, float], target: int) -> float:
    """-log softmax over all classes; classes not listed have logit 0."""
    others = NUM_CLASSES - len(logits_by_class)
    normaliser = math.log(others + sum(math.exp(v) for v in logits_by_class.values()))
    return normaliser - logits_by_class.get(target, 0.0)


def test_mart_loss_with_teacher_forcing_by_hand(hand_model, hand_batch):
    scale = 2.0
    loss = mart_loss(
        hand_model, hand_batch, teacher_forcing=True, reconstruction_weight=0.5, logit_scale=scale
    )
    # Row 0 is forced to class 9 though class 3 is more active: x̂1 = (0, 1, 0), r1 = (2, 0, 0), x̂2 = r1.
    assert loss.predicted_classes.tolist()[0] == [9, 3]
    expected_ce = [
        _cross_entropy({3: 2 * scale, 9: 1 * scale}, 9),
        _cross_entropy({3: 2 * scale}, 3),
        _cross_entropy({3: 2 * scale}, 3),  # row 1, its only step
    ]
    expected_se = [1.5**2 + 1.0, 2.0**2 + 0.5**2, 0.0]
    assert loss.classification.item() == pytest.approx(sum(expected_ce) / 3, rel=1e-12)
    assert loss.reconstruction.item() == pytest.approx(sum(expected_se) / 3, rel=1e-12)
    assert loss.total.item() == pytest.approx(sum(expected_ce) / 3 + 0.5 * sum(expected_se) / 3, rel=1e-12)


def test_mart_loss_free_running_follows_the_argmax(hand_model, hand_batch):
    scale = 2.0
    loss = mart_loss(hand_model, hand_batch, teacher_forcing=False, logit_scale=scale)
    # Class 3 (activation 2) first, leaving r1 = (0, 1, 0), so class 9 second.
    assert loss.predicted_classes.tolist()[0] == [3, 9]
    expected_ce = [
        _cross_entropy({3: 2 * scale, 9: 1 * scale}, 9),
        _cross_entropy({9: 1 * scale}, 3),
        _cross_entropy({3: 2 * scale}, 3),
    ]
    expected_se = [0.5**2, 0.5**2, 0.0]  # (2, 0, 0) against (1.5, 0, 0); (0, 1, 0) against (0, 0.5, 0)
    assert loss.classification.item() == pytest.approx(sum(expected_ce) / 3, rel=1e-12)
    assert loss.reconstruction.item() == pytest.approx(sum(expected_se) / 3, rel=1e-12)


def test_standard_sae_loss_reads_once_and_removes_earlier_true_classes(hand_model, hand_batch):
    scale = 2.0
    loss = standard_sae_loss(hand_model, hand_batch, teacher_forcing=True, logit_scale=scale)
    # One read of x = (2, 1, 0): scores 2 (class 3) and 1 (class 9). Step 2 of row 0 no longer offers class 9.
    expected_ce = [
        _cross_entropy({3: 2 * scale, 9: 1 * scale}, 9),
        _cross_entropy({3: 2 * scale, 9: -math.inf}, 3),
        _cross_entropy({3: 2 * scale}, 3),
    ]
    assert loss.classification.item() == pytest.approx(sum(expected_ce) / 3, rel=1e-12)
    # Row 0 rebuilds x as 1·e_y + 2·e_x exactly; row 1 as 2·e_x: no reconstruction error.
    assert loss.reconstruction.item() == pytest.approx(0.0, abs=1e-12)
    assert loss.predicted_classes[0].tolist() == [3, 9]
    assert standard_sae_decompose(hand_model, hand_batch.mixtures, 2)[0].tolist() == [3, 9]


def test_decomposition_accuracy_by_hand_and_its_bounds():
    true = torch.tensor([[1, 2, 3], [4, 5, PAD_CLASS], [6, PAD_CLASS, PAD_CLASS], [7, 8, PAD_CLASS]])
    predicted = torch.tensor([[1, 3, 2], [4, 5, 9], [0, 6, 6], [8, 7, 1]])
    accuracy = decomposition_accuracy(predicted, true)
    assert accuracy.per_step == pytest.approx([2 / 4, 1 / 3, 0 / 1])
    assert accuracy.step == pytest.approx(3 / 8)
    assert accuracy.sequence == pytest.approx(1 / 4)  # only row 1 (its third prediction is past K)
    assert accuracy.class_set == pytest.approx(3 / 4)  # rows 0, 1 and 3 name their classes in some order
    perfect = decomposition_accuracy(true.clamp_min(0), true)
    assert perfect.step == perfect.sequence == perfect.class_set == 1.0 and perfect.per_step == [1.0] * 3
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        guess = torch.randint(0, 10, true.shape, generator=generator)
        scores = decomposition_accuracy(guess, true)
        assert 0.0 <= scores.sequence <= scores.class_set <= 1.0 and 0.0 <= scores.step <= 1.0


def test_constrained_kernels_make_the_decomposition_blind_to_the_shared_direction():
    torch.manual_seed(0)
    model = ICSAE(ICSAEConfig(dim=16, num_kernels=NUM_CLASSES)).double()
    embeddings = torch.randn(64, 16, dtype=torch.float64) * 0.3 + 5.0 * torch.nn.functional.normalize(
        torch.ones(16, dtype=torch.float64), dim=0
    )
    direction = shared_direction(embeddings)
    constrain_dictionary_(model, direction)
    assert torch.allclose(model.dictionary.norm(dim=0), torch.ones(NUM_CLASSES, dtype=torch.float64))
    assert (direction @ model.dictionary).abs().max() < 1e-12
    shifted = embeddings + torch.linspace(-3, 3, 64, dtype=torch.float64)[:, None] * direction
    plain, moved = model.decompose(embeddings, 3), model.decompose(shifted, 3)
    assert torch.equal(plain.kernels, moved.kernels)
    assert torch.allclose(plain.strengths, moved.strengths, atol=1e-12)


def _factory_config(tmp_path, **overrides) -> MartConfig:
    settings = {
        "cache_dir": str(tmp_path / "cache"),
        "out_dir": str(tmp_path / "out"),
        "storage_path": str(tmp_path / "runs"),
        "factory.num_train": 4,
        "factory.num_heldout": 2,
        "factory.mixtures.min_duration_s": 0.5,
        "factory.mixtures.max_duration_s": 1.0,
        "factory.render_stage.batch_size": 2,
        "factory.encode_stage.batch_size": 2,
        **overrides,
    }
    return load_config(MartConfig, CONFIGS / "tiny.yaml", **settings)


@pytest.mark.ray
def test_factory_writes_the_documented_rows_once_and_they_replay(ray_local, tmp_path):
    config = _factory_config(tmp_path)
    factory_dir, build_s = build_factory(config)
    assert build_s is not None and (factory_dir / FACTORY_FILE).is_file()
    assert factory_dir.name == f"mixtures-{config.factory.cache_key()}"
    table = pq.read_table(sorted(factory_dir.glob("*.parquet"))).sort_by("mixture_id")
    assert table.schema.equals(mixture_schema(512))
    assert table["mixture_id"].to_pylist() == list(range(6))
    assert table["split"].to_pylist() == ["train"] * 4 + ["heldout"] * 2
    for gains, mids, sources in zip(
        table["gains"].to_pylist(),
        table["class_mids"].to_pylist(),
        table["source_projections"].to_pylist(),
        strict=True,
    ):
        assert gains[0] == 1.0 and all(a > b for a, b in itertools.pairwise(gains))
        assert len(sources) == len(mids) == len(gains)
    # Row 0 again, outside Ray: the same plan from the same seed, the same projections.
    rng = np.random.default_rng([config.factory.seed, 0])
    bank = config.factory.bank()
    plan = plan_mixture(config.factory.mixtures, [c.mid for c in bank.classes], bank.sample_rate, rng)
    mixture, sources = render_mixture(plan, bank, rng)
    assert list(plan.class_mids) == table["class_mids"][0].as_py()
    projection = AudioEncoder.from_pretrained("tiny").embed(torch.from_numpy(np.vstack([mixture, sources])))
    cached = read_mixtures(factory_dir, "train", config.factory.mixtures.max_sources)
    assert torch.allclose(cached.mixtures[0], projection.projection[0, 0], atol=1e-4)
    assert torch.allclose(cached.targets[0, : len(sources)], projection.projection[1:, 0], atol=1e-4)
    # Same factory settings, other resources: the cache is reused, not rebuilt.
    again = _factory_config(tmp_path, **{"factory.encode_stage.batch_size": 3})
    assert build_factory(again) == (factory_dir, None)
    assert _factory_config(tmp_path, **{"factory.seed": 1}).factory_dir() != factory_dir


def _write_separable_cache(config: MartConfig, rows: int, seed: int = 0) -> None:
    """A cache of synthetic mixtures: each class a prototype direction, sources its scaled prototype, the
    mixture their sum plus a large offset shared by every embedding (as CLAP's projections have)."""
    rng = np.random.default_rng(seed)
    num_train = config.factory.num_train
    classes = audioset_classes()[:12]
    prototypes = rng.normal(size=(len(classes), 512)).astype(np.float32)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    offset = 5.0 * np.ones(512, np.float32) / math.sqrt(512)
    records = []
    for mixture_id in range(rows):
        num_sources = int(rng.integers(1, 3))
        chosen = rng.choice(len(classes), num_sources, replace=False)
        gains = np.array([1.0, 0.6][:num_sources])
        sources = gains[:, None] * prototypes[chosen] + 0.05 * rng.normal(size=(num_sources, 512))
        records.append(
            {
                "mixture_id": mixture_id,
                "split": "train" if mixture_id < num_train else "heldout",
                "class_mids": [classes[i].mid for i in chosen],
                "gains": gains.tolist(),
                "onsets_s": [0.0] * num_sources,
                "duration_s": 1.0,
                "mixture_projection": (offset + sources.sum(0)).astype(np.float32).tolist(),
                "source_projections": (offset + sources).astype(np.float32).tolist(),
            }
        )
    factory_dir = config.factory_dir()
    factory_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records, schema=mixture_schema(512)), factory_dir / "rows.parquet")
    (factory_dir / FACTORY_FILE).write_text("{}")


def test_training_in_the_driver_lowers_the_loss_and_exports_a_constrained_dictionary(tmp_path):
    config = _factory_config(
        tmp_path,
        **{
            "factory.num_train": 192,
            "factory.num_heldout": 64,
            "factory.mixtures.max_sources": 2,
            "train.epochs": 4,
            "train.learning_rate": 0.01,
            "train.batch_size": 32,
            "num_workers": 0,
        },
    )
    _write_separable_cache(config, rows=256)
    summary = run_mart(config)
    epochs = MetricsLog(config.out_dir / METRICS_FILE).read()
    losses = [record["loss"] for record in epochs]
    assert [record["epoch"] for record in epochs] == [1, 2, 3, 4]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses
    assert summary.factory_s is None and summary.train_rows == 192 and summary.heldout_rows == 64
    assert summary.heldout.per_step[0] > 0.9, summary.heldout
    icsae = ICSAE.from_pretrained(config.out_dir / ICSAE_DIR)
    direction = shared_direction(read_mixtures(config.factory_dir(), "train", 2).mixtures)
    assert torch.allclose(icsae.dictionary.norm(dim=0), torch.ones(icsae.config.num_kernels), atol=1e-5)
    assert (direction @ icsae.dictionary).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["tiny", "h100"])
def test_shipped_configs_load(name):
    config = load_config(MartConfig, CONFIGS / f"{name}.yaml")
    assert config.factory.mixtures.max_sources >= 1 and config.train.epochs >= 1


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(MartConfig, {"zero_stage": 3})
    with pytest.raises(ConfigError, match="labels_csv"):
        load_config(MartConfig, {"factory": {"sound_bank": "/data/audioset"}})
