"""GRPO (section 3.2): group-normalised advantages and the clipped, KL-regularised policy loss.

Rollouts come grouped: G responses per prompt, stored prompt-major ([p0 r0, …, p0 r(G−1), p1 r0, …]).
Per token t of response i, with A_i its advantage and ε the clip range:

    ratio_it   = exp(log π_θ − log π_old)
    surrogate  = min(ratio·A_i, clip(ratio, 1 − ε, 1 + ε)·A_i)
    k3_it      = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1        (unbiased KL estimate, ≥ 0)
    KL_it      = ratio_it · k3_it   (or k3_it without the bias correction)
    loss_it    = −(surrogate − β·KL_it)

and the per-token losses are averaged as TRL 1.16 does for the same `loss_type`. The ratio in front of k3
(TRL's `use_bias_correction_kl`, on by default, from DeepSeek-V3.2) makes its gradient the unbiased
gradient of KL(π_θ ‖ π_ref) for tokens sampled from π_old; its value is unchanged on-policy, but its
gradient is not, since the ratio is differentiable. Without it the loss is DeepSeekMath's original GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "bnpo", "dapo"]


class GRPOInputError(ValueError):
    """Rewards or log-probabilities given to the GRPO functions that cannot be used; says which and why."""


@dataclass(frozen=True)
class GRPOLossOutput:
    """The loss to minimise and what to log about it (scalars)."""

    loss: torch.Tensor
    """The aggregated loss, differentiable w.r.t. the policy's log-probabilities."""
    kl_mean: torch.Tensor | None
    """Mean KL term (ratio·k3, or k3) over the unmasked tokens, nats/token; None without a reference."""
    clip_fraction: torch.Tensor
    """Share of the unmasked tokens whose gradient the clip removes (ratio beyond 1 ± ε, in A's direction)."""


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True
) -> torch.Tensor:
    """(B·G,) rewards -> (B·G,) advantages (r − mean_group) / (std_group + eps), or r − mean_group unscaled.

    std is the unbiased (n − 1) one, as in TRL's `scale_rewards="group"`; a group of equal rewards gets 0.
    """
    if group_size < 2 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise GRPOInputError(
            f"rewards of shape {tuple(rewards.shape)}, group_size={group_size}: expected (B·G,) rewards "
            "with G >= 2 responses per prompt, stored prompt by prompt"
        )
    if not torch.isfinite(rewards).all():
        raise GRPOInputError("rewards hold NaN or infinity; give unparseable responses a finite penalty")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.01,
    loss_type: LossType = "grpo",
    num_items_in_batch: float | torch.Tensor | None = None,
    kl_bias_correction: bool = True,
) -> GRPOLossOutput:
    """The GRPO loss of N responses of T tokens.

    logprobs (N, T): log π_θ of the sampled tokens (with grad); old_logprobs (N, T): the same under the
    policy that sampled them (`logprobs.detach()` on the first pass over a batch); ref_logprobs (N, T):
    under the frozen reference (may be None when beta = 0); advantages (N,); mask (N, T): 1 on completion
    tokens, 0 on padding. Aggregation, as TRL names it: "grpo" averages each response over its tokens, then
    the responses; "bnpo" averages over all tokens of this batch; "dapo" sums the tokens and divides by
    `num_items_in_batch`, the token count of the whole generation batch across micro-batches and ranks
    (default: this batch's, which makes it "bnpo"). Padding may hold any value, -inf and NaN included.
    """
    if not logprobs.shape == old_logprobs.shape == mask.shape or advantages.shape != logprobs.shape[:1]:
        raise GRPOInputError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, mask "
            f"{tuple(mask.shape)}, advantages {tuple(advantages.shape)}: expected (N, T) x3 and (N,)"
        )
    if beta != 0.0 and ref_logprobs is None:
        raise GRPOInputError(f"beta={beta} needs ref_logprobs (N, T) from the frozen reference policy")
    # Zero the padding first: a -inf there would turn the masked sums (and their gradients) into NaN.
    is_token = mask.bool()
    logprobs, old_logprobs = logprobs.where(is_token, 0.0), old_logprobs.where(is_token, 0.0)
    mask = mask.to(logprobs.dtype)
    advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.min(ratio * advantages, clipped_ratio * advantages)
    per_token_loss = -surrogate
    kl_mean = None
    if ref_logprobs is not None:
        ref_minus_policy = ref_logprobs.where(is_token, 0.0) - logprobs
        kl = torch.exp(ref_minus_policy) - ref_minus_policy - 1.0
        if kl_bias_correction:
            kl = ratio * kl
        per_token_loss = per_token_loss + beta * kl
        kl_mean = _masked_mean(kl.detach(), mask)

    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = _masked_mean(per_token_loss, mask)
    elif loss_type == "dapo":
        token_count = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        loss = (per_token_loss * mask).sum() / token_count.clamp(min=1.0)
    else:
        raise GRPOInputError(f"loss_type={loss_type!r}: expected 'grpo', 'bnpo' or 'dapo'")

    clipped = ((ratio < 1.0 - clip_eps) & (advantages < 0)) | ((ratio > 1.0 + clip_eps) & (advantages > 0))
    return GRPOLossOutput(loss, kl_mean, _masked_mean(clipped.to(mask.dtype), mask))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
