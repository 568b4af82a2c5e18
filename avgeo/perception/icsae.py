"""The Iterative Convolutional Sparse Autoencoder (IC-SAE): an audio embedding -> ordered acoustic atoms.

The dictionary `W_d` (d, N) holds N unit-norm kernels split into one contiguous block per AudioSet class,
in classifier order (`avgeo.data.audioset.audioset_classes()`). The split is exact: the first `N mod C`
classes get `ceil(N / C)` kernels and the others `floor(N / C)`; for N = 4096 and C = 527 that is 407
blocks of 8 followed by 120 blocks of 7 (407·8 + 120·7 = 4096).

`ICSAE.decompose` is Algorithm 1 of the method, batched over mixtures: K greedy steps, each taking the
kernel with the largest activation `W_dᵀ r`, its strength `z = ReLU(wᵀ r)` and the residual update
`r ← r − z w`. With unit-norm kernels a step removes exactly z² of the residual energy
(‖r − z w‖² = ‖r‖² − z² when z = wᵀ r), so the residual energy never increases. The kernel choice
(argmax) is not differentiable; strengths, activations and reconstructions are, with respect to `W_d`,
which is what MART trains. Kernels stay unit-norm through `normalize_`, called at init and by the
trainer after every optimiser step.

The embeddings it decomposes are CLAP's pre-normalisation projections (`AudioEmbedding.projection`);
`avgeo.perception.audio` explains why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avgeo.config import config_to_dict
from avgeo.data.audioset import AudioSetClass, audioset_classes
from avgeo.perception.checkpoints import (
    CheckpointError,
    TinyRecipe,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

_NORM_EPS = 1e-12


@dataclass
class ICSAEConfig:
    """Shape of the IC-SAE dictionary."""

    dim: int = 512
    """Width d of the embeddings it decomposes (CLAP's joint space: 512)."""
    num_kernels: int = 4096
    """Number of kernels N, split into one block per AudioSet class (at least one kernel per class)."""

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.num_kernels < len(audioset_classes()):
            raise ValueError(
                f"num_kernels={self.num_kernels} leaves some of the {len(audioset_classes())} AudioSet "
                "classes without a kernel; use at least one kernel per class"
            )


def kernel_classes(num_kernels: int, num_classes: int) -> torch.Tensor:
    """(N,) long: the class of each kernel; contiguous blocks in class order, larger blocks first."""
    block, extra = divmod(num_kernels, num_classes)
    sizes = torch.full((num_classes,), block, dtype=torch.long)
    sizes[:extra] += 1
    return torch.repeat_interleave(torch.arange(num_classes), sizes)


@dataclass
class Decomposition:
    """Result of `ICSAE.decompose` for B embeddings and K steps; step k is Algorithm 1's iteration k + 1."""

    kernels: torch.Tensor
    """(B, K) long: selected kernel j*_k; -1 where the step is not valid."""
    classes: torch.Tensor
    """(B, K) long: AudioSet class index of the selected kernel; -1 where the step is not valid."""
    strengths: torch.Tensor
    """(B, K): z_k = ReLU(w_{j*}ᵀ r_{k-1}); 0 where the step is not valid."""
    residual: torch.Tensor
    """(B, d): r_K, the part of the input no atom explains."""
    activations: torch.Tensor
    """(B, K, N): W_dᵀ r_{k-1} for every kernel at every step (MART's class scores come from these)."""
    reconstructions: torch.Tensor
    """(B, K, d): x̂_k = z_k w_{j*}; zero where the step is not valid."""
    valid: torch.Tensor
    """(B, K) bool: the step ran; False from the first step whose incoming residual met the stop rule."""


@dataclass(frozen=True)
class Atom:
    """One acoustic atom of a decomposition, for outputs and prompts."""

    class_mid: str
    """AudioSet machine id of the kernel's class, e.g. "/m/09x0r"."""
    class_name: str
    """AudioSet display name, e.g. "Speech"."""
    kernel: int
    """Index of the kernel in the dictionary, 0..N-1."""
    strength: float
    """z, the kernel's activation on the residual (> 0)."""
    step: int
    """1-based step at which it was extracted (Algorithm 1's k): 1 explains the most prominent sound."""


class ICSAE(nn.Module):
    """Dictionary of class-partitioned unit-norm kernels and the iterative decomposition over it."""

    def __init__(self, config: ICSAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or ICSAEConfig()
        self.classes: tuple[AudioSetClass, ...] = audioset_classes()
        # W_d, (d, N): one unit-norm kernel per column.
        self.dictionary = nn.Parameter(torch.randn(self.config.dim, self.config.num_kernels))
        self.register_buffer(
            "class_of_kernel", kernel_classes(self.config.num_kernels, len(self.classes)), persistent=False
        )
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Rescale every kernel to unit norm, in place (the trainer calls this after each step)."""
        self.dictionary.div_(self.dictionary.norm(dim=0, keepdim=True).clamp_min(_NORM_EPS))

    def decompose(
        self,
        x: torch.Tensor,
        num_steps: int,
        stop_energy: float | None = None,
        forced_classes: torch.Tensor | None = None,
    ) -> Decomposition:
        """Algorithm 1 on a batch: x (B, d) -> K = `num_steps` atoms per row and the residual.

        `stop_energy`: a step of row b runs only while ‖r_{k-1}‖² > stop_energy · ‖x_b‖²; later steps
        are marked invalid and leave the residual unchanged. `forced_classes` (B, K) long: teacher
        forcing for MART, step k picks the best kernel within class `forced_classes[:, k]`'s block.
        """
        self._check_inputs(x, num_steps, stop_energy, forced_classes)
        kernels_T = self.dictionary.T
        residual = x
        stop_level = None if stop_energy is None else stop_energy * x.pow(2).sum(-1)
        running = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        steps: list[tuple[torch.Tensor, ...]] = []
        for k in range(num_steps):
            if stop_level is not None:
                running = running & (residual.pow(2).sum(-1) > stop_level)
            activation = residual @ self.dictionary  # a_k = W_dᵀ r_{k-1}, (B, N)
            scores = activation
            if forced_classes is not None:
                outside_block = self.class_of_kernel != forced_classes[:, k, None]
                scores = activation.masked_fill(outside_block, float("-inf"))
            kernel = scores.argmax(-1)  # j*_k
            strength = activation.gather(-1, kernel[:, None]).squeeze(-1).relu() * running  # z_k
            reconstruction = strength[:, None] * kernels_T[kernel]  # x̂_k
            residual = residual - reconstruction  # r_k
            steps.append((kernel, strength, activation, reconstruction, running))
        stacked = (torch.stack(per_step, dim=1) for per_step in zip(*steps, strict=True))
        kernel, strength, activation, reconstruction, valid = stacked
        return Decomposition(
            kernels=kernel.masked_fill(~valid, -1),
            classes=self.class_of_kernel[kernel].masked_fill(~valid, -1),
            strengths=strength,
            residual=residual,
            activations=activation,
            reconstructions=reconstruction,
            valid=valid,
        )

    def class_scores(self, activations: torch.Tensor) -> torch.Tensor:
        """(..., N) kernel activations -> (..., C): each class's best kernel activation (MART's logits).

        Its argmax is the class of the argmax kernel, so cross-entropy on it trains step 5 of Algorithm 1.
        """
        index = self.class_of_kernel.expand_as(activations)
        empty = activations.new_full((*activations.shape[:-1], len(self.classes)), float("-inf"))
        return empty.scatter_reduce(-1, index, activations, reduce="amax", include_self=False)

    def atoms(self, decomposition: Decomposition) -> list[list[Atom]]:
        """Per row, the valid steps with strength > 0 as `Atom`s, in extraction order."""
        rows = zip(
            decomposition.kernels.tolist(),
            decomposition.strengths.tolist(),
            decomposition.valid.tolist(),
            strict=True,
        )
        result = []
        for kernels, strengths, valid in rows:
            atoms = []
            for step, (kernel, strength, ok) in enumerate(zip(kernels, strengths, valid, strict=True), 1):
                if ok and strength > 0:
                    audioset_class = self.classes[int(self.class_of_kernel[kernel])]
                    atoms.append(Atom(audioset_class.mid, audioset_class.name, kernel, strength, step))
            result.append(atoms)
        return result

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` (the dictionary) into `directory`."""
        save_checkpoint(directory, self.config, {"dictionary": self.dictionary})

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = "tiny") -> ICSAE:
        """Load a directory written by `save_pretrained`, or `tiny` (the seeded, untrained dictionary)."""
        directory = resolve_checkpoint(name_or_dir, _TINY_RECIPE)
        config, state_dict = load_checkpoint(directory, ICSAEConfig)
        # The random init is overwritten at once; it must not advance the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            model = cls(config)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: weights do not fit its config.json: {exc}") from exc
        return model

    def _check_inputs(
        self,
        x: torch.Tensor,
        num_steps: int,
        stop_energy: float | None,
        forced_classes: torch.Tensor | None,
    ) -> None:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"x must be (B, {self.config.dim}) embeddings, got shape {tuple(x.shape)}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        if stop_energy is not None and not 0.0 <= stop_energy < 1.0:
            raise ValueError(f"stop_energy is a fraction of the input energy in [0, 1), got {stop_energy}")
        if forced_classes is not None:
            if forced_classes.shape != (x.shape[0], num_steps):
                raise ValueError(
                    f"forced_classes must be (B, num_steps) = ({x.shape[0]}, {num_steps}), "
                    f"got {tuple(forced_classes.shape)}"
                )
            if forced_classes.min() < 0 or forced_classes.max() >= len(self.classes):
                raise ValueError(f"forced_classes must be AudioSet class indices in [0, {len(self.classes)})")


def _save_tiny(directory: Path) -> None:
    ICSAE(ICSAEConfig()).save_pretrained(directory)


_TINY_RECIPE = TinyRecipe(kind="icsae", spec=config_to_dict(ICSAEConfig()), build=_save_tiny)
