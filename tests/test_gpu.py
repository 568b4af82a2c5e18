"""On a CUDA device (`pytest -m gpu` on a lent GPU machine; skipped where there is none): the GRPO
learner under DeepSpeed ZeRO-2 in bf16 over an NCCL process group (as configs/grpo/h100.yaml runs it),
bf16 generation by a rollout worker on the GPU, learner checkpoints, the learner's weights reaching the
rollout worker bit-identical, and the RFM head's samples and exact log-density on the GPU agreeing with
the CPU.

Ray-free on purpose: these run the same `Learner` / `RolloutWorker` objects the GRPO job wraps in Ray
actors, so a GPU machine needs no Ray install for them. The two-process NCCL broadcast (learner actor →
rollout actor) needs two GPUs, because NCCL refuses two ranks on one device; it lives in
tests/test_weight_sync.py."""

import numpy as np
import pytest
import torch
from rollout_inputs import GROUP_SIZE, NUM_PROMPTS, free_port, random_prompts

from avgeo.distributed.learner import Learner, LearnerConfig
from avgeo.distributed.rollout import RolloutWorker
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.vector_field import RFMConfig
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MLLM_BF16 = MLLMConfig(max_new_tokens=12, dtype="bfloat16")


@pytest.fixture(scope="module")
def worker() -> RolloutWorker:
    return RolloutWorker(MLLM_BF16, "cuda")


@pytest.fixture(scope="module")
def learner():
    """A one-rank learner group on the GPU: DeepSpeed ZeRO-2 over NCCL, bf16 weights. One per process:
    DeepSpeed keeps its process groups in module state, so a second engine cannot follow a shutdown."""
    config = LearnerConfig(learning_rate=1e-3, zero_stage=2, micro_batch_prompts=1)
    learner = Learner(MLLM_BF16, config, 0, 1, NUM_PROMPTS, GROUP_SIZE, "cuda")
    learner.setup("127.0.0.1", free_port())
    yield learner
    learner.shutdown()


def rollouts_with_advantages(worker: RolloutWorker, seed: int):
    rollouts = worker.generate(random_prompts(seed), GROUP_SIZE, seed)
    rollouts.advantages = torch.tensor([1.0, 1.0, -1.0, -1.0] * NUM_PROMPTS)
    rollouts.ref_logprobs = rollouts.logprobs.clone()
    return rollouts


def test_a_bf16_zero_step_on_nccl_moves_the_policy_the_way_the_advantages_say(learner, worker):
    assert torch.distributed.get_backend() == "nccl"
    assert learner.engine.bfloat16_enabled()
    assert {p.dtype for p in learner.policy.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in learner.policy.parameters()} == {"cuda"}

    worker.load_weights(learner.weights())
    rollouts = rollouts_with_advantages(worker, seed=0)
    assert rollouts.policy_version == 0 and torch.isfinite(rollouts.logprobs[rollouts.mask.bool()]).all()
    metrics = learner.step(rollouts, int(rollouts.mask.sum()))
    assert np.isfinite(list(metrics.values())).all() and learner.policy_version() == 1

    with torch.no_grad():
        change = (rollouts.logprobs_under(learner.policy).float().cpu() - rollouts.logprobs) * rollouts.mask
        change = change.sum(1) / rollouts.mask.sum(1)
    # The GRPO objective to first order: Σ_i A_i · (mean token log-prob change of completion i) rises.
    assert (rollouts.advantages * change).sum() > 0

    assert worker.load_weights(learner.weights()) == 1
    synced = worker.weights()
    for name, tensor in learner.weights().state_dict.items():
        assert torch.equal(synced.state_dict[name], tensor), f"{name} differs after the sync"


def test_a_learner_checkpoint_restores_the_weights_and_optimizer_on_the_gpu(learner, worker, tmp_path):
    rollouts = rollouts_with_advantages(worker, seed=1)
    learner.step(rollouts, int(rollouts.mask.sum()))
    learner.save(str(tmp_path))
    saved = learner.weights()
    rollouts.policy_version = learner.policy_version()
    learner.step(rollouts, int(rollouts.mask.sum()))
    assert any(not torch.equal(t, saved.state_dict[n]) for n, t in learner.weights().state_dict.items())

    learner.load(str(tmp_path), saved.version)
    for name, tensor in learner.weights().state_dict.items():
        assert torch.equal(tensor, saved.state_dict[name]), f"{name} not restored"
    policy = GeoMLLM.from_pretrained(tmp_path / "policy", config=MLLM_BF16)
    assert all(torch.equal(t.cpu(), saved.state_dict[n]) for n, t in policy.state_dict_for_sync().items())


def test_the_rfm_head_samples_and_log_density_agree_between_gpu_and_cpu():
    torch.manual_seed(0)
    head = RFMHead(RFMConfig(cond_dim=8, width=64, num_steps=16))
    cond = torch.randn(3, 8)
    generator = torch.Generator().manual_seed(0)
    samples, log_density = head.sample_with_log_density(cond, 64, generator)
    on_gpu = head.to("cuda")
    generator = torch.Generator().manual_seed(0)
    gpu_samples, gpu_log_density = on_gpu.sample_with_log_density(cond.cuda(), 64, generator)
    assert gpu_samples.device.type == "cuda"
    torch.testing.assert_close(gpu_samples.cpu(), samples, atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu_log_density.cpu(), log_density, atol=1e-3, rtol=0)
    log_density_again = on_gpu.log_density(gpu_samples, cond.cuda())
    torch.testing.assert_close(log_density_again, gpu_log_density, atol=1e-3, rtol=0)
