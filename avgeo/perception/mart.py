"""MART: the data factory's mixing maths, the MART objective, its standard-SAE ablation and their evaluation.

Data factory (Fig. 3a of the method). A mixture draws K ∈ [1, K_max] distinct classes of a sound bank,
amplitude gains g_1 = 1 > g_2 > … > g_K (each drop uniform in [min, max] dB) and an onset per source
(each plays from its onset to the end). The mixture is exactly the sum of the scaled, placed sources;
the encoder embeds the mixture and every scaled source, `f_audio(g_k c_k)`. With drops of at least 3 dB
and onsets in the first quarter, gain order is also energy order in the mixture (a source covering 75 %
of the mixture at g has more energy than one covering all of it at g/√2).

Objectives, on those cached embeddings (`MixtureBatch`):
- `mart_loss` (Algorithm 1, Fig. 3b): step k's loss is cross-entropy of the class scores of the kernel
  activations against class k, plus ‖x̂_k − f_audio(g_k c_k)‖²; kernels are picked by teacher forcing
  (within the true class's block) or free running (argmax over all kernels).
- `standard_sae_loss`, the ablation: the same dictionary read once, no residual updates. Its top-K classes
  are the decomposition; it is trained with the same per-step cross-entropy (step k's scores are the
  mixture's class scores with the earlier true classes removed) and to reconstruct the mixture from its
  K atoms, as a standard SAE reconstructs its input.
Both multiply class scores by `logit_scale` before the cross-entropy (argmaxes do not change), and both
train a dictionary kept orthogonal to the embeddings' shared direction (`constrain_dictionary_`), on
embeddings with that direction removed (`MixtureBatch.without_direction`).

Evaluation: `decomposition_accuracy` compares predicted class sequences with the true ones, per step and
for whole sequences; `mart_decompose` and `standard_sae_decompose` produce those sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avgeo.data.soundbank import SoundBank
from avgeo.perception.icsae import ICSAE

PAD_CLASS = -1
"""Class index of the steps past a mixture's K in padded (B, K_max) class tensors."""


@dataclass
class MixtureRecipe:
    """How the data factory draws one mixture."""

    max_sources: int = 3
    """K_max: each mixture holds K ∈ [1, K_max] sources of distinct classes, K uniform."""
    min_duration_s: float = 2.0
    """Shortest mixture, seconds (durations are uniform between the two bounds)."""
    max_duration_s: float = 4.0
    """Longest mixture, seconds; at most the encoder's window (10 s for CLAP), so one embedding covers it."""
    min_gain_drop_db: float = 3.0
    """Smallest level drop from one source to the next, dB (> 0 keeps the gains strictly decreasing)."""
    max_gain_drop_db: float = 12.0
    """Largest level drop from one source to the next, dB."""
    max_onset_fraction: float = 0.25
    """Each source starts at a uniform onset in [0, this fraction of the mixture] and plays to the end."""

    def __post_init__(self) -> None:
        if self.max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, got {self.max_sources}")
        if not 0 < self.min_duration_s <= self.max_duration_s:
            raise ValueError(
                f"durations must satisfy 0 < min_duration_s <= max_duration_s, "
                f"got {self.min_duration_s} and {self.max_duration_s}"
            )
        if not 0 < self.min_gain_drop_db <= self.max_gain_drop_db:
            raise ValueError(
                "gain drops must satisfy 0 < min_gain_drop_db <= max_gain_drop_db (strictly decreasing "
                f"gains), got {self.min_gain_drop_db} and {self.max_gain_drop_db}"
            )
        if not 0 <= self.max_onset_fraction < 1:
            raise ValueError(f"max_onset_fraction must be in [0, 1), got {self.max_onset_fraction}")


@dataclass(frozen=True)
class MixturePlan:
    """What one mixture holds, drawn by `plan_mixture`; sources are in gain order."""

    class_mids: tuple[str, ...]
    """(K,) AudioSet mids, loudest first."""
    gains: np.ndarray
    """(K,) float64 amplitude gains, strictly decreasing, gains[0] = 1."""
    onsets: np.ndarray
    """(K,) int64 first sample of each source in the mixture."""
    num_samples: int
    """Length of the mixture, samples."""


def plan_mixture(
    recipe: MixtureRecipe, class_mids: Sequence[str], sample_rate_hz: int, rng: np.random.Generator
) -> MixturePlan:
    """Draw the classes, gains, onsets and length of one mixture from `class_mids` (at least K_max)."""
    if len(class_mids) < recipe.max_sources:
        raise ValueError(
            f"{len(class_mids)} classes cannot fill mixtures of up to {recipe.max_sources} distinct classes; "
            "lower max_sources or use a bank with more classes"
        )
    num_sources = int(rng.integers(1, recipe.max_sources + 1))
    chosen = rng.choice(len(class_mids), size=num_sources, replace=False)
    drops_db = rng.uniform(recipe.min_gain_drop_db, recipe.max_gain_drop_db, size=num_sources - 1)
    gains = 10.0 ** (-np.concatenate([[0.0], np.cumsum(drops_db)]) / 20.0)
    duration_s = rng.uniform(recipe.min_duration_s, recipe.max_duration_s)
    num_samples = round(duration_s * sample_rate_hz)
    onsets = rng.integers(0, int(recipe.max_onset_fraction * num_samples) + 1, size=num_sources)
    return MixturePlan(tuple(class_mids[i] for i in chosen), gains, onsets, num_samples)


def render_mixture(
    plan: MixturePlan, bank: SoundBank, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render and mix a plan: (S,) float32 mixture and (K, S) float32 scaled, placed sources g_k c_k.

    The mixture is the sum of the sources' rows, so the encoder sees exactly what the targets add up to.
    """
    sources = np.zeros((len(plan.class_mids), plan.num_samples), np.float32)
    for row, (mid, gain, onset) in enumerate(zip(plan.class_mids, plan.gains, plan.onsets, strict=True)):
        length = plan.num_samples - int(onset)
        sources[row, onset:] = gain * bank.render(mid, length / bank.sample_rate, rng)[:length]
    return sources.sum(0), sources


@dataclass
class MixtureBatch:
    """Cached embeddings of B mixtures, padded to K_max steps."""

    mixtures: torch.Tensor
    """(B, d) encoder projections of the mixtures, x_mix."""
    targets: torch.Tensor
    """(B, K_max, d) projections of the scaled sources f_audio(g_k c_k); zero past a mixture's K."""
    classes: torch.Tensor
    """(B, K_max) long IC-SAE class index of each source, in gain order; `PAD_CLASS` past K."""

    @property
    def present(self) -> torch.Tensor:
        """(B, K_max) bool: the step has a source."""
        return self.classes != PAD_CLASS

    def to(self, device: torch.device | str) -> MixtureBatch:
        return MixtureBatch(self.mixtures.to(device), self.targets.to(device), self.classes.to(device))

    def without_direction(self, direction: torch.Tensor) -> MixtureBatch:
        """The batch without the component along the unit vector `direction` (d,) in every embedding."""
        return MixtureBatch(
            _remove_direction(self.mixtures, direction),
            _remove_direction(self.targets, direction),
            self.classes,
        )

    def __getitem__(self, rows: slice | torch.Tensor) -> MixtureBatch:
        return MixtureBatch(self.mixtures[rows], self.targets[rows], self.classes[rows])

    def __len__(self) -> int:
        return self.mixtures.shape[0]


@dataclass
class MartLoss:
    """An objective on one batch: the scalar to minimise and its two parts (means over present steps)."""

    total: torch.Tensor
    """() classification + reconstruction_weight · reconstruction."""
    classification: torch.Tensor
    """() mean cross-entropy of the steps' class scores against the true classes, nats."""
    reconstruction: torch.Tensor
    """() mean squared error of the steps' reconstructions against their targets."""
    predicted_classes: torch.Tensor
    """(B, K_max) long class of each step's selected kernel (teacher-forced steps pick the true class)."""


def mart_loss(
    model: ICSAE,
    batch: MixtureBatch,
    teacher_forcing: bool,
    reconstruction_weight: float = 1.0,
    logit_scale: float = 1.0,
) -> MartLoss:
    """Algorithm 1 with its loss: K_max steps of decomposition, each scored against its source.

    Teacher forcing picks step k's kernel within the true class's block, so later steps see the residual
    the true sources leave; free running picks the argmax kernel, as inference does. Steps past a
    mixture's K are left out of both means.
    """
    present = batch.present
    forced = batch.classes.clamp_min(0) if teacher_forcing else None
    steps = model.decompose(batch.mixtures, batch.classes.shape[1], forced_classes=forced)
    logits = logit_scale * model.class_scores(steps.activations)  # (B, K_max, C)
    classification = F.cross_entropy(logits[present], batch.classes[present])
    squared_error = (steps.reconstructions - batch.targets).pow(2).sum(-1)  # (B, K_max)
    reconstruction = squared_error[present].mean()
    return MartLoss(
        classification + reconstruction_weight * reconstruction,
        classification,
        reconstruction,
        steps.classes,
    )


def standard_sae_loss(
    model: ICSAE,
    batch: MixtureBatch,
    teacher_forcing: bool,
    reconstruction_weight: float = 1.0,
    logit_scale: float = 1.0,
) -> MartLoss:
    """The ablation: one read of the mixture, top-K classes, the same per-step cross-entropy.

    Step k's scores are the mixture's class scores without the classes of the true steps before k (so
    step k asks for the k-th loudest class among those left). The reconstruction is the mixture itself,
    rebuilt as Σ_k z_k w_k from the best kernel of each step's class: the true classes under teacher
    forcing, the top-K classes when free running.
    """
    present = batch.present
    activations = batch.mixtures @ model.dictionary  # (B, N): one read, no residual
    scores = model.class_scores(activations)  # (B, C)
    true_one_hot = F.one_hot(batch.classes.clamp_min(0), scores.shape[-1]).bool() & present[..., None]
    earlier = true_one_hot.cumsum(1).bool() & ~true_one_hot  # (B, K_max, C): true classes of steps < k
    step_scores = logit_scale * scores[:, None].masked_fill(earlier, float("-inf"))
    classification = F.cross_entropy(step_scores[present], batch.classes[present])
    step_classes = (
        batch.classes.clamp_min(0) if teacher_forcing else _top_classes(scores, batch.classes.shape[1])
    )
    kernels = _best_kernel_of_class(model, activations, step_classes)  # (B, K_max)
    strengths = activations.gather(-1, kernels).relu() * present  # (B, K_max)
    reconstruction = (strengths[..., None] * model.dictionary.T[kernels]).sum(1)  # (B, d)
    squared_error = (reconstruction - batch.mixtures).pow(2).sum(-1).mean()
    predicted = _top_classes(scores, batch.classes.shape[1])
    return MartLoss(
        classification + reconstruction_weight * squared_error, classification, squared_error, predicted
    )


def mart_decompose(model: ICSAE, mixtures: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B, d) -> (B, num_steps) long: the classes Algorithm 1 extracts, in order (free running)."""
    return model.decompose(mixtures, num_steps).classes


def standard_sae_decompose(model: ICSAE, mixtures: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B, d) -> (B, num_steps) long: the standard SAE's top classes of one read, highest score first."""
    return _top_classes(model.class_scores(mixtures @ model.dictionary), num_steps)


@dataclass
class DecompositionAccuracy:
    """How often decompositions name the true classes, over mixtures with known labels."""

    per_step: list[float]
    """Accuracy of step k (k = 1..K_max), over the mixtures with at least k sources."""
    step: float
    """Accuracy over every (mixture, step) pair with a source."""
    sequence: float
    """Fraction of mixtures whose first K predicted classes are the K true classes in gain order."""
    class_set: float
    """Fraction of mixtures whose first K predicted classes are the true classes in any order."""


def decomposition_accuracy(predicted: torch.Tensor, true: torch.Tensor) -> DecompositionAccuracy:
    """Score (B, K_max) predicted classes against (B, K_max) true classes padded with `PAD_CLASS`."""
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and true {tuple(true.shape)} must match")
    present = true != PAD_CLASS
    correct = (predicted == true) & present
    per_step = correct.sum(0) / present.sum(0).clamp_min(1)
    sequence = (correct | ~present).all(-1)
    # Sorting with -1 for the padded steps on both sides compares the first K classes as sets.
    kept = predicted.masked_fill(~present, PAD_CLASS)
    same_set = (kept.sort(-1).values == true.sort(-1).values).all(-1)
    return DecompositionAccuracy(
        per_step=per_step.tolist(),
        step=(correct.sum() / present.sum()).item(),
        sequence=sequence.float().mean().item(),
        class_set=same_set.float().mean().item(),
    )


def _top_classes(scores: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B, C) class scores -> (B, num_steps) long indices of the highest, in descending order."""
    return scores.topk(num_steps, dim=-1).indices


def _best_kernel_of_class(model: ICSAE, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, N) activations, (B, K) classes -> (B, K) long: each class's most active kernel."""
    outside = model.class_of_kernel != classes[..., None]  # (B, K, N)
    return activations[:, None].masked_fill(outside, float("-inf")).argmax(-1)


def shared_direction(mixtures: torch.Tensor) -> torch.Tensor:
    """(B, d) embeddings -> (d,) unit vector along their mean: the part every embedding shares."""
    return F.normalize(mixtures.mean(0), dim=0)


@torch.no_grad()
def constrain_dictionary_(model: ICSAE, direction: torch.Tensor | None) -> None:
    """Make every kernel orthogonal to the unit vector `direction` (d,) when given, then unit-norm, in place.

    Kernels orthogonal to the shared direction u make Algorithm 1 on x identical to Algorithm 1 on
    x − (uᵀx)u: the same activations, kernels and strengths. CLAP's projections share one dominant
    direction (the tiny encoder's: mean cosine 0.996 between any two clips, class-specific parts ~6 % of
    the norm), and a kernel leaning along it would win the argmax by that lean rather than by the sound.
    """
    if direction is not None:
        model.dictionary.sub_(direction[:, None] * (direction @ model.dictionary))
    model.normalize_()


def _remove_direction(embeddings: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(..., d) embeddings without their component along the unit vector `direction` (d,)."""
    return embeddings - (embeddings @ direction)[..., None] * direction
