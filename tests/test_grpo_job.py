"""The GRPO job: configs, prompts from the feature table, the prompt order, rollouts' bookkeeping, rewards,
and the acceptance run: `ray job submit … jobs/grpo.py` on a real `ray start --head` cluster that writes
checkpoints and metrics, then resumes where it stopped."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avgeo.config import ConfigError, load_config
from avgeo.data.audioset import audioset_classes
from avgeo.data.features import (
    AUDIO_DIM,
    NUM_AUDIOSET_CLASSES,
    VISUAL_DIM,
    features_table,
    read_features,
    write_features,
)
from avgeo.distributed.grpo import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    ActorResources,
    GRPOConfig,
    PlacementConfig,
    load_prompts,
    placement_options,
    step_prompt_indices,
)
from avgeo.distributed.learner import POLICY_DIR, Reference
from avgeo.distributed.rollout import PromptBatch, RewardFn, Rollouts, RolloutWorker
from avgeo.perception.embedder import weights_fingerprint
from avgeo.perception.icsae import ICSAE, kernel_classes
from avgeo.prediction.flow import RFMHead
from avgeo.prediction.vector_field import RFMConfig
from avgeo.reasoning.answer import format_answer
from avgeo.reasoning.mllm import MLLMConfig
from avgeo.reasoning.rewards import RewardConfig
from avgeo.runlog import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "grpo"
PARIS, SYDNEY = (48.8566, 2.3522), (-33.8688, 151.2093)


def write_feature_table(path: Path, num_train: int = 8, num_test: int = 4) -> Path:
    """A feature table of random but valid features: 8 train and 4 test clips at real places, clips with 8
    or 6 frames, one or two audio windows of atoms (a kernel of the right class block each), and one
    train clip that failed to decode."""
    rng = np.random.default_rng(0)
    classes = audioset_classes()
    class_of_kernel = kernel_classes(4096, len(classes)).numpy()
    icsae = f"tiny@{weights_fingerprint(ICSAE.from_pretrained('tiny'))}"  # the IC-SAE of the atoms
    rows = []
    for index in range(num_train + num_test):
        num_windows = 1 + index % 2
        kernels = rng.choice(4096, size=3 * num_windows, replace=False)
        atoms = [
            {
                "window": int(i // 3),
                "step": int(i % 3) + 1,
                "class_mid": classes[class_of_kernel[kernel]].mid,
                "class_name": classes[class_of_kernel[kernel]].name,
                "kernel": int(kernel),
                "strength": float(rng.uniform(0.1, 1.0)),
            }
            for i, kernel in enumerate(kernels)
        ]
        strengths = np.zeros(NUM_AUDIOSET_CLASSES, dtype=np.float32)
        for atom in atoms:
            strengths[class_of_kernel[atom["kernel"]]] += atom["strength"]
        audio = rng.normal(size=(num_windows, AUDIO_DIM)).astype(np.float32)
        unit_audio = audio / np.linalg.norm(audio, axis=1, keepdims=True)
        frames = rng.normal(size=(8 if index % 3 else 6, VISUAL_DIM)).astype(np.float32)
        latlon = PARIS if index % 2 else SYDNEY
        rows.append(
            {
                "clip_id": f"clip{index:02d}",
                "video_path": f"/clips/clip{index:02d}.mp4",
                "split": "train" if index < num_train else "test",
                "lat": latlon[0] + rng.uniform(-1, 1),
                "lon": latlon[1] + rng.uniform(-1, 1),
                "visual_per_frame": frames,
                "visual_mean": frames.mean(0),
                "audio_embedding": unit_audio,
                "audio_projection": audio,
                "audio_mean": unit_audio.mean(0) / np.linalg.norm(unit_audio.mean(0)),
                "atoms": atoms,
                "atom_class_strength": strengths,
                "models": {"visual": "tiny@0", "audio": "tiny@0", "icsae": icsae},
                "timings": {"decode_s": 0.1, "visual_s": 0.1, "audio_s": 0.1, "icsae_s": 0.1},
            }
        )
    rows.append(
        {"clip_id": "broken", "video_path": "/clips/broken.mp4", "split": "train", "lat": 0.0, "lon": 0.0,
         "error": "TruncatedFileError: cut short", "timings": {"decode_s": 0.01}}
    )  # fmt: skip
    return write_features(features_table(rows), path / "features.parquet")


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return write_feature_table(tmp_path_factory.mktemp("grpo-features"))


def test_tiny_and_h100_configs_load_and_bad_values_name_their_key(features):
    tiny = load_config(GRPOConfig, CONFIGS / "tiny.yaml")
    h100 = load_config(GRPOConfig, CONFIGS / "h100.yaml")
    assert (tiny.group_size, h100.group_size, h100.learner.beta) == (8, 8, 0.01), "the method's G and β"
    assert tiny.placement.learner.device == "cpu" and h100.placement.learner.device == "cuda"
    assert h100.mllm.dtype == "bfloat16" and h100.weight_sync == "collective"
    with pytest.raises(ConfigError, match="prompts_per_step=3"):
        load_config(GRPOConfig, CONFIGS / "tiny.yaml", prompts_per_step=3)  # micro-batches of 2 prompts
    with pytest.raises(ConfigError, match="weight_sync=collective"):
        load_config(GRPOConfig, CONFIGS / "h100.yaml", **{"placement.rollout.num_gpus": 0})
    with pytest.raises(ConfigError, match=r"unknown config key learner\.lr"):
        load_config(GRPOConfig, CONFIGS / "tiny.yaml", **{"learner.lr": 1e-3})


def test_each_epoch_of_the_prompt_order_holds_every_prompt_once():
    config = load_config(GRPOConfig, CONFIGS / "tiny.yaml", prompts_per_step=2)
    num_prompts = 7
    order = np.concatenate([step_prompt_indices(step, num_prompts, config) for step in range(14)])
    epochs = order.reshape(4, num_prompts)
    assert all(sorted(epoch) == list(range(num_prompts)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1, "each epoch is shuffled anew"
    np.testing.assert_array_equal(step_prompt_indices(5, num_prompts, config), order[10:12])
    reseeded = load_config(GRPOConfig, CONFIGS / "tiny.yaml", prompts_per_step=2, seed=1)
    assert not np.array_equal(step_prompt_indices(0, 50, reseeded), step_prompt_indices(0, 50, config))


def test_prompts_are_the_embedded_rows_of_a_split_with_their_truths(features):
    config = load_config(GRPOConfig, CONFIGS / "tiny.yaml", features=str(features))
    prompts = load_prompts(config, "train")
    assert prompts.clip_ids == [f"clip{i:02d}" for i in range(8)], "embedded train rows only, in order"
    assert prompts.visual_per_frame.shape == (8, config.mllm.num_frames, VISUAL_DIM)

    row = read_features(features).to_pylist()[1]  # 8 frames, two windows of atoms
    np.testing.assert_array_equal(prompts.visual_per_frame[1].numpy(), np.array(row["visual_per_frame"]))
    assert [atom.name for atom in prompts.atoms[1]] == [
        atom["class_name"] for atom in sorted(row["atoms"], key=lambda atom: -atom["strength"])
    ]
    np.testing.assert_allclose(prompts.true_latlon_deg[1], (row["lat"], row["lon"]))

    assert len(load_prompts(config, "test", max_clips=3)) == 3
    with pytest.raises(ConfigError, match="no embedded rows of split 'val'"):
        load_prompts(config, "val")


def synthetic_rollouts(num_prompts: int, group_size: int, width: int, seed: int) -> Rollouts:
    rng = torch.Generator().manual_seed(seed)
    num = num_prompts * group_size
    lengths = torch.randint(1, width + 1, (num,), generator=rng)
    mask = (torch.arange(width) < lengths[:, None]).long()
    prompts = PromptBatch(
        [f"p{seed}-{i}" for i in range(num_prompts)],
        torch.randn(num_prompts, 2, VISUAL_DIM, generator=rng),
        [[] for _ in range(num_prompts)],
        np.arange(num_prompts * 2, dtype=np.float64).reshape(num_prompts, 2),
    )
    return Rollouts(
        prompts,
        group_size,
        texts=[f"text{seed}-{i}" for i in range(num)],
        token_ids=torch.randint(0, 100, (num, width), generator=rng) * mask,
        mask=mask,
        logprobs=torch.randn(num, width, generator=rng) * mask,
        psi=torch.randn(num, 4, generator=rng),
        policy_version=3,
        ref_logprobs=torch.randn(num, width, generator=rng) * mask,
        advantages=torch.randn(num, generator=rng),
    )


def test_rollouts_split_into_whole_groups_and_join_back_padded():
    first, second = synthetic_rollouts(4, 3, 5, seed=0), synthetic_rollouts(2, 3, 9, seed=1)
    joined = Rollouts.concat([first, second])
    assert joined.token_ids.shape == (18, 9) and joined.policy_version == 3
    assert joined.mask[:12, 5:].sum() == 0, "shorter rollouts are padded off the mask"
    assert joined.prompts.clip_ids == first.prompts.clip_ids + second.prompts.clip_ids
    first_truth = np.repeat(first.prompts.true_latlon_deg[:1], 3, axis=0)
    np.testing.assert_array_equal(joined.response_true_latlon_deg()[:3], first_truth)

    parts = joined.chunks(3)
    assert [len(part) for part in parts] == [6, 6, 6] and [len(part.prompts) for part in parts] == [2, 2, 2]
    rejoined = Rollouts.concat(parts)
    for name in ("token_ids", "mask", "logprobs", "ref_logprobs", "advantages", "psi"):
        assert torch.equal(getattr(rejoined, name), getattr(joined, name)), name
    assert rejoined.texts == joined.texts
    with pytest.raises(ValueError, match="do not split into 4 equal parts"):
        joined.chunks(4)
    second.policy_version = 4
    with pytest.raises(ValueError, match="policy versions"):
        Rollouts.concat([first, second])


@pytest.fixture(scope="module")
def worker_and_prompts(features):
    config = load_config(GRPOConfig, CONFIGS / "tiny.yaml", features=str(features))
    mllm = MLLMConfig(max_new_tokens=12)
    return RolloutWorker(mllm), Reference(mllm), load_prompts(config, "train")


def test_rollouts_carry_the_samplers_logprobs_which_the_reference_reproduces_at_version_0(worker_and_prompts):
    worker, reference, prompts = worker_and_prompts
    rollouts = worker.generate(prompts.select([0, 1]), group_size=3, seed=5)
    assert len(rollouts) == 6 and rollouts.psi.shape == (6, worker.policy.psi_dim)
    assert rollouts.policy_version == 0
    assert (rollouts.mask.sum(1) > 0).all(), "every completion has a token"
    # Same weights (the start checkpoint): the reference's log-probs are the sampler's, so KL starts at 0.
    torch.testing.assert_close(reference.logprobs(rollouts), rollouts.logprobs, atol=1e-5, rtol=0)
    again = worker.generate(prompts.select([0, 1]), group_size=3, seed=5)
    assert again.texts == rollouts.texts, "seeded generation"


def test_rewards_score_each_completion_against_its_own_prompts_truth(worker_and_prompts):
    worker, _, prompts = worker_and_prompts
    rollouts = worker.generate(prompts.select([0, 1]), group_size=2, seed=0)  # clip00 Sydney, clip01 Paris
    rollouts.texts = [
        format_answer("Harbour sounds: Australia.", SYDNEY),
        "no answer",
        format_answer("Accordion and bells: France.", PARIS),
        format_answer("Accordion and bells: France.", SYDNEY),
    ]
    head = RFMHead(RFMConfig(cond_dim=worker.policy.psi_dim, num_steps=4))
    rewards = RewardFn(RewardConfig(), head).score(rollouts)
    assert rewards.parse_ok.tolist() == [True, False, True, True]
    assert rewards.total[1] == RewardConfig().parse_failure_reward
    assert rewards.geo[0] >= 0.2 and rewards.geo[2] >= 0.2, "each answer near its own prompt's truth"
    assert rewards.geo[3] == 0 and rewards.align[3] == 0, "Sydney is neither near Paris nor in France"
    assert rewards.align[[0, 2]].tolist() == [1.0, 1.0]
    assert torch.all(rewards.calib.abs() <= 1)


@pytest.mark.ray
@pytest.mark.parametrize("strategy", ["colocated", "split"])
def test_placement_gives_every_actor_its_own_bundle_packed_as_the_strategy_says(ray_local, strategy):
    from ray.util.placement_group import placement_group_table, remove_placement_group

    placement = PlacementConfig(
        strategy=strategy,
        rollout_workers=2,
        rollout=ActorResources(num_cpus=0.1),
        learner=ActorResources(num_cpus=0.2),
        reference=ActorResources(num_cpus=0.05),
        reward=ActorResources(num_cpus=0.05),
    )
    groups, options = placement_options(placement)
    try:
        tables = {group.id: placement_group_table(group) for group in groups}
        expected = {"colocated": ["STRICT_PACK"], "split": ["PACK"] * 4}[strategy]
        assert [table["strategy"] for table in tables.values()] == expected
        assert [len(options[role]) for role in ("learner", "rollout", "reference", "reward")] == [1, 2, 1, 1]
        slots = set()
        for role_options in options.values():
            for option in role_options:
                bundle = option["scheduling_strategy"]
                group, index = bundle.placement_group, bundle.placement_group_bundle_index
                assert tables[group.id]["bundles"][index] == {"CPU": option["num_cpus"]}
                slots.add((group.id, index))
        assert len(slots) == 5, "one bundle per actor"
    finally:
        for group in groups:
            remove_placement_group(group)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_trains_checkpoints_and_resumes(features, ray_head, tmp_path):
    out_dir = tmp_path / "grpo"
    ray_cli = str(Path(sys.executable).with_name("ray"))

    def submit(steps: int) -> subprocess.CompletedProcess:
        entrypoint = ["python", "jobs/grpo.py", "--config", "configs/grpo/tiny.yaml"]
        for setting in (f"features={features}", f"out_dir={out_dir}", f"steps={steps}", "eval_clips=4",
                        "mllm.max_new_tokens=24"):  # fmt: skip
            entrypoint += ["--set", setting]
        submitted = subprocess.run(
            [ray_cli, "job", "submit", "--address", ray_head, "--working-dir", ".", "--", *entrypoint],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
        assert "succeeded" in submitted.stdout + submitted.stderr
        return submitted

    first = submit(steps=2)
    assert "grpo: 2 steps (resumed from step 0)" in first.stdout
    checkpoints = out_dir / CHECKPOINTS_DIR
    assert (checkpoints / "latest").read_text().strip() == "step_000002"
    assert json.loads((checkpoints / "step_000002" / "state.json").read_text()) == {"step": 2, "version": 2}

    second = submit(steps=3)
    assert f"resuming from {checkpoints / 'step_000002'} (step 2, policy version 2)" in second.stdout
    assert "grpo: 3 steps (resumed from step 2)" in second.stdout
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000002", "step_000003"], "keeps 2"
    assert (checkpoints / "step_000003" / POLICY_DIR / "projector" / "model.safetensors").is_file()
    assert any((checkpoints / "step_000003" / "deepspeed").rglob("*optim_states.pt"))
    assert (out_dir / POLICY_DIR / "config.json").is_file()

    records = MetricsLog(out_dir / METRICS_FILE).read()
    steps = [r for r in records if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3], "each step once: the resumed run continued after step 2"
    assert [r["policy_version"] for r in steps] == [1, 2, 3]
    for record in steps:
        assert record["stale_rollouts"] == 0 and record["weight_sync_s"] > 0
        assert record["rollout_tokens_per_s"] > 0 and record["learner_step_s"] > 0
        assert 0 <= record["parse_failure_rate"] <= 1 and 0 < record["response_length"] <= 24
        for name in ("reward_geo", "reward_align", "reward_calib", "reward_total", "kl", "clip_fraction"):
            assert np.isfinite(record[name]), name
    evals = [(r["eval"], r["step"]) for r in records if "eval" in r]
    assert evals == [("start", 0), ("final", 2), ("final", 3)], "the start is evaluated once, not on resume"
    assert all(r["clips"] == 4 for r in records if "eval" in r)
