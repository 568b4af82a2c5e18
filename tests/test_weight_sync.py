"""Learner → rollout weight sync: the learner's weights arrive bit-identical with their policy version,
through the object store and through a gloo broadcast group (NCCL on GPUs); stale rollouts are refused;
and the learner step that produces those weights moves the policy the way the advantages say."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from rollout_inputs import GROUP_SIZE, NUM_PROMPTS, free_port, random_prompts

from avgeo.distributed.learner import Learner, LearnerConfig, LearnerGroup
from avgeo.distributed.rollout import RolloutWorker
from avgeo.distributed.weight_sync import (
    BroadcastGroupSpec,
    PolicyWeights,
    StaleRolloutError,
    WeightBroadcast,
    WeightSyncError,
    check_fresh,
    layout_digest,
)
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig

MLLM = MLLMConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def actors(ray_local):
    """One learner rank (DeepSpeed ZeRO-2, gloo) and two rollout workers, all from the tiny MLLM."""
    ray = ray_local
    learner_config = LearnerConfig(learning_rate=1e-3, micro_batch_prompts=NUM_PROMPTS)
    learner = (
        ray.remote(Learner).options(num_cpus=0.5).remote(MLLM, learner_config, 0, 1, NUM_PROMPTS, GROUP_SIZE)
    )
    workers = [ray.remote(RolloutWorker).options(num_cpus=0.5).remote(MLLM) for _ in range(2)]
    group = LearnerGroup([learner])
    yield learner, workers
    group.shutdown()
    for actor in [learner, *workers]:
        ray.kill(actor)


def train_step(ray, learner, worker, seed: int, max_staleness: int = 0):
    """Generate on `worker`, give the rollouts random ±1 advantages and take one learner step with them."""
    rollouts = ray.get(worker.generate.remote(random_prompts(seed), GROUP_SIZE, seed))
    rollouts.advantages = torch.from_numpy(np.random.default_rng(seed).choice([-1.0, 1.0], len(rollouts)))
    rollouts.ref_logprobs = rollouts.logprobs.clone()
    ray.get(learner.step.remote(rollouts, int(rollouts.mask.sum()), max_staleness))
    return rollouts


def assert_same_weights(a: PolicyWeights, b: PolicyWeights) -> None:
    assert a.version == b.version
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), f"{name} differs"


def differing(a: PolicyWeights, b: PolicyWeights) -> list[str]:
    return [name for name, tensor in a.state_dict.items() if not torch.equal(tensor, b.state_dict[name])]


@pytest.mark.ray
def test_the_first_learner_step_makes_completions_with_positive_advantage_likelier(ray_local, actors):
    ray = ray_local
    learner, (worker, _) = actors
    assert ray.get(learner.policy_version.remote()) == 0, "runs on the learner's fresh AdamW state"
    rollouts = ray.get(worker.generate.remote(random_prompts(0), GROUP_SIZE, 0))
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0] * NUM_PROMPTS)
    rollouts.advantages, rollouts.ref_logprobs = advantages, rollouts.logprobs.clone()
    ray.get(learner.step.remote(rollouts, int(rollouts.mask.sum()), 0))

    policy = GeoMLLM.from_pretrained(config=MLLM)
    policy.load_state_dict_for_sync(ray.get(learner.weights.remote()).state_dict)
    with torch.no_grad():
        change = (rollouts.logprobs_under(policy) - rollouts.logprobs).sum(1) / rollouts.mask.sum(1)
    # The GRPO objective to first order: Σ_i A_i · (mean token log-prob change of completion i) rises.
    assert (advantages * change).sum() > 0
    assert change[advantages > 0].mean() > change[advantages < 0].mean()


@pytest.mark.ray
def test_object_store_sync_delivers_the_learners_weights_bit_identical(ray_local, actors):
    ray = ray_local
    learner, (worker, _) = actors
    ray.get(worker.load_weights.remote(learner.weights.remote()))
    train_step(ray, learner, worker, seed=1)
    learned, held = ray.get([learner.weights.remote(), worker.weights.remote()])
    assert learned.version == held.version + 1
    assert differing(learned, held), "the learner step changed no weight: nothing to sync"

    # The driver passes the learner's return value by reference; the worker reads it from the object store.
    assert ray.get(worker.load_weights.remote(learner.weights.remote())) == learned.version
    assert_same_weights(ray.get(worker.weights.remote()), learned)


@pytest.mark.ray
def test_rollouts_are_tagged_with_their_policy_version_and_stale_ones_refused(ray_local, actors):
    ray = ray_local
    learner, (worker, _) = actors
    ray.get(worker.load_weights.remote(learner.weights.remote()))
    version = ray.get(learner.policy_version.remote())
    rollouts = train_step(ray, learner, worker, seed=2)
    assert rollouts.policy_version == version, "tagged with the version the worker held"
    assert ray.get(learner.policy_version.remote()) == version + 1

    stale = f"version {version} given to a learner at version {version + 1}"
    with pytest.raises(StaleRolloutError, match=stale):
        ray.get(learner.step.remote(rollouts, int(rollouts.mask.sum()), 0))
    assert ray.get(learner.policy_version.remote()) == version + 1, "a refused step changes nothing"
    ray.get(learner.step.remote(rollouts, int(rollouts.mask.sum()), 1))  # one version behind is allowed
    assert ray.get(learner.policy_version.remote()) == version + 2

    rollouts.policy_version = version + 5
    with pytest.raises(StaleRolloutError):
        ray.get(learner.step.remote(rollouts, int(rollouts.mask.sum()), 10))


@pytest.mark.ray
def test_broadcast_group_delivers_the_learners_weights_to_every_worker(ray_local, actors):
    ray = ray_local
    learner, workers = actors
    host, port = ray.get(learner.rendezvous_address.remote())
    spec = BroadcastGroupSpec(host, port, 3, "gloo", timeout_s=60)
    joins = [worker.join_broadcast.remote(spec, rank) for rank, worker in enumerate(workers, 1)]
    ray.get([learner.join_broadcast.remote(spec), *joins])
    train_step(ray, learner, workers[0], seed=3, max_staleness=10)
    learned = ray.get(learner.weights.remote())
    assert all(differing(learned, held) for held in ray.get([w.weights.remote() for w in workers]))

    sent = learner.send_weights.remote()
    assert ray.get([w.receive_weights.remote() for w in workers] + [sent]) == [learned.version] * 3
    for held in ray.get([w.weights.remote() for w in workers]):
        assert_same_weights(held, learned)


def test_broadcast_writes_into_the_receivers_tensors_and_checks_layouts():
    spec = BroadcastGroupSpec("127.0.0.1", free_port(), 3, "gloo", timeout_s=30)
    sent = {"b": torch.randn(5, 2), "a": torch.arange(7, dtype=torch.float64)}
    received = [{name: torch.zeros_like(t) for name, t in sent.items()} for _ in range(2)]
    with ThreadPoolExecutor(3) as pool:
        members = list(pool.map(WeightBroadcast, [spec] * 3, range(3), [sent, *received]))
        versions = [pool.submit(member.receive) for member in members[1:]]
        members[0].send(7)
        assert [future.result() for future in versions] == [7, 7]
    for tensors in received:
        assert all(torch.equal(tensors[name], sent[name]) for name in sent)

    mismatch = BroadcastGroupSpec("127.0.0.1", free_port(), 2, "gloo", timeout_s=30)
    with ThreadPoolExecutor(2) as pool:
        host = pool.submit(WeightBroadcast, mismatch, 0, {"a": torch.zeros(3)})
        member = pool.submit(WeightBroadcast, mismatch, 1, {"a": torch.zeros(4)})
        with pytest.raises(WeightSyncError, match="different tensor layout"):
            member.result()
        host.result()


def test_layout_digest_depends_on_names_shapes_and_dtypes_not_values_or_order():
    base = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert layout_digest(base) == layout_digest({"b": torch.ones(4), "a": torch.randn(2, 3)})
    reshaped = {"a": torch.zeros(3, 2), "b": torch.zeros(4)}
    renamed = {"a": torch.zeros(2, 3), "c": torch.zeros(4)}
    retyped = {"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(4)}
    for changed in (reshaped, renamed, retyped):
        assert layout_digest(changed) != layout_digest(base)


@pytest.mark.parametrize(("rollout", "learner", "allowed", "fresh"), [
    (3, 3, 0, True), (2, 3, 0, False), (2, 3, 1, True), (1, 3, 1, False), (4, 3, 5, False),
])  # fmt: skip
def test_check_fresh_allows_at_most_max_staleness_versions_behind(rollout, learner, allowed, fresh):
    if fresh:
        check_fresh(rollout, learner, allowed)
    else:
        with pytest.raises(StaleRolloutError):
            check_fresh(rollout, learner, allowed)


@pytest.mark.gpu
@pytest.mark.ray
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="an NCCL broadcast between processes needs 2 GPUs")
def test_nccl_broadcast_between_gpu_actors_is_bit_identical(ray_local):
    ray = ray_local
    learner = (
        ray.remote(Learner)
        .options(num_cpus=0.25, num_gpus=1)
        .remote(MLLM, LearnerConfig(learning_rate=1e-3, micro_batch_prompts=NUM_PROMPTS), 0, 1, NUM_PROMPTS,
                GROUP_SIZE, "cuda")
    )  # fmt: skip
    worker = ray.remote(RolloutWorker).options(num_cpus=0.25, num_gpus=1).remote(MLLM, "cuda")
    group = LearnerGroup([learner])
    host, port = ray.get(learner.rendezvous_address.remote())
    spec = BroadcastGroupSpec(host, port, 2, "nccl", timeout_s=60)
    ray.get([learner.join_broadcast.remote(spec), worker.join_broadcast.remote(spec, 1)])
    train_step(ray, learner, worker, seed=4)
    learned = ray.get(learner.weights.remote())
    sent = learner.send_weights.remote()
    assert ray.get([worker.receive_weights.remote(), sent]) == [learned.version] * 2
    assert_same_weights(ray.get(worker.weights.remote()), learned)
    group.shutdown()
    ray.kill(learner)
    ray.kill(worker)
