"""Inputs shared by the learner / rollout tests (tests/test_weight_sync.py on CPU, tests/test_gpu.py on
CUDA): random prompt batches for the tiny MLLM and a free local port for a rendezvous."""

import socket

import numpy as np
import torch

from avgeo.distributed.rollout import PromptBatch
from avgeo.reasoning.prompt import SoundAtom

GROUP_SIZE = 4
"""Completions per prompt."""
NUM_PROMPTS = 2
"""Prompts per batch."""


def random_prompts(seed: int) -> PromptBatch:
    """NUM_PROMPTS prompts of 4 random frames and two atoms each, with random true locations."""
    rng = np.random.default_rng(seed)
    atoms = [
        [SoundAtom(name, strength, torch.from_numpy(rng.normal(size=512).astype(np.float32)))
         for name, strength in (("Speech", 0.8), ("Bird", 0.3))]
        for _ in range(NUM_PROMPTS)
    ]  # fmt: skip
    return PromptBatch(
        [f"clip{seed}-{i}" for i in range(NUM_PROMPTS)],
        torch.from_numpy(rng.normal(size=(NUM_PROMPTS, 4, 512)).astype(np.float32)),
        atoms,
        np.stack((rng.uniform(-60, 60, NUM_PROMPTS), rng.uniform(-180, 180, NUM_PROMPTS)), axis=1),
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
