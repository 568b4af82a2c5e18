"""IC-SAE: the class partition, Algorithm 1's invariants, teacher forcing, gradients and save/load."""

import json

import pytest
import torch

from avgeo.data.audioset import audioset_classes
from avgeo.perception.checkpoints import CheckpointError, cache_root
from avgeo.perception.icsae import ICSAE, ICSAEConfig, kernel_classes


@pytest.fixture(autouse=True, scope="module")
def avgeo_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVGEO_HOME", str(tmp_path_factory.mktemp("avgeo_home")))
        yield


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(1)
    model = ICSAE().double()
    model.normalize_()  # unit norm to float64 precision, so the identities below hold to ~1e-12
    return model


def _random_mixtures(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 512, generator=generator, dtype=torch.float64) * 3.0


def _residuals(x: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """(B, K+1, d): r_0 = x, r_k = x - sum of the first k reconstructions."""
    steps = torch.cat([torch.zeros_like(x)[:, None], reconstructions.cumsum(1)], dim=1)
    return x[:, None] - steps


def test_partition_is_407_blocks_of_8_then_120_of_7():
    class_of_kernel = ICSAE().class_of_kernel
    sizes = torch.bincount(class_of_kernel, minlength=527)
    assert class_of_kernel.shape == (4096,)
    assert sizes[:407].eq(8).all() and sizes[407:].eq(7).all()
    assert len(sizes) == len(audioset_classes()) == 527
    assert (class_of_kernel.diff() >= 0).all(), "blocks must be contiguous, in class order"


@pytest.mark.parametrize(("num_kernels", "num_classes"), [(4096, 527), (527, 527), (1000, 7), (13, 5)])
def test_kernel_classes_split_is_exact_and_balanced(num_kernels, num_classes):
    class_of_kernel = kernel_classes(num_kernels, num_classes)
    sizes = torch.bincount(class_of_kernel, minlength=num_classes)
    assert class_of_kernel.numel() == num_kernels == sizes.sum()
    assert sizes.max() - sizes.min() <= 1 and sizes.min() >= 1
    assert (sizes.diff() <= 0).all(), "the larger blocks come first"


def test_too_few_kernels_for_the_classes_is_a_config_error():
    with pytest.raises(ValueError, match="at least one kernel per class"):
        ICSAEConfig(num_kernels=526)


def test_normalize_makes_every_kernel_unit_norm_and_is_idempotent(model64):
    model = ICSAE()
    assert torch.allclose(model.dictionary.norm(dim=0), torch.ones(4096), atol=1e-6)
    with torch.no_grad():
        model.dictionary.mul_(torch.rand(4096) * 10 + 0.1)
    model.normalize_()
    once = model.dictionary.detach().clone()
    model.normalize_()
    assert torch.allclose(once.norm(dim=0), torch.ones(4096), atol=1e-6)
    assert torch.allclose(model.dictionary, once, atol=1e-7)


def test_each_step_removes_exactly_its_strength_squared(model64):
    x = _random_mixtures(16, seed=2)
    result = model64.decompose(x, num_steps=8)
    energy = _residuals(x, result.reconstructions).pow(2).sum(-1)  # (B, K+1)
    removed = energy[:, :-1] - energy[:, 1:]
    assert torch.allclose(removed, result.strengths.pow(2), rtol=1e-10, atol=1e-10)
    assert (removed >= -1e-10).all(), "residual energy must never increase"
    assert torch.allclose(result.residual, x - result.reconstructions.sum(1), atol=1e-12)


def test_strength_is_the_largest_activation_and_the_residual_is_orthogonal_to_its_kernel(model64):
    x = _random_mixtures(16, seed=3)
    result = model64.decompose(x, num_steps=6)
    assert torch.equal(result.strengths, result.activations.max(-1).values.relu())
    residuals = _residuals(x, result.reconstructions)[:, 1:]  # r_k after step k
    chosen = model64.dictionary.T[result.kernels]  # (B, K, d)
    assert (result.strengths > 0).all()
    assert (residuals * chosen).sum(-1).abs().max() < 1e-10


def test_a_pure_kernel_times_a_gain_is_recovered_with_zero_residual(model64):
    generator = torch.Generator().manual_seed(4)
    kernels = torch.randint(0, 4096, (32,), generator=generator)
    gains = torch.rand(32, generator=generator, dtype=torch.float64) * 5 + 0.5
    x = gains[:, None] * model64.dictionary.detach().T[kernels]
    result = model64.decompose(x, num_steps=3, stop_energy=1e-9)
    assert torch.equal(result.kernels[:, 0], kernels)
    assert torch.allclose(result.strengths[:, 0], gains, rtol=1e-12)
    assert result.residual.norm(dim=-1).max() < 1e-12
    assert not result.valid[:, 1:].any(), "nothing is left to explain after the first step"
    atoms = model64.atoms(result)
    assert [len(row) for row in atoms] == [1] * 32
    for row, kernel in zip(atoms, kernels.tolist(), strict=True):
        audioset_class = audioset_classes()[int(model64.class_of_kernel[kernel])]
        assert (row[0].kernel, row[0].class_mid, row[0].class_name) == (
            kernel,
            audioset_class.mid,
            audioset_class.name,
        )


def test_batched_decomposition_equals_one_row_at_a_time(model64):
    x = _random_mixtures(6, seed=5)
    forced = torch.randint(0, 527, (6, 4), generator=torch.Generator().manual_seed(6))
    for kwargs in ({}, {"stop_energy": 0.8}, {"forced_classes": forced}):
        batched = model64.decompose(x, num_steps=4, **kwargs)
        for row in range(6):
            row_kwargs = {k: v[row : row + 1] if torch.is_tensor(v) else v for k, v in kwargs.items()}
            single = model64.decompose(x[row : row + 1], num_steps=4, **row_kwargs)
            assert torch.equal(single.kernels[0], batched.kernels[row])
            assert torch.equal(single.valid[0], batched.valid[row])
            assert torch.allclose(single.strengths[0], batched.strengths[row], atol=1e-12)
            assert torch.allclose(single.residual[0], batched.residual[row], atol=1e-12)


def test_forced_classes_pick_the_best_kernel_inside_the_forced_block(model64):
    x = _random_mixtures(8, seed=7)
    forced = torch.randint(0, 527, (8, 5), generator=torch.Generator().manual_seed(8))
    result = model64.decompose(x, num_steps=5, forced_classes=forced)
    assert torch.equal(result.classes, forced)
    in_block = model64.class_of_kernel == forced[..., None]  # (B, K, N)
    best_in_block = result.activations.masked_fill(~in_block, float("-inf")).max(-1).values
    chosen = result.activations.gather(-1, result.kernels[..., None]).squeeze(-1)
    assert torch.equal(chosen, best_in_block)
    assert torch.equal(result.strengths, chosen.relu())


def test_stop_energy_ends_each_row_once_its_residual_is_small_enough(model64):
    x = _random_mixtures(32, seed=9)
    stop = 0.9
    result = model64.decompose(x, num_steps=10, stop_energy=stop)
    valid = result.valid
    assert valid[:, 0].all()
    assert (valid[:, 1:] <= valid[:, :-1]).all(), "once stopped, a row stays stopped"
    assert (~valid).any() and valid[:, 1].any(), "the threshold should stop some rows, not all at once"
    energy = _residuals(x, result.reconstructions).pow(2).sum(-1)[:, :-1]  # energy entering step k
    limit = stop * x.pow(2).sum(-1, keepdim=True)
    assert torch.equal(valid, energy > limit)
    assert (result.strengths[~valid] == 0).all() and (result.kernels[~valid] == -1).all()
    assert (result.classes[~valid] == -1).all()
    assert [len(row) for row in model64.atoms(result)] == valid.sum(1).tolist()


def test_class_scores_are_block_maxima_and_agree_with_the_selected_kernel(model64):
    x = _random_mixtures(8, seed=10)
    result = model64.decompose(x, num_steps=3)
    scores = model64.class_scores(result.activations)
    assert scores.shape == (8, 3, 527)
    assert torch.equal(scores.argmax(-1), result.classes)
    block = result.activations[..., model64.class_of_kernel == 300]
    assert torch.equal(scores[..., 300], block.max(-1).values)


def test_gradient_with_respect_to_the_dictionary_matches_finite_differences():
    torch.manual_seed(11)
    model = ICSAE().double()
    x = _random_mixtures(4, seed=12)
    forced = torch.randint(0, 527, (4, 3), generator=torch.Generator().manual_seed(13))
    targets = torch.randn(4, 3, 512, dtype=torch.float64)

    def mart_like_loss() -> torch.Tensor:
        result = model.decompose(x, num_steps=3, forced_classes=forced)
        logits = model.class_scores(result.activations)
        cross_entropy = torch.nn.functional.cross_entropy(logits.flatten(0, 1), forced.flatten())
        return cross_entropy + (result.reconstructions - targets).pow(2).sum(-1).mean()

    mart_like_loss().backward()
    gradient = model.dictionary.grad.clone()
    direction = torch.randn_like(gradient)
    eps = 1e-6
    with torch.no_grad():
        model.dictionary.add_(eps * direction)
        plus = mart_like_loss().item()
        model.dictionary.sub_(2 * eps * direction)
        minus = mart_like_loss().item()
    numeric = (plus - minus) / (2 * eps)
    assert abs(numeric - (gradient * direction).sum().item()) < 1e-5 * max(1.0, abs(numeric))


def test_save_and_load_round_trip(tmp_path, model64):
    model = ICSAE()
    model.save_pretrained(tmp_path / "icsae")
    assert json.loads((tmp_path / "icsae" / "config.json").read_text()) == {"dim": 512, "num_kernels": 4096}
    loaded = ICSAE.from_pretrained(tmp_path / "icsae")
    assert torch.equal(loaded.dictionary, model.dictionary)
    x = torch.randn(5, 512)
    first, second = model.decompose(x, 4), loaded.decompose(x, 4)
    assert torch.equal(first.kernels, second.kernels) and torch.equal(first.residual, second.residual)


def test_tiny_is_built_once_from_a_fixed_seed(tmp_path, monkeypatch):
    tiny = ICSAE.from_pretrained("tiny")
    built = sorted((cache_root() / "checkpoints").iterdir())
    again = ICSAE.from_pretrained("tiny")
    assert sorted((cache_root() / "checkpoints").iterdir()) == built
    assert torch.equal(tiny.dictionary, again.dictionary)
    monkeypatch.setenv("AVGEO_HOME", str(tmp_path / "elsewhere"))
    rebuilt = ICSAE.from_pretrained("tiny")
    assert torch.equal(rebuilt.dictionary, tiny.dictionary)


def test_tiny_build_leaves_the_callers_random_stream_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEO_HOME", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ICSAE.from_pretrained("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_loading_errors_name_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        ICSAE.from_pretrained(tmp_path / "missing")
    ICSAE(ICSAEConfig(num_kernels=600)).save_pretrained(tmp_path / "small")
    (tmp_path / "small" / "config.json").write_text(json.dumps({"dim": 512, "num_kernels": 4096}))
    with pytest.raises(CheckpointError, match="do not fit"):
        ICSAE.from_pretrained(tmp_path / "small")
    (tmp_path / "small" / "config.json").write_text(json.dumps({"dim": 512, "kernels": 600}))
    with pytest.raises(CheckpointError, match="unknown config key kernels"):
        ICSAE.from_pretrained(tmp_path / "small")


def test_bad_inputs_are_rejected_with_the_expected_shape(model64):
    x = torch.zeros(2, 512, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(B, 512\)"):
        model64.decompose(torch.zeros(2, 511, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="num_steps"):
        model64.decompose(x, 0)
    with pytest.raises(ValueError, match="stop_energy"):
        model64.decompose(x, 3, stop_energy=1.5)
    with pytest.raises(ValueError, match="forced_classes must be"):
        model64.decompose(x, 3, forced_classes=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        model64.decompose(x, 3, forced_classes=torch.full((2, 3), 527))
