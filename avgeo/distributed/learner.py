"""The GRPO learner group and the frozen reference policy.

`Learner` is one rank of a data-parallel group that trains the policy with DeepSpeed ZeRO (stage 1 or
2) over torch.distributed: gloo on CPU, NCCL on GPU. The optimizer is torch's AdamW, and on CPU
DeepSpeed's shared-memory comm op is left out, so nothing is compiled on the fly.
`Learner.step(rollouts)` is one optimizer step on this rank's share of a GRPO batch, in micro-batches of
whole prompt groups whose gradients DeepSpeed accumulates and averages across ranks. Each step raises
the policy version by one. The ratio's π_old is the sampling policy's log-probabilities, which the
rollouts carry, so rollouts that lag the learner by a few versions (`max_staleness`) still get the
right importance ratio; older ones are refused (`StaleRolloutError`).

Why Ray actors rather than a Ray Train `TorchTrainer`: a trainer runs one training function to its end
and owns the loop, so the GRPO loop would have to move inside it and pull rollouts from a queue. As
actors with narrow methods (`step`, `weights`, `save`, `load`) the loop stays in the driver and reads
rollout → reward → advantage → loss → sync, and each method can be exercised alone — the learner-group
layout of OpenRLHF and veRL on Ray. `LearnerGroup` does what Ray Train would: rank 0 picks the
rendezvous address, every rank joins the process group, and the driver's calls fan out to all ranks.

Checkpoints: `save(directory)` writes DeepSpeed's checkpoint (module weights and each rank's optimizer
partition) under `deepspeed/` from every rank, and rank 0 writes the policy under `policy/` with
`GeoMLLM.save_pretrained`, loadable as any MLLM checkpoint. `load(directory, version)` restores both
weights and optimizer state.

`Reference` holds the frozen start policy and gives the log-probabilities of the KL term.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from avgeo.config import ConfigError
from avgeo.distributed.rollout import Rollouts
from avgeo.distributed.weight_sync import BroadcastGroupSpec, PolicyWeights, WeightBroadcast, check_fresh
from avgeo.reasoning.grpo import GRPOLossOutput, LossType, grpo_loss
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig

POLICY_DIR = "policy"
"""Subdirectory of a learner checkpoint with the policy as `GeoMLLM.save_pretrained` writes it."""

_DEEPSPEED_DIR = "deepspeed"
_DEEPSPEED_TAG = "state"


@dataclass
class LearnerConfig:
    """How the learner turns rollouts into an optimizer step."""

    learning_rate: float = 1e-5
    """AdamW learning rate (constant)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (DeepSpeed's `gradient_clipping`); 0 turns it off."""
    zero_stage: Literal[1, 2] = 2
    """DeepSpeed ZeRO stage: 1 shards the optimizer state across ranks, 2 the gradients too."""
    micro_batch_prompts: int = 1
    """Prompt groups (G completions each) per forward/backward pass on one rank."""
    clip_eps: float = 0.2
    """ε of the clipped ratio."""
    beta: float = 0.01
    """β, weight of the k3 KL penalty against the frozen reference (the method's 0.01)."""
    loss_type: LossType = "grpo"
    """Aggregation over tokens (`avgeo.reasoning.grpo.grpo_loss`): `grpo` averages each completion over
    its tokens, then the completions; `dapo` sums all tokens of the step over all ranks and divides by
    their count; `bnpo` averages over the tokens of each micro-batch."""

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("learner.learning_rate must be > 0, weight_decay and grad_clip >= 0")
        if self.micro_batch_prompts < 1 or not 0 < self.clip_eps < 1 or self.beta < 0:
            raise ConfigError("learner.micro_batch_prompts must be >= 1, clip_eps in (0, 1), beta >= 0")


class PolicyLoss(nn.Module):
    """The GRPO loss of a micro-batch of rollouts as a forward pass, so DeepSpeed sees the call."""

    def __init__(self, policy: GeoMLLM, config: LearnerConfig) -> None:
        super().__init__()
        self.policy = policy
        self.config = config

    def forward(self, rollouts: Rollouts, num_items_in_batch: float | None = None) -> GRPOLossOutput:
        logprobs = rollouts.logprobs_under(self.policy)
        device = logprobs.device
        if rollouts.advantages is None or (self.config.beta and rollouts.ref_logprobs is None):
            raise ValueError(
                "rollouts need advantages (and ref_logprobs when beta > 0) before a learner step"
            )
        return grpo_loss(
            logprobs.float(),
            rollouts.logprobs.to(device),
            None if rollouts.ref_logprobs is None else rollouts.ref_logprobs.to(device),
            rollouts.advantages.to(device),
            rollouts.mask.to(device),
            clip_eps=self.config.clip_eps,
            beta=self.config.beta,
            loss_type=self.config.loss_type,
            num_items_in_batch=num_items_in_batch,
        )


class Learner:
    """One rank of the learner group: the policy under DeepSpeed ZeRO, starting at version 0.

    Call `setup` on every rank (with rank 0's `rendezvous_address`) before anything else.
    """

    def __init__(
        self,
        mllm_config: MLLMConfig,
        config: LearnerConfig,
        rank: int,
        world_size: int,
        prompts_per_rank: int,
        group_size: int,
        device: str = "cpu",
        torch_threads: int = 1,
    ) -> None:
        if prompts_per_rank % config.micro_batch_prompts:
            raise ConfigError(
                f"{prompts_per_rank} prompts per learner rank do not split into micro-batches of "
                f"learner.micro_batch_prompts={config.micro_batch_prompts}; make it a divisor"
            )
        torch.set_num_threads(torch_threads)
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.policy = GeoMLLM.from_pretrained(config=mllm_config).to(device)
        self.num_micro_batches = prompts_per_rank // config.micro_batch_prompts
        self.micro_batch_size = config.micro_batch_prompts * group_size
        self.version = 0
        self.engine: Any = None
        self._broadcast: WeightBroadcast | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0: this node's address and a free port for the group's rendezvous."""
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group and wrap the policy in a DeepSpeed engine."""
        import deepspeed

        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so every rank's local device is 0.
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
        )
        if self.device == "cuda":
            torch.cuda.set_device(0)
        else:
            # On CPU DeepSpeed would JIT-compile a shared-memory all-reduce op here (25 s and more, again
            # whenever the ninja or compiler on PATH changes); gloo serves the learner's all-reduces as well,
            # so the op is declared unavailable in DeepSpeed's probe results, a module-level dict it keeps
            # for such edits.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if self.device == "cuda" else "gloo", verbose=False)
        objective = PolicyLoss(self.policy, self.config)
        optimizer = torch.optim.AdamW(
            [p for p in objective.parameters() if p.requires_grad],
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        self.engine, *_ = deepspeed.initialize(
            model=objective, optimizer=optimizer, config=self._deepspeed_config()
        )

    def step(self, rollouts: Rollouts, total_tokens: int, max_staleness: int = 0) -> dict[str, float]:
        """One optimizer step on this rank's rollouts (N completions, advantages and ref_logprobs set).

        `total_tokens`: completion tokens of the whole step over all ranks (the `dapo` denominator).
        Returns this rank's means over its micro-batches: loss, kl, clip_fraction, and step_s.
        """
        check_fresh(rollouts.policy_version, self.version, max_staleness)
        start_s = time.perf_counter()
        # DeepSpeed divides each micro-batch's loss by their count and averages ranks: undo that for dapo.
        num_items = total_tokens / (self.num_micro_batches * self.world_size)
        self.engine.train()
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        for chunk in rollouts.chunks(self.num_micro_batches):
            output = self.engine(chunk, num_items if self.config.loss_type == "dapo" else None)
            self.engine.backward(output.loss)
            self.engine.step()
            totals["loss"] += output.loss.item()
            totals["kl"] += 0.0 if output.kl_mean is None else output.kl_mean.item()
            totals["clip_fraction"] += output.clip_fraction.item()
        self.version += 1
        metrics = {name: total / self.num_micro_batches for name, total in totals.items()}
        return metrics | {"step_s": time.perf_counter() - start_s}

    def policy_version(self) -> int:
        """The version of the weights this rank holds."""
        return self.version

    def weights(self) -> PolicyWeights:
        """The synced weights on the CPU with their version (what rollout workers load)."""
        # Copies: under ZeRO the parameters are views into one flat buffer, which pickling would send whole.
        state_dict = {name: t.to("cpu", copy=True) for name, t in self.policy.state_dict_for_sync().items()}
        return PolicyWeights(self.version, state_dict)

    def join_broadcast(self, spec: BroadcastGroupSpec) -> None:
        """Rank 0: host the weight-broadcast group with the rollout workers; blocks until all joined."""
        self._broadcast = WeightBroadcast(spec, 0, self.policy.state_dict_for_sync())

    def send_weights(self) -> int:
        """Rank 0: broadcast the weights to the group; returns their version."""
        if self._broadcast is None:
            raise RuntimeError("send_weights before join_broadcast; host the group first")
        self._broadcast.send(self.version)
        return self.version

    def save(self, directory: str) -> None:
        """Every rank: write its checkpoint share into `directory` (rank 0 adds `policy/`)."""
        self.engine.save_checkpoint(str(Path(directory) / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG)
        if self.rank == 0:
            self.save_policy(str(Path(directory) / POLICY_DIR))

    def load(self, directory: str, version: int) -> None:
        """Every rank: restore weights and optimizer state saved by `save`; the policy is then `version`."""
        load_path, _ = self.engine.load_checkpoint(str(Path(directory) / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG)
        if load_path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint under {_DEEPSPEED_DIR}/")
        self.version = version

    def save_policy(self, directory: str) -> None:
        """Rank 0: write the policy with `GeoMLLM.save_pretrained`."""
        self.policy.save_pretrained(directory)

    def shutdown(self) -> None:
        """Leave the process group (before the actor is killed, so gloo does not abort at exit)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _deepspeed_config(self) -> dict[str, Any]:
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.num_micro_batches,
            "train_batch_size": self.micro_batch_size * self.num_micro_batches * self.world_size,
            "gradient_clipping": self.config.grad_clip,
            "zero_optimization": {"stage": self.config.zero_stage},
            "bf16": {"enabled": self.policy.config.dtype == "bfloat16"},
            # A torch optimizer under ZeRO: DeepSpeed's own (cpu_adam, fused_adam) would be compiled.
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
        }


class LearnerGroup:
    """The driver's handle on the learner ranks (Ray actors of `Learner`): sets them up, fans calls out."""

    def __init__(self, ranks: list[Any]) -> None:
        import ray

        self.ranks = ranks
        host, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get([rank.setup.remote(host, port) for rank in ranks])

    def step(self, rollouts: Rollouts, max_staleness: int = 0) -> dict[str, float]:
        """One optimizer step over `rollouts`, split by prompt groups across ranks; metrics averaged
        over ranks (step_s: the slowest rank)."""
        import ray

        total_tokens = int(rollouts.mask.sum())
        shares = rollouts.chunks(len(self.ranks))
        per_rank = ray.get(
            [
                rank.step.remote(share, total_tokens, max_staleness)
                for rank, share in zip(self.ranks, shares, strict=True)
            ]
        )
        metrics = {name: sum(m[name] for m in per_rank) / len(per_rank) for name in per_rank[0]}
        metrics["step_s"] = max(m["step_s"] for m in per_rank)
        return metrics

    def save(self, directory: Path) -> None:
        """Every rank writes its checkpoint share into `directory`."""
        import ray

        ray.get([rank.save.remote(str(directory)) for rank in self.ranks])

    def load(self, directory: Path, version: int) -> None:
        """Every rank restores the checkpoint in `directory` as policy `version`."""
        import ray

        ray.get([rank.load.remote(str(directory), version) for rank in self.ranks])

    def shutdown(self) -> None:
        """Every rank leaves the process group."""
        import ray

        ray.get([rank.shutdown.remote() for rank in self.ranks])


class Reference:
    """The frozen start policy: log-probabilities for the KL penalty."""

    def __init__(self, mllm_config: MLLMConfig, device: str = "cpu", torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        self.policy = GeoMLLM.from_pretrained(config=mllm_config).to(device).requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, rollouts: Rollouts) -> torch.Tensor:
        """(N, T') float32 log-probabilities of the rollouts' completions under the reference, on the CPU."""
        return rollouts.logprobs_under(self.policy).float().cpu()
