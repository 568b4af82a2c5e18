"""The rollout side of GRPO: prompt batches, the rollout worker, rollouts and their rewards.

    PromptBatch -> RolloutWorker.generate -> Rollouts -> RewardFn.score -> rewards

A `RolloutWorker` holds its own copy of the policy: it samples G completions per prompt with transformers'
`generate`, records each token's log-probability under the sampling policy (the GRPO ratio's π_old) and
each completion's ψ (for R_calib), and tags the rollouts with the policy version it holds. Its weights
change only through a sync (`avgeo.distributed.weight_sync`). `RewardFn` parses the completions and
scores them with R_geo, R_align and R_calib, the latter under a frozen RFM head over ψ.

The classes are plain Python: the GRPO driver runs them as Ray actors, tests may run them in-process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from avgeo.distributed.weight_sync import BroadcastGroupSpec, PolicyWeights, WeightBroadcast
from avgeo.geo.gazetteer import Gazetteer
from avgeo.prediction.flow import RFMHead
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig
from avgeo.reasoning.prompt import SoundAtom
from avgeo.reasoning.rewards import RewardBreakdown, RewardConfig, total_reward


@dataclass
class PromptBatch:
    """B clips as MLLM prompts, with their true locations."""

    clip_ids: list[str]
    """B clip ids."""
    visual_per_frame: torch.Tensor
    """(B, T, 512) float32 GeoCLIP frame features."""
    atoms: list[list[SoundAtom]]
    """B lists of acoustic atoms, strongest first."""
    true_latlon_deg: np.ndarray
    """(B, 2) float64 true (latitude, longitude), degrees."""

    def __len__(self) -> int:
        return len(self.clip_ids)

    def select(self, indices: Sequence[int]) -> PromptBatch:
        """The prompts at `indices`, in that order."""
        rows = list(indices)
        return PromptBatch(
            [self.clip_ids[i] for i in rows],
            self.visual_per_frame[rows],
            [self.atoms[i] for i in rows],
            self.true_latlon_deg[rows],
        )

    @staticmethod
    def concat(batches: Sequence[PromptBatch]) -> PromptBatch:
        """The prompts of `batches` one after the other (their T must agree)."""
        return PromptBatch(
            [clip_id for batch in batches for clip_id in batch.clip_ids],
            torch.cat([batch.visual_per_frame for batch in batches]),
            [atoms for batch in batches for atoms in batch.atoms],
            np.concatenate([batch.true_latlon_deg for batch in batches]),
        )


@dataclass
class Rollouts:
    """G sampled completions for each of B prompts (N = B·G rows, prompt-major), from one policy version."""

    prompts: PromptBatch
    """The B prompts."""
    group_size: int
    """G, completions per prompt."""
    texts: list[str]
    """N decoded completions."""
    token_ids: torch.Tensor
    """(N, T') long sampled token ids (any value where `mask` is 0)."""
    mask: torch.Tensor
    """(N, T') long: 1 on each completion's tokens."""
    logprobs: torch.Tensor
    """(N, T') float32 log-probabilities of the sampled tokens under the sampling policy (π_old)."""
    psi: torch.Tensor
    """(N, H) float32 ψ of each completion under the sampling policy."""
    policy_version: int
    """Version of the weights that sampled them."""
    ref_logprobs: torch.Tensor | None = None
    """(N, T') float32 log-probabilities under the frozen reference; set by the driver before a step."""
    advantages: torch.Tensor | None = None
    """(N,) group-normalised advantages; set by the driver before the learner step."""

    def __len__(self) -> int:
        return len(self.texts)

    def response_true_latlon_deg(self) -> np.ndarray:
        """(N, 2) degrees: each completion's true location (its prompt's)."""
        return np.repeat(self.prompts.true_latlon_deg, self.group_size, axis=0)

    def logprobs_under(self, policy: GeoMLLM) -> torch.Tensor:
        """(N, T') log-probabilities of the completions under `policy`, 0 off the mask; differentiable."""
        inputs = policy.build_inputs(self.prompts.visual_per_frame, self.prompts.atoms)
        return policy.sequence_logprobs(inputs, self.token_ids, self.mask)

    def chunks(self, num_chunks: int) -> list[Rollouts]:
        """`num_chunks` equal parts, whole prompt groups each, in order."""
        num_prompts = len(self.prompts)
        if num_chunks < 1 or num_prompts % num_chunks:
            raise ValueError(f"{num_prompts} prompts do not split into {num_chunks} equal parts")
        per_chunk = num_prompts // num_chunks
        return [self._prompt_range(i * per_chunk, (i + 1) * per_chunk) for i in range(num_chunks)]

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        """The rollouts of `parts` one after the other, right-padded to the longest completion."""
        versions = {part.policy_version for part in parts}
        sizes = {part.group_size for part in parts}
        if len(versions) != 1 or len(sizes) != 1:
            raise ValueError(
                f"rollouts of policy versions {sorted(versions)} and group sizes {sorted(sizes)} cannot be "
                "joined; sync every rollout worker before each generation"
            )

        def padded(name: str) -> torch.Tensor | None:
            tensors = [getattr(part, name) for part in parts]
            if any(t is None for t in tensors):
                return None
            width = max(t.shape[1] for t in tensors)
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])

        return Rollouts(
            prompts=PromptBatch.concat([part.prompts for part in parts]),
            group_size=parts[0].group_size,
            texts=[text for part in parts for text in part.texts],
            token_ids=padded("token_ids"),
            mask=padded("mask"),
            logprobs=padded("logprobs"),
            psi=torch.cat([part.psi for part in parts]),
            policy_version=parts[0].policy_version,
            ref_logprobs=padded("ref_logprobs"),
            advantages=None if parts[0].advantages is None else torch.cat([p.advantages for p in parts]),
        )

    def _prompt_range(self, first: int, stop: int) -> Rollouts:
        rows = slice(first * self.group_size, stop * self.group_size)

        def rows_of(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[rows]

        return dataclasses.replace(
            self,
            prompts=self.prompts.select(range(first, stop)),
            texts=self.texts[rows],
            token_ids=self.token_ids[rows],
            mask=self.mask[rows],
            logprobs=self.logprobs[rows],
            psi=self.psi[rows],
            ref_logprobs=rows_of(self.ref_logprobs),
            advantages=rows_of(self.advantages),
        )


class RolloutWorker:
    """Generation with a copy of the policy, loaded from `mllm_config.model` as version 0."""

    def __init__(self, mllm_config: MLLMConfig, device: str = "cpu", torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        self.policy = GeoMLLM.from_pretrained(config=mllm_config).to(device)
        # The same modules decoding greedily, for evaluation: weights synced into one are the other's.
        greedy_config = dataclasses.replace(mllm_config, temperature=0.0)
        self._greedy = GeoMLLM(self.policy.llava, self.policy.tokenizer, self.policy.projector, greedy_config)
        self._version = 0
        self._broadcast: WeightBroadcast | None = None

    def policy_version(self) -> int:
        """The version of the weights this worker holds."""
        return self._version

    @torch.no_grad()
    def generate(self, prompts: PromptBatch, group_size: int, seed: int) -> Rollouts:
        """Sample `group_size` completions per prompt (seeded), with their log-probabilities and ψ."""
        inputs = self.policy.build_inputs(prompts.visual_per_frame, prompts.atoms)
        generation = self.policy.generate(inputs, num_return_sequences=group_size, seed=seed)
        psi = self.policy.psi(inputs, generation.token_ids, generation.mask)
        return Rollouts(
            prompts=prompts,
            group_size=group_size,
            texts=generation.texts,
            token_ids=generation.token_ids.cpu(),
            mask=generation.mask.cpu(),
            logprobs=generation.logprobs.float().cpu(),
            psi=psi.float().cpu(),
            policy_version=self._version,
        )

    @torch.no_grad()
    def answer(self, prompts: PromptBatch) -> list[str]:
        """One greedy completion per prompt (for evaluation)."""
        inputs = self._greedy.build_inputs(prompts.visual_per_frame, prompts.atoms)
        return self._greedy.generate(inputs).texts

    def weights(self) -> PolicyWeights:
        """The synced weights this worker holds, on the CPU, with their version."""
        state_dict = {name: t.to("cpu", copy=True) for name, t in self.policy.state_dict_for_sync().items()}
        return PolicyWeights(self._version, state_dict)

    def load_weights(self, weights: PolicyWeights) -> int:
        """Take weights from the object store; returns the version now held."""
        self.policy.load_state_dict_for_sync(weights.state_dict)
        self._version = weights.version
        return self._version

    def join_broadcast(self, spec: BroadcastGroupSpec, rank: int) -> None:
        """Join the learner's weight-broadcast group as `rank` (>= 1); blocks until every member joined."""
        self._broadcast = WeightBroadcast(spec, rank, self.policy.state_dict_for_sync())

    def receive_weights(self) -> int:
        """Receive the learner's broadcast into this worker's parameters; returns the version now held."""
        if self._broadcast is None:
            raise RuntimeError("receive_weights before join_broadcast; join the learner's group first")
        self._version = self._broadcast.receive()
        return self._version


class RewardFn:
    """The GRPO rewards of rollouts: R_geo, R_align and R_calib (under a frozen RFM head over ψ)."""

    def __init__(self, config: RewardConfig, calib_head: RFMHead, gazetteer: Gazetteer | None = None) -> None:
        self.config = config
        self.calib_head = calib_head.eval().requires_grad_(False)
        self.gazetteer = gazetteer or Gazetteer.load()

    def score(self, rollouts: Rollouts) -> RewardBreakdown:
        """Each completion's rewards, (N,) each (see `total_reward`)."""
        responses = [parse_response(text) for text in rollouts.texts]
        with torch.no_grad():
            return total_reward(
                responses,
                rollouts.response_true_latlon_deg(),
                rollouts.psi,
                self.calib_head.log_density,
                self.gazetteer,
                self.config,
            )
