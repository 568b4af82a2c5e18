"""GRPO's measured gain on avg-synth: warm-up, a ψ head for R_calib, then GRPO over several seeds.

    python benchmarks/grpo_gain.py --out out/grpo-gain [--preset demo] [--data DIR] [--seeds 0 1 2]

The budget (24 steps of 8 prompts × G = 8, learning rate 2e-4, sampling temperature 0.7) is the tiny
GRPO config's with more steps, twice its prompts per step and twice its learning rate. Measured on seed 0
with 4 prompts per step: at 1e-4 the policy barely moves (KL 0.012 after 16 steps); at 5e-4 it drifts
(KL 1.1 by step 14, parse failures up to 22%, total reward falling). With 4 prompts per step at 2e-4 the
step-1 reward, a mean over 4 clips, is too noisy to compare: 8 halves that noise.

Stages, each kept under --out so that a re-run redoes only what is missing:
1. avg-synth (`run_synth`), embedded by the tiny encoders in this process (`embed_in_process` with
   configs/embed/tiny.yaml);
2. the supervised warm-up of the tiny MLLM (`run_warmup`), which GRPO starts from;
3. R_calib's head: the rfm job (configs/rfm/tiny.yaml with `feature_kind: psi`) on the warm-up's greedy ψ
   of the training clips, so R_calib scores how well each rollout's ψ places its clip;
4. per seed, the GRPO job (configs/grpo/tiny.yaml with this script's budget) from the warm-up, whose
   evaluation scores the greedy answers of the start (warm-up) and final policies on every test clip.

Prints per seed and on average: the mean total reward of step 1 (rollouts of the warm-up policy) and over
the last `--last-steps` steps, and accuracy within 750 and 2500 km of the warm-up's and GRPO's greedy
answers on the test split (an unparseable answer counts as wrong).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyarrow.compute as pc

from avgeo.config import load_config
from avgeo.data.features import read_features, write_features
from avgeo.data.manifest import read_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.distributed.embed import EmbedConfig, embed_in_process
from avgeo.distributed.grpo import METRICS_FILE, GRPOConfig, run_grpo
from avgeo.distributed.rfm import RFMJobConfig, run_rfm
from avgeo.reasoning.warmup import WarmupConfig, run_warmup
from avgeo.runlog import MetricsLog

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
THRESHOLDS_KM = (750, 2500)
REWARDS = ("total", "geo", "calib")


def features_of(preset: str, data_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """The avg-synth `preset` build in `data_dir` and its feature table (built and embedded if absent)."""
    manifest_path = run_synth(synth_preset(preset), data_dir, seed=0)
    features_path = out_dir / "features.parquet"
    if not features_path.is_file():
        config = load_config(
            EmbedConfig, CONFIGS / "embed" / "tiny.yaml", manifest=str(manifest_path), out_dir=str(out_dir)
        )
        write_features(embed_in_process(read_manifest(manifest_path), config), features_path)
    return manifest_path, features_path


def calib_head(features_path: Path, warmup_dir: Path, out_dir: Path) -> Path:
    """The rfm job's ψ head over the warm-up's ψ of the training clips (R_calib's head)."""
    config = load_config(
        RFMJobConfig,
        CONFIGS / "rfm" / "tiny.yaml",
        features=str(features_path),
        out_dir=str(out_dir / "models"),
        storage_path=str(out_dir / "ray_train"),
        feature_kind="psi",
        **{"mllm.model": str(warmup_dir)},
    )
    return run_rfm(config).model_dir


def grpo_run(
    args: argparse.Namespace, seed: int, features_path: Path, warmup_dir: Path, head_dir: Path
) -> dict:
    """One GRPO run from the warm-up; its metrics: step rewards and the start / final evaluations."""
    test_clips = pc.sum(pc.equal(read_features(features_path, columns=["split"])["split"], "test")).as_py()
    # A run resumes from its folder, so one folder per budget (more steps continue a run; nothing else may).
    budget = f"lr{args.learning_rate:g}-t{args.temperature:g}-p{args.prompts_per_step}"
    out_dir = args.out / f"grpo-{budget}-seed{seed}"
    config = load_config(
        GRPOConfig,
        CONFIGS / "grpo" / "tiny.yaml",
        features=str(features_path),
        out_dir=str(out_dir),
        calib_head=str(head_dir),
        seed=seed,
        steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        eval_clips=test_clips,
        checkpoint_every=args.steps,  # one checkpoint, at the end: the budget goes to training
        **{
            "mllm.model": str(warmup_dir),
            "mllm.temperature": args.temperature,
            "learner.learning_rate": args.learning_rate,
        },
    )
    run_grpo(config)
    records = MetricsLog(out_dir / METRICS_FILE).read()
    steps = [r for r in records if "reward_total" in r]
    evals = {r["eval"]: r for r in records if "eval" in r}
    last = steps[-args.last_steps :]
    return {
        **{f"{name}_first": steps[0][f"reward_{name}"] for name in REWARDS},
        **{f"{name}_last": statistics.mean(r[f"reward_{name}"] for r in last) for name in REWARDS},
        **{f"start_{t}": evals["start"][f"acc_{t}km"] for t in THRESHOLDS_KM},
        **{f"final_{t}": evals["final"][f"acc_{t}km"] for t in THRESHOLDS_KM},
        "clips": evals["final"]["clips"],
    }


def mean_run(runs: list[dict]) -> dict:
    """The per-seed figures averaged over seeds."""
    return {key: statistics.mean(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/grpo-gain"), help="work folder (resumable)")
    parser.add_argument("--preset", choices=("ci", "demo"), default="demo", help="avg-synth preset")
    parser.add_argument(
        "--data", type=Path, help="avg-synth build to (re)use; default <out>/avg-synth-<preset>"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GRPO seeds")
    parser.add_argument("--steps", type=int, default=24, help="GRPO steps per seed")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="prompts per GRPO step (P)")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="learner learning rate")
    parser.add_argument("--temperature", type=float, default=0.7, help="rollout sampling temperature")
    parser.add_argument("--warmup-epochs", type=int, default=3, help="supervised warm-up epochs")
    parser.add_argument("--last-steps", type=int, default=5, help="steps averaged as 'the last steps'")
    args = parser.parse_args()
    args.out = args.out.resolve()

    import ray

    started_s = time.perf_counter()
    data_dir = args.data or args.out / f"avg-synth-{args.preset}"
    manifest_path, features_path = features_of(args.preset, data_dir, args.out)
    prepared_s = time.perf_counter()
    features = read_features(features_path)
    warmup = WarmupConfig(out_dir=args.out, epochs=args.warmup_epochs, eval_clips=16)
    warmup_dir = run_warmup(warmup, features, read_manifest(manifest_path))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        head_dir = calib_head(features_path, warmup_dir, args.out)
        runs = {seed: grpo_run(args, seed, features_path, warmup_dir, head_dir) for seed in args.seeds}
    finally:
        ray.shutdown()
    wall_s = time.perf_counter() - started_s

    print(
        f"\nGRPO gain on avg-synth {args.preset}: {args.steps} steps × {args.prompts_per_step} prompts × "
        f"G=8, lr {args.learning_rate:g}, temperature {args.temperature:g}; accuracy on "
        f"{runs[args.seeds[0]]['clips']} test clips (greedy answers)\n"
    )
    print(
        f"| seed | total reward: step 1 → last {args.last_steps} | R_geo | R_calib | "
        "acc. 750 km: warm-up → GRPO | acc. 2500 km: warm-up → GRPO |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    rows = {**{str(seed): run for seed, run in runs.items()}, "mean": mean_run(list(runs.values()))}
    for label, run in rows.items():
        rewards = " | ".join(f"{run[f'{name}_first']:.3f} → {run[f'{name}_last']:.3f}" for name in REWARDS)
        accuracies = " | ".join(f"{run[f'start_{t}']:.1%} → {run[f'final_{t}']:.1%}" for t in THRESHOLDS_KM)
        print(f"| {label} | {rewards} | {accuracies} |")
    print(
        f"\nwall time {wall_s:.0f} s ({prepared_s - started_s:.0f} s building and embedding avg-synth, "
        f"{wall_s - (prepared_s - started_s):.0f} s warm-up, ψ head and GRPO)"
    )


if __name__ == "__main__":
    main()
