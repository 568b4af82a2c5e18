"""GRPO throughput: our GRPO on Ray against TRL's `GRPOTrainer`, same tiny model and data, in one run.

    python benchmarks/grpo_throughput.py --features out/features/tiny [--model tiny] [--steps 5]

Prints rollout tokens/s and learner samples/s of each and their ratio (ours / TRL).

Ours is `run_grpo` with configs/grpo/tiny.yaml on a local Ray instance: rollout workers, one learner rank
(DeepSpeed ZeRO-2, gloo), the reference and the rewards as actors with fractional CPUs. TRL gets the same
MLLM's language model (a `LlamaForCausalLM` with its weights) and the same prompts as text, in the same
order: the `<frame>` / `<atom>` placeholders stay tokens, so prompts are as long as ours, whose
placeholder embeddings are the projected features instead. Same G, completion length, sampling, β,
clipping and learning rate. TRL's reward is R_geo + R_align of the parsed answer (it has no ψ for
R_calib); rewards do not change the throughput.

What the figures cover:
- rollout tokens/s = completion tokens / generation wall time. Ours: the driver's generate phase (the
  workers in parallel, ψ included, Ray's overhead included); TRL: its `_generate` call.
- learner samples/s = completions / learner wall time. Ours: the learner rank's step (forward, backward
  and DeepSpeed's optimizer step); TRL: `training_step` minus its generate-and-score phase (forward and
  backward; the optimizer step runs outside `training_step` and is not counted).
The first step of each is left out (warm-up); the figures are medians over the other steps.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avgeo.config import load_config
from avgeo.distributed.grpo import METRICS_FILE, GRPOConfig, load_prompts, run_grpo, step_prompt_indices
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.mllm import GeoMLLM
from avgeo.reasoning.prompt import render_prompt
from avgeo.reasoning.rewards import RewardConfig, r_align, r_geo
from avgeo.reasoning.tokenizer import ANSWER_CLOSE
from avgeo.runlog import MetricsLog

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grpo" / "tiny.yaml"


def ours(config: GRPOConfig) -> dict[str, float]:
    """Run our GRPO for `config.steps` steps on a local Ray instance; medians of its per-step metrics."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_grpo(config)
    finally:
        ray.shutdown()
    steps = [r for r in MetricsLog(config.out_dir / METRICS_FILE).read() if "eval" not in r][1:]
    return {
        name: statistics.median(r[name] for r in steps)
        for name in ("rollout_tokens_per_s", "learner_samples_per_s")
    }


def language_model(mllm: GeoMLLM) -> torch.nn.Module:
    """The MLLM's language model and head as a `LlamaForCausalLM` with the same weights and stop tokens."""
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(mllm.llava.config.text_config)
    state = {f"model.{k}": v for k, v in mllm.llava.model.language_model.state_dict().items()}
    llama.load_state_dict(state | {"lm_head.weight": mllm.llava.lm_head.weight}, strict=True)
    llama.generation_config.pad_token_id = mllm.tokenizer.pad_token_id
    # Completions end where ours do: at `</s>` or `</answer>`.
    stop_ids = [mllm.tokenizer.eos_token_id, mllm.tokenizer.convert_tokens_to_ids(ANSWER_CLOSE)]
    llama.generation_config.eos_token_id = stop_ids
    return llama


def trl(config: GRPOConfig, work_dir: Path, threads: int) -> dict[str, float]:
    """Run TRL's GRPOTrainer on the same model and prompts; medians of the timed phases."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from avgeo.geo.gazetteer import Gazetteer

    torch.set_num_threads(threads)
    mllm = GeoMLLM.from_pretrained(config=config.mllm)
    model_dir = work_dir / "trl-model"
    language_model(mllm).save_pretrained(model_dir)  # TRL loads its reference from the same path
    mllm.tokenizer.save_pretrained(model_dir)
    prompts = load_prompts(config, config.train_split)
    order = np.concatenate([step_prompt_indices(s, len(prompts), config) for s in range(config.steps)])
    rows = [
        {
            "prompt": render_prompt(
                prompts.visual_per_frame.shape[1],
                [(atom.name, atom.strength) for atom in prompts.atoms[i][: config.mllm.max_atoms]],
            ),
            "lat": float(prompts.true_latlon_deg[i, 0]),
            "lon": float(prompts.true_latlon_deg[i, 1]),
        }
        for i in order
    ]
    gazetteer, rewards = Gazetteer.load(), RewardConfig()

    def geo_and_align(completions: list[str], lat: list[float], lon: list[float], **_: object) -> list[float]:
        answers = [parse_response(text) for text in completions]
        pred = np.array([a.latlon_deg if a.ok else (math.nan, math.nan) for a in answers])
        truth = np.stack([lat, lon], axis=1)
        geo = r_geo(pred, truth, rewards.geo_level_weights)
        align = r_align([a.trace for a in answers], pred, gazetteer)
        return (rewards.weight_geo * geo + rewards.weight_align * align).tolist()

    timings: dict[str, list[float]] = {"generate_s": [], "tokens": [], "score_s": [], "step_s": []}

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):  # type: ignore[no-untyped-def]
            start_s = time.perf_counter()
            output = super()._generate(prompts)
            timings["generate_s"].append(time.perf_counter() - start_s)
            timings["tokens"].append(sum(len(ids) for ids in output[1]))
            return output

        def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
            start_s = time.perf_counter()
            output = super()._generate_and_score_completions(inputs)
            timings["score_s"].append(time.perf_counter() - start_s)
            return output

        def training_step(self, model, inputs, num_items_in_batch):  # type: ignore[no-untyped-def]
            start_s = time.perf_counter()
            output = super().training_step(model, inputs, num_items_in_batch)
            timings["step_s"].append(time.perf_counter() - start_s)
            return output

    completions_per_step = config.prompts_per_step * config.group_size
    args = TRLConfig(
        output_dir=str(work_dir / "trl"),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        per_device_train_batch_size=completions_per_step,
        num_generations=config.group_size,
        max_completion_length=config.mllm.max_new_tokens,
        temperature=config.mllm.temperature,
        top_p=config.mllm.top_p,
        beta=config.learner.beta,
        epsilon=config.learner.clip_eps,
        loss_type=config.learner.loss_type,
        learning_rate=config.learner.learning_rate,
        max_steps=config.steps,
        shuffle_dataset=False,
        seed=config.seed,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
    )
    trainer = TimedGRPOTrainer(
        str(model_dir),
        reward_funcs=geo_and_align,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=mllm.tokenizer,
    )
    trainer.train()
    tokens_per_s = [t / s for t, s in zip(timings["tokens"], timings["generate_s"], strict=True)][1:]
    learner_s = [step - score for step, score in zip(timings["step_s"], timings["score_s"], strict=True)][1:]
    return {
        "rollout_tokens_per_s": statistics.median(tokens_per_s),
        "learner_samples_per_s": completions_per_step / statistics.median(learner_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("out/features/tiny"), help="feature table")
    parser.add_argument("--model", default="tiny", help="MLLM checkpoint: tiny or a warm-up directory")
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps of each (the first is warm-up)")
    parser.add_argument(
        "--trl-threads",
        type=int,
        default=1,
        help="torch threads of TRL's process (default 1, as each of our actors: with 2 on 2 busy cores the "
        "tiny model's generation ran 20x slower)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as work:
        work_dir = Path(work)
        config = load_config(
            GRPOConfig,
            TINY_CONFIG,
            features=str(args.features.resolve()),
            out_dir=str(work_dir / "ours"),
            steps=args.steps,
            eval_clips=0,
            **{"mllm.model": args.model},
        )
        print(
            f"GRPO throughput, {args.steps} steps of {config.prompts_per_step} prompts × "
            f"G={config.group_size}, ≤{config.mllm.max_new_tokens} new tokens, model {args.model}"
        )
        ours_figures = ours(config)
        trl_figures = trl(config, work_dir, args.trl_threads)
    print(f"{'':24}{'ours (Ray actors)':>20}{'TRL GRPOTrainer':>20}{'ratio':>10}")
    for name in ("rollout_tokens_per_s", "learner_samples_per_s"):
        ratio = ours_figures[name] / trl_figures[name]
        print(f"{name:24}{ours_figures[name]:>20.1f}{trl_figures[name]:>20.1f}{ratio:>10.2f}")
    print(
        f"ours: {config.placement.rollout_workers} rollout workers and 1 learner rank, torch threads "
        f"{config.placement.torch_threads} each; TRL: one process, torch threads {args.trl_threads}; "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
