"""`avgeo demo`: the embedded default end to end, each step one job's library function on its tiny config.

    synth -> MART (and the plain-SAE ablation) -> embed -> heads -> warm-up -> GRPO -> ψ heads
    -> geotag the test split -> evaluate -> Table 1 layout, where the heatmaps and predictions are

Each job loads `configs/<job>/tiny.yaml` with the demo's overrides: paths under `out_dir`, the seed, and
the budgets of `DemoConfig`. Everything runs in one local Ray cluster started here (or the one this
process already holds). Re-running skips finished steps (`avgeo.demo.steps`); the step markers do not
record the budgets, so after changing `DemoConfig` start from an empty `out_dir`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.compute as pc

from avgeo.config import ConfigError, load_config
from avgeo.data.features import read_features
from avgeo.data.manifest import read_manifest, write_manifest
from avgeo.data.synth import run_synth, synth_preset
from avgeo.demo.config import DemoConfig
from avgeo.demo.paths import DemoPaths
from avgeo.demo.report import print_report
from avgeo.demo.steps import Step, run_steps, time_table

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The checkout's job configs; every step starts from `<job>/tiny.yaml`."""

FEATURE_KINDS = ("visual", "audio", "atoms", "audiovisual")
"""The feature kinds every head is trained on."""

C = TypeVar("C")


def run_demo(out_dir: str | Path, seed: int = 0, config: DemoConfig | None = None) -> Path:
    """Run the demo into `out_dir` (resumable) and print its tables; returns the results Markdown's path.

    `seed` replaces `config.seed` (the CLI's `--seed`); `config` defaults to `DemoConfig()`.
    """
    import ray

    start_s = time.perf_counter()
    config = dataclasses.replace(config or DemoConfig(), seed=seed)
    paths = DemoPaths(Path(out_dir).resolve())
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=False)
    try:
        with _environment(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=str(config.train_poll_s)):
            records = run_steps(demo_steps(config, paths), paths.markers)
    finally:
        if started_ray:
            ray.shutdown()
    results = print_report(config, paths)
    print("\nWall time per step:\n")
    print(time_table(records, time.perf_counter() - start_s))
    return results


def demo_steps(config: DemoConfig, paths: DemoPaths) -> list[Step]:
    """The demo's steps in order (the ablations' only when `config` asks for them)."""
    from avgeo.distributed.embed import EmbedConfig, run_embed
    from avgeo.distributed.evaluate import EvaluateConfig, run_evaluate
    from avgeo.distributed.geotag import GeotagConfig, run_geotag
    from avgeo.distributed.grpo import GRPOConfig, run_grpo
    from avgeo.distributed.mart import MartConfig, run_mart
    from avgeo.distributed.rfm import RFMJobConfig, run_rfm
    from avgeo.reasoning.warmup import WarmupConfig, run_warmup

    seed = config.seed
    # ψ as the Geolocator computes it: the GRPO job's prompt settings, decoded greedily.
    mllm = {"max_new_tokens": 96, "temperature": 0.0, "num_frames": 8, "max_atoms": 8}

    def synth() -> None:
        run_synth(synth_preset(config.preset), paths.synth, seed=seed)

    def pretrain(dictionary: str) -> None:
        objective = "mart" if dictionary == "mart" else "standard_sae"
        overrides = {"cache_dir": paths.mart_cache, "out_dir": paths.root / dictionary}
        overrides |= {"storage_path": paths.ray_train, "run_name": dictionary}
        overrides |= {"factory.num_train": config.mart_mixtures, "factory.num_heldout": config.mart_heldout}
        overrides |= {"factory.seed": seed, "train.seed": seed, "train.epochs": config.mart_epochs}
        run_mart(_job_config(MartConfig, "mart", **overrides, **{"train.objective": objective}))

    def embed(dictionary: str) -> None:
        overrides = {"manifest": paths.manifest, "out_dir": paths.features(dictionary)}
        run_embed(_job_config(EmbedConfig, "embed", **overrides, icsae_model=paths.icsae(dictionary)))

    def train_head(dictionary: str, name: str, head: str, kind: str, **extra: Any) -> None:
        overrides = {"features": paths.features(dictionary), "out_dir": paths.models(dictionary)}
        overrides |= {"storage_path": paths.ray_train, "model_name": name, "head": head, "feature_kind": kind}
        overrides |= {"num_workers": config.head_workers, "train.seed": seed}
        overrides |= {"train.epochs": config.head_epochs}
        run_rfm(_job_config(RFMJobConfig, "rfm", **overrides, **extra))

    def warmup() -> None:
        settings = {"out_dir": str(paths.root), "epochs": config.warmup_epochs, "seed": seed}
        warmup_config = load_config(WarmupConfig, settings | {"eval_clips": config.eval_clips})
        run_warmup(warmup_config, read_features(paths.features("mart")), read_manifest(paths.manifest))

    def grpo() -> None:
        overrides = {"features": paths.features("mart"), "out_dir": paths.grpo, "mllm.model": paths.warmup}
        overrides |= {"steps": config.grpo_steps, "seed": seed, "eval_clips": config.eval_clips}
        run_grpo(_job_config(GRPOConfig, "grpo", **overrides))

    def geotag() -> None:
        manifest = read_manifest(paths.manifest)
        write_manifest(manifest.filter(pc.equal(manifest["split"], "test")), paths.geotag_input)
        overrides = {"input": paths.geotag_input, "out_dir": paths.geotag, "heatmaps": True}
        overrides |= {"geolocator.icsae_model": paths.icsae("mart")}
        overrides |= {f"geolocator.mllm.{key}": value for key, value in mllm.items()}
        overrides |= {"geolocator.mllm.model": paths.grpo_policy, "geolocator.rfm_model": paths.psi_model}
        overrides |= {"geolocator.seed": seed}
        run_geotag(_job_config(GeotagConfig, "geotag", **overrides))

    def evaluate(dictionary: str) -> None:
        overrides = {"features": paths.features(dictionary), "models_dir": paths.models(dictionary)}
        overrides |= {"out_dir": paths.evaluation(dictionary), "seed": seed, "prdc_k": config.prdc_k}
        # The gallery and late-fusion rows read the visual features, the same in both tables.
        gallery = config.gallery_size if dictionary == "mart" else None
        overrides |= {"geoclip_gallery_size": gallery, "late_fusion": dictionary == "mart"}
        run_evaluate(_job_config(EvaluateConfig, "evaluate", **overrides, num_samples=config.eval_samples))

    steps = [Step("synth", synth)]
    steps += [Step(name, partial(pretrain, name)) for name in config.dictionaries]
    steps += [Step(f"embed-{name}", partial(embed, name)) for name in config.dictionaries]
    steps += [
        Step(f"{head}-{kind}", partial(train_head, "mart", f"{head}-{kind}", head, kind))
        for head in config.heads
        for kind in FEATURE_KINDS
    ]
    if config.sae_ablation:
        name = "rfm-atoms-standard-sae"
        steps.append(Step(name, partial(train_head, "sae", name, "rfm", "atoms")))
    steps += [Step("warmup", warmup), Step("grpo", grpo)]
    policies = {"rfm-psi-warmup": paths.warmup} if config.psi_ablation else {}
    for name, policy in (policies | {"rfm-psi-grpo": paths.grpo_policy}).items():
        psi_mllm = {f"mllm.{key}": value for key, value in mllm.items()} | {"mllm.model": policy}
        steps.append(Step(name, partial(train_head, "mart", name, "rfm", "psi", **psi_mllm)))
    steps.append(Step("geotag", geotag))
    steps += [Step(f"evaluate-{name}", partial(evaluate, name)) for name in config.dictionaries]
    return steps


def _job_config(cls: type[C], job: str, **overrides: Any) -> C:
    """`configs/<job>/tiny.yaml` as `cls`, with `overrides` (dotted keys; paths as strings)."""
    source = CONFIGS_DIR / job / "tiny.yaml"
    if not source.is_file():
        raise ConfigError(f"{source}: missing; run avgeo demo from a checkout of the repository")
    plain = {key: str(value) if isinstance(value, Path) else value for key, value in overrides.items()}
    return load_config(cls, source, **plain)


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them. Ray Train's controllers, started per
    job, copy their settings from this process's environment."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
