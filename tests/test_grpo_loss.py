"""GRPO advantages and loss: checked against TRL 1.16's own code on identical tensors, and their invariants.

How TRL is called: its loss is inline in `GRPOTrainer._compute_loss` and its advantage normalisation inline
in `GRPOTrainer._generate_and_score_completions`, so the test builds a real `GRPOTrainer` (a tiny Llama
built from a config, a word-level tokenizer, a reward function that returns a dataset column) and calls
those two methods, unmodified:
- advantages: `_generate_and_score_completions` generates for real and scores each completion with the
  reward we put in the dataset, then normalises as `scale_rewards="group"` says;
- loss: `_compute_loss(model, inputs)` runs the model (through TRL's fused LM head) on prompt + completion
  tokens we chose, with padding, and reads old and reference log-probs we set near the model's own, so
  that some ratios fall outside 1 ± ε. We compute the same log-probs from the model's plain logits and
  compare loss, gradients on every weight, the KL and the clipped fraction, for each loss type and β.
The only attribute set by hand is `current_gradient_accumulation_steps`, which Trainer's training loop
would set (to 1 here).
"""

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from avgeo.reasoning.grpo import GRPOInputError, group_advantages, grpo_loss

GROUP_SIZE = 8
VOCAB_SIZE = 32
PROMPT_LENGTH, COMPLETION_LENGTH = 3, 6


def reward_from_dataset(completions, reward, **_):
    """TRL reward function: the reward column of the dataset, whatever was generated."""
    return list(reward)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> GRPOTrainer:
    vocab = {"<pad>": 0, "<eos>": 1} | {f"w{i}": i for i in range(2, VOCAB_SIZE)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>")
    llama_config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config)
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        num_generations=GROUP_SIZE,
        per_device_train_batch_size=2 * GROUP_SIZE,
        max_completion_length=COMPLETION_LENGTH,
        scale_rewards="group",
        beta=0.0,  # β > 0 would load a reference model by name; _compute_loss reads β per call
        report_to="none",
        save_strategy="no",
    )
    dataset = Dataset.from_dict({"prompt": ["w2 w3", "w4 w5"], "reward": [0.0, 0.0]})
    trainer = GRPOTrainer(
        model, reward_funcs=reward_from_dataset, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.current_gradient_accumulation_steps = 1
    assert trainer.args.steps_per_generation == 1 and trainer.model.training
    return trainer


def test_advantages_match_trl_scale_rewards_group(trainer):
    rewards = [1.37, 0.07, -0.13, -1.0, -0.13, 0.5, 1.2, 0.9] + [0.25] * GROUP_SIZE  # 2nd group: all equal
    prompts = ["w2 w3"] * GROUP_SIZE + ["w4 w5"] * GROUP_SIZE
    inputs = [{"prompt": prompt, "reward": reward} for prompt, reward in zip(prompts, rewards, strict=True)]
    trl_advantages = trainer._generate_and_score_completions(inputs)["advantages"]
    ours = group_advantages(torch.tensor(rewards), GROUP_SIZE)
    torch.testing.assert_close(ours, trl_advantages)
    assert (ours[GROUP_SIZE:] == 0).all()


def completion_batch(trainer) -> dict:
    """2 groups of 8 responses of 1-6 tokens (padded to 6), old and reference log-probs near the model's."""
    generator = torch.Generator().manual_seed(1)
    num_rows = 2 * GROUP_SIZE
    lengths = torch.tensor([6, 2, 4, 6, 1, 5, 6, 3] * 2)
    completion_mask = (torch.arange(COMPLETION_LENGTH) < lengths[:, None]).long()
    completion_ids = torch.randint(2, VOCAB_SIZE, (num_rows, COMPLETION_LENGTH), generator=generator)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    batch = {
        "prompt_ids": torch.randint(2, VOCAB_SIZE, (num_rows, PROMPT_LENGTH), generator=generator),
        "prompt_mask": torch.ones(num_rows, PROMPT_LENGTH, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }
    with torch.no_grad():
        logprobs = completion_logprobs(trainer.model, batch)
    rewards = torch.rand(num_rows, generator=generator)
    batch["advantages"] = group_advantages(rewards, GROUP_SIZE)
    # Old log-probs within ±0.5 nats: ratios in [0.61, 1.65], so ε = 0.2 clips a good share of tokens.
    batch["old_per_token_logps"] = logprobs + torch.rand(logprobs.shape, generator=generator) - 0.5
    batch["ref_per_token_logps"] = logprobs + 0.3 * torch.randn(logprobs.shape, generator=generator)
    batch["num_items_in_batch"] = completion_mask.sum()
    return batch


def completion_logprobs(model, batch) -> torch.Tensor:
    """(N, T) log-probs of the completion tokens from the model's plain logits."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    # Position p predicts token p + 1: the completion's tokens are predicted from the last prompt token on.
    predicting = logits[:, PROMPT_LENGTH - 1 : -1].log_softmax(-1)
    return predicting.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
@pytest.mark.parametrize(("beta", "kl_bias_correction"), [(0.01, True), (0.01, False), (0.0, True)])
def test_loss_matches_trl_compute_loss(trainer, loss_type, beta, kl_bias_correction):
    batch = completion_batch(trainer)
    weights = [param for param in trainer.model.parameters() if param.requires_grad]
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.args.use_bias_correction_kl = kl_bias_correction
    trainer._metrics["train"].clear()
    trl_loss = trainer._compute_loss(trainer.model, batch)
    trl_grads = torch.autograd.grad(trl_loss, weights)

    ours = grpo_loss(
        completion_logprobs(trainer.model, batch),
        batch["old_per_token_logps"],
        batch["ref_per_token_logps"] if beta else None,
        batch["advantages"],
        batch["completion_mask"],
        clip_eps=trainer.epsilon_low,
        beta=beta,
        loss_type=loss_type,
        num_items_in_batch=batch["num_items_in_batch"],
        kl_bias_correction=kl_bias_correction,
    )
    our_grads = torch.autograd.grad(ours.loss, weights)

    assert trainer.epsilon_low == trainer.epsilon_high == 0.2
    torch.testing.assert_close(ours.loss, trl_loss, rtol=1e-5, atol=1e-6)
    for our_grad, trl_grad in zip(our_grads, trl_grads, strict=True):
        torch.testing.assert_close(our_grad, trl_grad, rtol=1e-4, atol=1e-6)
    metrics = trainer._metrics["train"]
    assert 0.1 < ours.clip_fraction.item() < 0.9, "the case must exercise the clip"
    assert ours.clip_fraction.item() == pytest.approx(metrics["clip_ratio/region_mean"][-1], abs=1e-6)
    if beta:
        assert ours.kl_mean.item() == pytest.approx(metrics["kl"][-1], rel=1e-5)
    else:
        assert ours.kl_mean is None and "kl" not in metrics


# ---- invariants, without TRL -----------------------------------------------------------------------


def test_group_advantages_are_standardised_per_group_and_ignore_affine_changes():
    rewards = torch.rand(4 * GROUP_SIZE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    advantages = group_advantages(rewards, GROUP_SIZE).view(4, GROUP_SIZE)
    torch.testing.assert_close(advantages.mean(1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(advantages.std(1), torch.ones(4, dtype=torch.float64), rtol=1e-3, atol=0)
    # Within a group, a shift and a positive scale change nothing (up to eps) and order is kept.
    shifted = group_advantages(3.0 * rewards - 7.0, GROUP_SIZE).view(4, GROUP_SIZE)
    torch.testing.assert_close(shifted, advantages, rtol=1e-3, atol=1e-3)
    assert (advantages.argsort(1) == rewards.view(4, GROUP_SIZE).argsort(1)).all()
    grouped = rewards.view(4, GROUP_SIZE)
    centred = group_advantages(rewards, GROUP_SIZE, scale=False).view(4, GROUP_SIZE)
    torch.testing.assert_close(centred, grouped - grouped.mean(1, keepdim=True))


def test_group_advantages_refuse_bad_groups_and_nan():
    with pytest.raises(GRPOInputError, match="group_size=3"):
        group_advantages(torch.zeros(8), 3)
    with pytest.raises(GRPOInputError, match="G >= 2"):
        group_advantages(torch.zeros(8), 1)
    with pytest.raises(GRPOInputError, match="NaN"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)


def random_case(seed: int, num_rows: int = 6, num_tokens: int = 5):
    generator = torch.Generator().manual_seed(seed)
    logprobs = (-3 * torch.rand(num_rows, num_tokens, generator=generator)).requires_grad_()
    lengths = torch.randint(1, num_tokens + 1, (num_rows,), generator=generator)
    mask = torch.arange(num_tokens) < lengths[:, None]
    advantages = torch.randn(num_rows, generator=generator)
    return logprobs, mask, advantages


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
def test_on_policy_gradient_is_the_policy_gradient(loss_type):
    """Ratio 1, β = 0: ∂loss/∂log π_it = −A_i·mask_it / (N·|o_i|) for grpo, −A_i·mask_it / Σ mask else."""
    logprobs, mask, advantages = random_case(3)
    output = grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, beta=0.0, loss_type=loss_type)
    (grad,) = torch.autograd.grad(output.loss, logprobs)
    if loss_type == "grpo":
        expected = -advantages[:, None] * mask / (len(mask) * mask.sum(1, keepdim=True))
    else:
        expected = -advantages[:, None] * mask / mask.sum()
    torch.testing.assert_close(grad, expected)
    assert output.clip_fraction.item() == 0.0


def test_the_clip_removes_the_gradient_exactly_where_it_says():
    # One token per response, ratio × advantage sign: each quadrant in or out of 1 ± 0.2.
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    logprobs = torch.zeros(6, 1, requires_grad=True)
    old = -ratios.log()[:, None]
    output = grpo_loss(logprobs, old, None, advantages, torch.ones(6, 1), beta=0.0, loss_type="bnpo")
    (grad,) = torch.autograd.grad(output.loss, logprobs)
    clipped = torch.tensor([True, False, True, False, False, False])
    assert (grad[:, 0] == 0).tolist() == clipped.tolist()
    assert output.clip_fraction.item() == pytest.approx(2 / 6)


@pytest.mark.parametrize("kl_bias_correction", [True, False])
def test_kl_is_non_negative_zero_at_the_reference_and_pulls_towards_it(kl_bias_correction):
    logprobs, mask, advantages = random_case(4)
    old = logprobs.detach()
    ref = old + torch.randn(logprobs.shape, generator=torch.Generator().manual_seed(5))
    options = {"beta": 0.5, "loss_type": "bnpo", "kl_bias_correction": kl_bias_correction}
    assert grpo_loss(logprobs, old, old, advantages, mask, **options).kl_mean.item() == 0.0
    away = grpo_loss(logprobs, old, ref, torch.zeros(6), mask, **options)
    assert away.kl_mean.item() > 0 and away.loss.item() > 0
    # With zero advantages only the KL acts. On-policy, d(k3)/d log π = 1 − e^gap (gap = log π_ref − log π),
    # and with the ratio in front d(ratio·k3)/d log π = (1 − e^gap) + k3 = −gap: either way a step moves
    # log π towards log π_ref on every token; corrected, exactly in proportion to the gap.
    (grad,) = torch.autograd.grad(away.loss, logprobs)
    gap = (ref - old) * mask
    assert ((-grad * gap)[mask] > 0).all()
    if kl_bias_correction:
        torch.testing.assert_close(grad, -0.5 * gap / mask.sum())


def test_padding_does_not_reach_the_loss():
    logprobs, mask, advantages = random_case(6)
    old = logprobs.detach() + 0.1
    clean = grpo_loss(logprobs, old, old, advantages, mask, loss_type="grpo")
    # What rollout engines leave in padding: -inf, NaN, zeros.
    garbage = torch.where(mask, logprobs, -torch.inf)
    old_padded, ref_padded = torch.where(mask, old, torch.nan), torch.where(mask, old, 0.0)
    noisy = grpo_loss(garbage, old_padded, ref_padded, advantages, mask)
    torch.testing.assert_close(noisy.loss, clean.loss)
    (grad,) = torch.autograd.grad(noisy.loss, logprobs)
    assert (grad[~mask] == 0).all()


def test_loss_refuses_mismatched_shapes_and_a_missing_reference():
    logprobs, mask, advantages = random_case(7)
    with pytest.raises(GRPOInputError, match="expected"):
        grpo_loss(logprobs, logprobs[:, :-1], None, advantages, mask, beta=0.0)
    with pytest.raises(GRPOInputError, match="ref_logprobs"):
        grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, beta=0.01)
    with pytest.raises(GRPOInputError, match="loss_type"):
        grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, beta=0.0, loss_type="ppo")
