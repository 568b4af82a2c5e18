"""The MLLM's prompt: a clip's frames and acoustic atoms as text with soft-token placeholders.

A prompt follows LLaVA-1.5's conversation layout (`USER: … ASSISTANT:`). Each sampled frame is one
`<frame>` placeholder and each atom is its AudioSet display name, its strength and one `<atom>`
placeholder, strongest (first extracted) first; `GeoMLLM.build_inputs` replaces every placeholder's
embedding with the projected feature. Example, two frames and two atoms:

    USER: Video frames: <frame><frame>
    Sounds, strongest first: Speech (0.82) <atom>; Bird (0.41) <atom>
    Where on Earth was this video recorded? Reason briefly inside <think></think>, then answer with
    latitude and longitude in decimal degrees inside <answer></answer>.
    ASSISTANT:

(the instruction is one line in the prompt). The response format is `avgeo.reasoning.answer`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from avgeo.perception.icsae import ICSAE, Decomposition

FRAME_TOKEN = "<frame>"
"""Placeholder of one frame's soft token."""
ATOM_TOKEN = "<atom>"
"""Placeholder of one acoustic atom's soft token."""

INSTRUCTION = (
    "Where on Earth was this video recorded? Reason briefly inside <think></think>, then answer with "
    "latitude and longitude in decimal degrees inside <answer></answer>."
)
"""The question every prompt ends with."""

STRENGTH_DECIMALS = 2
"""Decimals of the atom strengths written in the prompt."""


class SoundAtom(NamedTuple):
    """One acoustic atom as the MLLM takes it."""

    name: str
    """AudioSet display name of the kernel's class, e.g. "Speech"."""
    strength: float
    """z, the kernel's activation (> 0)."""
    vector: torch.Tensor
    """(D,) z·w: the kernel scaled by its strength (IC-SAE's reconstruction x̂_k), D = 512 for CLAP."""


def sound_atoms(icsae: ICSAE, decomposition: Decomposition) -> list[list[SoundAtom]]:
    """Per row of a decomposition, its atoms in extraction order with their scaled kernels."""
    return [
        [
            SoundAtom(atom.class_name, atom.strength, decomposition.reconstructions[row, atom.step - 1])
            for atom in atoms
        ]
        for row, atoms in enumerate(icsae.atoms(decomposition))
    ]


def render_prompt(num_frames: int, atoms: Sequence[tuple[str, float]]) -> str:
    """The prompt text for `num_frames` frames and (name, strength) atoms, strongest first."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: a prompt needs at least one frame")
    sounds = "; ".join(f"{name} ({strength:.{STRENGTH_DECIMALS}f}) {ATOM_TOKEN}" for name, strength in atoms)
    return (
        f"USER: Video frames: {FRAME_TOKEN * num_frames}\n"
        f"Sounds, strongest first: {sounds or 'none'}\n"
        f"{INSTRUCTION}\n"
        "ASSISTANT:"
    )
