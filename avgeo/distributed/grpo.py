"""The GRPO job: finetune the MLLM with GRPO on Ray, with each role a separate actor.

    rollout workers (RolloutWorker)  generate G completions per prompt, tagged with their policy version
    reward actor (RewardFn)          R_geo, R_align and R_calib of each completion
    reference (Reference)            log-probabilities under the frozen start policy, for the KL term
    learner group (Learner ranks)    one DeepSpeed ZeRO optimizer step per GRPO step; version + 1
    driver (`run_grpo`)              the loop below, checkpoints, metrics, evaluation

One step (`grpo_step`) reads rollout → reward → advantage → loss → sync: the workers sample from the
step's prompts; the reward actor scores the completions while the reference computes its
log-probabilities (both read the rollouts from the object store); advantages are normalised within each
prompt's group; the learner group takes one optimizer step; then the weights go learner → rollout
workers (`weight_sync`: the object store, or a gloo/NCCL broadcast), every `sync_every` steps.

Data: prompts are the feature table's embedded `train_split` rows, turned into frames and atoms by
`avgeo.reasoning.warmup.mllm_features` (so GRPO prompts exactly as the warm-up trained), truths their
lat/lon. Each epoch is a permutation of the training clips seeded by (seed, epoch), consumed
`prompts_per_step` at a time; generation seeds come from (seed, step, worker). The draws are therefore a
function of (seed, step), so a checkpoint needs no random state beyond its step, and a resumed run draws
what an uninterrupted one would have.

R_calib's RFM head (`calib_head`) is frozen during GRPO: the method trains it in the prediction stage,
i.e. the rfm job with `feature_kind: psi` on the start policy's ψ (then R_calib varies with how well ψ
places each clip). `tiny` is the serving pipeline's seeded, untrained head over ψ
(`avgeo.pipeline.tiny_rfm_recipe`), under which R_calib is nearly constant.

Placement (`placement.strategy`): `colocated` puts one bundle per actor of every role into a single
STRICT_PACK placement group (one node; roles share its GPUs through fractional `num_gpus`); `split`
gives each role its own PACK placement group, so roles may sit on different nodes.

Outputs in `out_dir`: `metrics.jsonl` (one line per step, and `eval` lines for the evaluation of greedy
answers on `eval_split` before the first step and after the last), `checkpoints/step_NNNNNN/`
(`policy/` as `GeoMLLM.save_pretrained` writes it, DeepSpeed's `deepspeed/` with the optimizer state,
`state.json` with step and policy version) and `checkpoints/latest` naming the newest, `policy/` (the
final policy), `job.yaml`. Resume: run the job again with the same `out_dir`; it continues after the
latest checkpoint, so raising `steps` trains only the extra steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm
from transformers import AutoConfig

from avgeo.config import ConfigError, save_config
from avgeo.data.features import embedded_split, labels_latlon
from avgeo.distributed.learner import POLICY_DIR, Learner, LearnerConfig, LearnerGroup, Reference
from avgeo.distributed.model_registry import MODEL_FILE, read_model_entry
from avgeo.distributed.rollout import PromptBatch, RewardFn, Rollouts, RolloutWorker
from avgeo.distributed.weight_sync import BroadcastGroupSpec, WeightSyncError
from avgeo.evaluation import TABLE1_THRESHOLDS_KM
from avgeo.geo.metrics import errors_km
from avgeo.perception.checkpoints import TINY, CheckpointError, resolve_checkpoint
from avgeo.pipeline import tiny_rfm_recipe
from avgeo.prediction.flow import RFMHead
from avgeo.psi import PSI
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.checkpoints import resolve_llava
from avgeo.reasoning.grpo import group_advantages
from avgeo.reasoning.mllm import MLLMConfig
from avgeo.reasoning.rewards import RewardConfig
from avgeo.reasoning.warmup import mllm_features
from avgeo.runlog import MetricsLog

METRICS_FILE = "metrics.jsonl"
"""Per-step metrics (JSON lines; `eval` lines hold the evaluations)."""

JOB_CONFIG_FILE = "job.yaml"
"""The config of the latest run (loads back with `load_config(GRPOConfig, …)`)."""

CHECKPOINTS_DIR = "checkpoints"
"""Checkpoints `step_NNNNNN/` and the `latest` file naming the newest."""

_LATEST_FILE = "latest"
_STATE_FILE = "state.json"
_FEATURE_COLUMNS = ["clip_id", "split", "lat", "lon", "error", "visual_per_frame", "atoms", "models"]
_ROLES = ("learner", "rollout", "reference", "reward")


@dataclass
class ActorResources:
    """Ray resources of one actor."""

    num_cpus: float = 0.5
    """CPUs reserved; fractions let actors share cores (on 2 cores, 0.25–0.5 each)."""
    num_gpus: float = 0.0
    """GPUs (fractions share one); above 0 the actor's model runs on CUDA."""

    def __post_init__(self) -> None:
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise ConfigError(f"num_cpus must be > 0 and num_gpus >= 0, got {self.num_cpus}, {self.num_gpus}")

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def bundle(self) -> dict[str, float]:
        """This actor's placement-group bundle."""
        return {"CPU": self.num_cpus} | ({"GPU": self.num_gpus} if self.num_gpus else {})


@dataclass
class PlacementConfig:
    """How many actors of each role, their resources and where they go."""

    strategy: Literal["colocated", "split"] = "split"
    """`colocated`: every actor in one STRICT_PACK placement group (one node); `split`: a PACK group per
    role (see the module docstring)."""
    rollout_workers: int = 2
    """Rollout workers; a step's prompts are shared out among them."""
    learner_workers: int = 1
    """Learner ranks (data-parallel under DeepSpeed ZeRO)."""
    rollout: ActorResources = field(default_factory=lambda: ActorResources(num_cpus=0.5))
    """Per rollout worker."""
    learner: ActorResources = field(default_factory=lambda: ActorResources(num_cpus=0.5))
    """Per learner rank."""
    reference: ActorResources = field(default_factory=lambda: ActorResources(num_cpus=0.25))
    """The reference policy."""
    reward: ActorResources = field(default_factory=lambda: ActorResources(num_cpus=0.25))
    """The reward function (gazetteer and RFM head; CPU work)."""
    torch_threads: int = 1
    """torch threads per actor: small models on shared cores run fastest with 1."""

    def __post_init__(self) -> None:
        if self.rollout_workers < 1 or self.learner_workers < 1 or self.torch_threads < 1:
            raise ConfigError("placement.rollout_workers, learner_workers and torch_threads must be >= 1")


@dataclass
class GRPOConfig:
    """The GRPO job: data, models, the GRPO settings, resources, and where checkpoints and metrics go."""

    features: Path
    """Feature table (a Parquet file or a folder of them) written by the embedding job."""
    out_dir: Path = Path("out/grpo")
    """Metrics, checkpoints and the final policy; a re-run with the same folder resumes."""
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    """The policy: `mllm.model` is the start checkpoint (`tiny` or a warm-up directory) and the frozen
    reference; the rest says how it prompts and samples."""
    calib_head: str = TINY
    """R_calib's RFM head over ψ: `tiny` (the pipeline's seeded, untrained head), a `psi` model of the rfm
    job, or a `save_pretrained` directory of a head whose cond_dim is the MLLM's ψ width. Frozen."""
    rewards: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Optimizer and loss settings."""
    steps: int = 3
    """GRPO steps to have trained when the run ends (counting those of resumed runs)."""
    prompts_per_step: int = 4
    """Prompts per step, P; a step trains on P·G completions."""
    group_size: int = 8
    """G, completions per prompt (the method's 8)."""
    seed: int = 0
    """Seed of the prompt order and of generation."""
    train_split: str = "train"
    """Feature-table split the prompts come from."""
    eval_split: str = "test"
    """Split of the before/after evaluation of greedy answers."""
    eval_clips: int = 16
    """Clips of `eval_split` evaluated (its first rows); 0 skips the evaluation."""
    checkpoint_every: int = 1
    """Steps between checkpoints (the last step always gets one)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted."""
    weight_sync: Literal["object_store", "collective"] = "object_store"
    """Learner → rollout transport: Ray's object store, or a broadcast group (gloo on CPU, NCCL on GPU;
    learner and rollout workers must then both be on CPU or both on GPU)."""
    sync_every: int = 1
    """Steps between weight syncs. Rollouts may then lag the learner by up to sync_every − 1 versions;
    the ratio's π_old is their sampling policy, so the clipped ratio accounts for the lag."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    """Actors, resources and placement."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"group_size={self.group_size}: GRPO compares G >= 2 completions per prompt")
        ranks_times_micro = self.placement.learner_workers * self.learner.micro_batch_prompts
        if self.prompts_per_step < 1 or self.prompts_per_step % ranks_times_micro:
            raise ConfigError(
                f"prompts_per_step={self.prompts_per_step} must be a positive multiple of "
                f"placement.learner_workers × learner.micro_batch_prompts = {ranks_times_micro}"
            )
        positive = {"steps": self.steps, "checkpoint_every": self.checkpoint_every}
        positive |= {"keep_checkpoints": self.keep_checkpoints, "sync_every": self.sync_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}={value}: expected an integer >= 1")
        if self.eval_clips < 0:
            raise ConfigError(f"eval_clips={self.eval_clips}: expected >= 0 (0 skips the evaluation)")
        if (
            self.weight_sync == "collective"
            and self.placement.learner.device != self.placement.rollout.device
        ):
            raise ConfigError(
                "weight_sync=collective needs learner and rollout workers on the same kind of device "
                "(both with num_gpus > 0, or both 0); use weight_sync=object_store otherwise"
            )


@dataclass(frozen=True)
class TrainState:
    """Where training stands: steps done and the policy version they produced."""

    step: int
    version: int


@dataclass
class GRPOSummary:
    """What one run of the GRPO job did."""

    out_dir: Path
    """The run's folder (metrics.jsonl, checkpoints/)."""
    policy_dir: Path
    """The final policy (a GeoMLLM checkpoint directory)."""
    steps: int
    """Steps trained, this run and the runs it resumed."""
    resumed_from_step: int
    """Step of the checkpoint this run started from (0: a fresh run)."""
    reward_total_first: float | None
    """Mean total reward of step 1 (None if no step is logged)."""
    reward_total_last: float | None
    """Mean total reward of the last step."""
    eval_start: dict[str, float] | None
    """Greedy answers of the start policy on eval_split (None when skipped)."""
    eval_final: dict[str, float] | None
    """Greedy answers of the final policy on eval_split."""
    wall_s: float
    """Seconds the run took."""

    def report(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"grpo: {self.steps} steps (resumed from step {self.resumed_from_step}), {self.wall_s:.1f} s "
            f"-> {self.policy_dir}",
            f"  mean total reward: step 1 {_fmt(self.reward_total_first)}, step {self.steps} "
            f"{_fmt(self.reward_total_last)}",
        ]
        for name, scores in (("start", self.eval_start), ("final", self.eval_final)):
            if scores is not None:
                accuracies = ", ".join(f"{t} km {scores[f'acc_{t}km']:.1%}" for t in TABLE1_THRESHOLDS_KM)
                lines.append(
                    f"  eval {name}: {accuracies}; parse failures {scores['parse_failure_rate']:.1%} "
                    f"of {scores['clips']:.0f} clips"
                )
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass
class GRPORoles:
    """The driver's handles on the job's actors."""

    rollout_workers: list[Any]
    learners: LearnerGroup
    reference: Any
    reward: Any
    placement_groups: list[Any]

    def shutdown(self) -> None:
        """Take the learners out of their process group, then end every actor and placement group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        self.learners.shutdown()
        for actor in [*self.rollout_workers, *self.learners.ranks, self.reference, self.reward]:
            ray.kill(actor)
        for group in self.placement_groups:
            remove_placement_group(group)


def run_grpo(config: GRPOConfig) -> GRPOSummary:
    """Finetune the MLLM with GRPO on Ray: rollout workers, a learner group, a reference and the rewards
    as separate actors; resumable."""
    import ray

    start_s = time.perf_counter()
    config = dataclasses.replace(config, features=config.features.resolve(), out_dir=config.out_dir.resolve())
    config.out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config.out_dir / JOB_CONFIG_FILE)
    metrics_log = MetricsLog(config.out_dir / METRICS_FILE)
    train_prompts = load_prompts(config, config.train_split)
    eval_prompts = load_prompts(config, config.eval_split, config.eval_clips) if config.eval_clips else None
    checkpoint = latest_checkpoint(config.out_dir)
    state = TrainState(0, 0) if checkpoint is None else checkpoint[1]

    if not ray.is_initialized():
        ray.init()
    roles = start_roles(config, build_calib_head(config))
    try:
        if checkpoint is not None:
            print(f"grpo: resuming from {checkpoint[0]} (step {state.step}, policy version {state.version})")
            roles.learners.load(checkpoint[0], state.version)
        if config.weight_sync == "collective":
            join_broadcast_group(roles, config.placement.rollout.device)
        sync_weights(roles, config.weight_sync, state.version)
        if eval_prompts is not None and not any(r.get("eval") == "start" for r in metrics_log.read()):
            metrics_log.write(
                step=state.step, eval="start", **evaluate_answers(roles.rollout_workers, eval_prompts)
            )
        progress = tqdm(range(state.step, config.steps), initial=state.step, total=config.steps, desc="grpo")
        for step in progress:
            prompts = train_prompts.select(step_prompt_indices(step, len(train_prompts), config))
            metrics, version = grpo_step(roles, prompts, step, state.version, config)
            state = TrainState(step + 1, version)
            metrics_log.write(step=state.step, **metrics)
            progress.set_postfix(reward=f"{metrics['reward_total']:.3f}", kl=f"{metrics['kl']:.4f}")
            if state.step % config.checkpoint_every == 0 or state.step == config.steps:
                write_checkpoint(roles.learners, config.out_dir, state, config.keep_checkpoints)
        policy_dir = config.out_dir / POLICY_DIR
        ray.get(roles.learners.ranks[0].save_policy.remote(str(policy_dir)))
        if eval_prompts is not None:
            metrics_log.write(
                step=state.step, eval="final", **evaluate_answers(roles.rollout_workers, eval_prompts)
            )
    finally:
        roles.shutdown()

    records = metrics_log.read()
    step_records = [r for r in records if "reward_total" in r]
    evals = {
        r["eval"]: {k: v for k, v in r.items() if k not in ("time_s", "step", "eval")}
        for r in records
        if "eval" in r
    }
    summary = GRPOSummary(
        out_dir=config.out_dir,
        policy_dir=policy_dir,
        steps=state.step,
        resumed_from_step=0 if checkpoint is None else checkpoint[1].step,
        reward_total_first=step_records[0]["reward_total"] if step_records else None,
        reward_total_last=step_records[-1]["reward_total"] if step_records else None,
        eval_start=evals.get("start"),
        eval_final=evals.get("final"),
        wall_s=time.perf_counter() - start_s,
    )
    print(summary.report())
    return summary


def grpo_step(
    roles: GRPORoles, prompts: PromptBatch, step: int, version: int, config: GRPOConfig
) -> tuple[dict[str, float | None], int]:
    """One GRPO step on `prompts` from policy `version`: rollout → reward → advantage → loss → sync.

    Returns the step's metrics and the new policy version.
    """
    import ray

    start_s = time.perf_counter()
    rollouts = generate_rollouts(roles.rollout_workers, prompts, config.group_size, step, config.seed)
    rollout_s = time.perf_counter() - start_s

    rollouts_ref = ray.put(rollouts)
    rewards_ref = roles.reward.score.remote(rollouts_ref)
    ref_logprobs_ref = roles.reference.logprobs.remote(rollouts_ref)  # runs beside the rewards
    rewards, rollouts.ref_logprobs = ray.get([rewards_ref, ref_logprobs_ref])

    rollouts.advantages = group_advantages(rewards.total, config.group_size)

    learner_metrics = roles.learners.step(rollouts, max_staleness=config.sync_every - 1)
    version += 1

    sync_s = None
    if (step + 1) % config.sync_every == 0:
        sync_start_s = time.perf_counter()
        sync_weights(roles, config.weight_sync, version)
        sync_s = time.perf_counter() - sync_start_s

    num_tokens = int(rollouts.mask.sum())
    metrics = {
        "policy_version": version,
        "reward_geo": rewards.geo.mean().item(),
        "reward_align": rewards.align.mean().item(),
        "reward_calib": rewards.calib.mean().item(),
        "reward_total": rewards.total.mean().item(),
        "parse_failure_rate": 1.0 - rewards.parse_ok.float().mean().item(),
        "kl": learner_metrics["kl"],
        "clip_fraction": learner_metrics["clip_fraction"],
        "loss": learner_metrics["loss"],
        "response_length": num_tokens / len(rollouts),
        "rollout_tokens_per_s": num_tokens / rollout_s,
        "learner_step_s": learner_metrics["step_s"],
        "learner_samples_per_s": len(rollouts) / learner_metrics["step_s"],
        "weight_sync_s": sync_s,
        # Completions sampled by weights older than the learner's (at most sync_every − 1 versions behind).
        "stale_rollouts": len(rollouts) if rollouts.policy_version < version - 1 else 0,
        "step_s": time.perf_counter() - start_s,
    }
    return metrics, version


def generate_rollouts(
    workers: list[Any], prompts: PromptBatch, group_size: int, step: int, seed: int
) -> Rollouts:
    """Share the prompts out among the rollout workers and join their rollouts, prompt order kept."""
    import ray

    parts = [indices for indices in np.array_split(np.arange(len(prompts)), len(workers)) if len(indices)]
    futures = [
        worker.generate.remote(prompts.select(indices), group_size, generation_seed(seed, step, index))
        for index, (worker, indices) in enumerate(zip(workers, parts, strict=False))
    ]
    return Rollouts.concat(ray.get(futures))


def sync_weights(roles: GRPORoles, transport: str, version: int) -> None:
    """Send the learner's weights (policy `version`) to every rollout worker; checks what they hold."""
    import ray

    learner = roles.learners.ranks[0]
    if transport == "object_store":
        # An actor method's return value stays in the object store; the workers read it from there.
        weights_ref = learner.weights.remote()
        held = ray.get([worker.load_weights.remote(weights_ref) for worker in roles.rollout_workers])
    else:
        sent = learner.send_weights.remote()
        held = ray.get([worker.receive_weights.remote() for worker in roles.rollout_workers] + [sent])
    if set(held) != {version}:
        raise WeightSyncError(
            f"after a sync the learner and rollout workers hold policy versions {held}, expected {version}"
        )


def join_broadcast_group(roles: GRPORoles, device: str) -> None:
    """Form the weight-broadcast group: learner rank 0 and every rollout worker."""
    import ray

    learner = roles.learners.ranks[0]
    host, port = ray.get(learner.rendezvous_address.remote())
    spec = BroadcastGroupSpec(
        host, port, 1 + len(roles.rollout_workers), "nccl" if device == "cuda" else "gloo"
    )
    ray.get(
        [learner.join_broadcast.remote(spec)]
        + [worker.join_broadcast.remote(spec, rank) for rank, worker in enumerate(roles.rollout_workers, 1)]
    )


def evaluate_answers(workers: list[Any], prompts: PromptBatch) -> dict[str, float]:
    """Greedy answers on `prompts`: parse-failure rate and accuracy within each Table 1 threshold (an
    unparseable answer counts as wrong), `clips`; shared out among the workers."""
    import ray

    parts = [indices for indices in np.array_split(np.arange(len(prompts)), len(workers)) if len(indices)]
    texts = ray.get([w.answer.remote(prompts.select(i)) for w, i in zip(workers, parts, strict=False)])
    answers = [parse_response(text) for part in texts for text in part]
    parsed = np.array([answer.ok for answer in answers])
    error_km = np.full(len(answers), np.inf)
    if parsed.any():
        predictions = np.array([answer.latlon_deg for answer in answers if answer.ok])
        error_km[parsed] = errors_km(predictions, prompts.true_latlon_deg[parsed])
    scores = {f"acc_{t}km": float(np.mean(error_km <= t)) for t in TABLE1_THRESHOLDS_KM}
    return scores | {"parse_failure_rate": float(1.0 - parsed.mean()), "clips": len(answers)}


def step_prompt_indices(step: int, num_prompts: int, config: GRPOConfig) -> np.ndarray:
    """(P,) indices of step `step`'s prompts: epoch e is a permutation of the prompts seeded by (seed, e),
    consumed P at a time across epoch boundaries."""
    positions = range(step * config.prompts_per_step, (step + 1) * config.prompts_per_step)
    orders = {
        epoch: np.random.default_rng([config.seed, epoch]).permutation(num_prompts)
        for epoch in {position // num_prompts for position in positions}
    }
    return np.array([orders[position // num_prompts][position % num_prompts] for position in positions])


def generation_seed(seed: int, step: int, worker: int) -> int:
    """The sampling seed of one worker at one step."""
    return int(np.random.SeedSequence([seed, step, worker]).generate_state(1)[0])


def load_prompts(config: GRPOConfig, split: str, max_clips: int | None = None) -> PromptBatch:
    """The embedded rows of `split` (the first `max_clips`) as prompts."""
    table = embedded_split(config.features, split, _FEATURE_COLUMNS, "train_split / eval_split")
    if max_clips is not None:
        table = table.slice(0, max_clips)
    visual_per_frame, atoms = mllm_features(table, config.mllm.num_frames)
    return PromptBatch(table["clip_id"].to_pylist(), visual_per_frame, atoms, labels_latlon(table))


def build_calib_head(config: GRPOConfig) -> RFMHead:
    """R_calib's frozen RFM head over ψ (`config.calib_head`), checked against the MLLM's ψ width and, for a
    model of the rfm job, its input."""
    psi_dim = AutoConfig.from_pretrained(resolve_llava(config.mllm.model)).text_config.hidden_size
    directory = Path(resolve_checkpoint(config.calib_head, tiny_rfm_recipe(psi_dim)))
    if (directory / MODEL_FILE).is_file() and (kind := read_model_entry(directory).feature_kind) != PSI:
        raise CheckpointError(
            f"{config.calib_head}: the rfm job trained this head on {kind!r} features; R_calib needs one "
            "over ψ: train it with feature_kind: psi"
        )
    head = RFMHead.from_pretrained(directory)
    if head.config.cond_dim != psi_dim:
        raise CheckpointError(
            f"{config.calib_head}: an RFM head conditioned on {head.config.cond_dim}-d inputs; R_calib needs "
            f"one over ψ of {config.mllm.model} ({psi_dim}-d): train it on ψ, or use calib_head: tiny"
        )
    return head


def start_roles(config: GRPOConfig, calib_head: RFMHead) -> GRPORoles:
    """Start every actor in its placement group (see the module docstring) and set up the learner group."""
    import ray

    placement = config.placement
    groups, options = placement_options(placement)
    threads = placement.torch_threads
    prompts_per_rank = config.prompts_per_step // placement.learner_workers
    rollout_workers = [
        ray.remote(RolloutWorker).options(**option).remote(config.mllm, placement.rollout.device, threads)
        for option in options["rollout"]
    ]
    learner_ranks = [
        ray.remote(Learner)
        .options(**option)
        .remote(
            config.mllm,
            config.learner,
            rank,
            placement.learner_workers,
            prompts_per_rank,
            config.group_size,
            placement.learner.device,
            threads,
        )
        for rank, option in enumerate(options["learner"])
    ]
    reference = (
        ray.remote(Reference)
        .options(**options["reference"][0])
        .remote(config.mllm, placement.reference.device, threads)
    )
    reward = ray.remote(RewardFn).options(**options["reward"][0]).remote(config.rewards, calib_head)
    return GRPORoles(rollout_workers, LearnerGroup(learner_ranks), reference, reward, groups)


def placement_options(placement: PlacementConfig) -> tuple[list[Any], dict[str, list[dict[str, Any]]]]:
    """The placement groups, and per role the actor options (resources, bundle) of each of its actors."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    counts = {"learner": placement.learner_workers, "rollout": placement.rollout_workers}
    resources = {role: getattr(placement, role) for role in _ROLES}
    bundles = {role: [resources[role].bundle()] * counts.get(role, 1) for role in _ROLES}
    if placement.strategy == "colocated":
        group = placement_group(
            [bundle for role in _ROLES for bundle in bundles[role]], strategy="STRICT_PACK"
        )
        groups, slots, first = [group], {}, 0
        for role in _ROLES:
            slots[role] = [(group, first + i) for i in range(len(bundles[role]))]
            first += len(bundles[role])
    else:
        groups = [placement_group(bundles[role], strategy="PACK") for role in _ROLES]
        slots = {
            role: [(group, i) for i in range(len(bundles[role]))]
            for role, group in zip(_ROLES, groups, strict=True)
        }
    ray.get([group.ready() for group in groups])
    options = {
        role: [
            {
                "num_cpus": resources[role].num_cpus,
                "num_gpus": resources[role].num_gpus,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=i
                ),
            }
            for group, i in slots[role]
        ]
        for role in _ROLES
    }
    return groups, options


def latest_checkpoint(out_dir: Path) -> tuple[Path, TrainState] | None:
    """The newest checkpoint under `out_dir` and its state, or None for a fresh run."""
    latest = out_dir / CHECKPOINTS_DIR / _LATEST_FILE
    if not latest.is_file():
        return None
    directory = out_dir / CHECKPOINTS_DIR / latest.read_text().strip()
    state_file = directory / _STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(
            f"{latest} names {directory.name}, which has no {_STATE_FILE}; delete {latest} to restart from "
            "the start model, or point it at an older complete checkpoint"
        )
    return directory, TrainState(**json.loads(state_file.read_text()))


def write_checkpoint(learners: LearnerGroup, out_dir: Path, state: TrainState, keep: int) -> Path:
    """Write `checkpoints/step_NNNNNN/`, then point `latest` at it (atomically) and delete the oldest."""
    root = out_dir / CHECKPOINTS_DIR
    directory = root / f"step_{state.step:06d}"
    learners.save(directory)
    (directory / _STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)) + "\n")
    temp = root / f".{_LATEST_FILE}.tmp"
    temp.write_text(directory.name + "\n")
    os.replace(temp, root / _LATEST_FILE)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    return directory
