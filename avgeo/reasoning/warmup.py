"""Supervised warm-up of the MLLM on reasoning traces from avg-synth's ground truth, before GRPO.

A tiny random LLaVA never writes a parseable response, so GRPO would only ever see the parse-failure
penalty. The warm-up teaches it the response format, and a first link from clip to place, by teacher
forcing on `avgeo.reasoning.traces.target_response` of each training clip: the loss is the mean token
cross-entropy of the target completion given the clip's prompt (frames and atoms as soft tokens, atoms
also as text), the prompt itself masked out, computed with `GeoMLLM.sequence_logprobs`. Real checkpoints
(LLaVA-1.5-7B) already follow instructions and skip it.

    features (train split) + manifest stories -> prompts + target responses -> AdamW, `epochs` passes
    -> <out_dir>/mllm-warmup/  (GeoMLLM.save_pretrained, plus warmup.yaml and metrics.jsonl)

Progress is measured by the greedy parse rate: the share of held-out clips (`eval_split`) whose greedy
completion `parse_response` reads, and the align rate, the share whose trace names a place that holds its
answer (R_align = 1). Both are logged before training, every `eval_every_steps` and at the end.

Resume: the model directory is written whole (a hidden `.partial` folder renamed when complete). A
re-run finds it and returns at once if it was trained with the same config and data (`warmup.yaml`),
and refuses it otherwise; an interrupted run left only the partial folder, which the next run replaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from tqdm import tqdm

from avgeo.config import ConfigError, config_to_dict
from avgeo.data.features import VISUAL_DIM, embedded_rows
from avgeo.geo.gazetteer import Gazetteer
from avgeo.perception.embedder import weights_fingerprint
from avgeo.perception.icsae import ICSAE
from avgeo.reasoning.answer import parse_response
from avgeo.reasoning.mllm import GeoMLLM, MLLMConfig
from avgeo.reasoning.prompt import SoundAtom
from avgeo.reasoning.rewards import r_align
from avgeo.reasoning.traces import target_response
from avgeo.runlog import MetricsLog

WARMUP_DIR = "mllm-warmup"
"""Folder under `out_dir` that holds the warmed-up model (the GRPO job's starting checkpoint)."""

RECORD_FILE = "warmup.yaml"
"""Config and data fingerprint the model in `WARMUP_DIR` was trained with; a re-run must match it."""

METRICS_FILE = "metrics.jsonl"
"""JSON lines in `WARMUP_DIR`: {step, epoch, loss} per step; {step, parse_rate, align_rate} per eval."""

# Settings that change where the model is stored, how fast it trains or what is measured on the way,
# not the weights it ends with: a re-run may change them.
_NOT_IN_WEIGHTS = (
    "out_dir",
    "torch_threads",
    "eval_split",
    "eval_clips",
    "eval_every_steps",
    "max_new_tokens",
)

_ZERO_MEANS = {
    "max_clips": "all clips",
    "max_atoms": "no atoms",
    "lr_warmup_steps": "start at the peak rate",
    "eval_clips": "no evaluation",
    "eval_every_steps": "before and after training only",
}


class WarmupError(ValueError):
    """Features or manifest that the warm-up cannot train on; the message names the input and the fix."""


@dataclass
class WarmupConfig:
    """The supervised warm-up: which model, which clips, how long, and where the result goes."""

    model: str = "tiny"
    """Starting LLaVA: `tiny`, a local directory or a hub id (GeoMLLM.from_pretrained)."""
    out_dir: Path = Path("out")
    """The warmed-up model goes to `<out_dir>/mllm-warmup/`."""
    split: str = "train"
    """Clips of this split (that embedded without error) are trained on."""
    max_clips: int = 0
    """Most training clips, a seeded random subset of the split; 0 takes them all."""
    epochs: int = 3
    """Passes over the training clips."""
    batch_size: int = 8
    """Clips per optimizer step."""
    learning_rate: float = 4e-3
    """Peak AdamW learning rate; 4e-3 suits the tiny model, lower it for large ones."""
    lr_warmup_steps: int = 10
    """Steps over which the learning rate rises linearly from 0 to its peak; it then falls linearly to 0
    at the last step (constant rates leave the tiny model's greedy output flipping between formats)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    seed: int = 0
    """Seed of the clip subset, the shuffling and the traces' wording."""
    num_frames: int = 8
    """Most `<frame>` soft tokens per prompt (MLLMConfig.num_frames)."""
    max_atoms: int = 8
    """Most atoms per prompt, strongest first (MLLMConfig.max_atoms)."""
    eval_split: str = "val"
    """Held-out clips whose greedy completions measure the parse and align rates."""
    eval_clips: int = 16
    """Most held-out clips evaluated (a seeded random subset of the split); 0 turns evaluation off."""
    eval_every_steps: int = 0
    """Evaluate every this many steps too; 0 evaluates only before and after training."""
    max_new_tokens: int = 96
    """Most tokens of an evaluation completion; targets are 40 to 80 tokens with the tiny tokenizer."""
    torch_threads: int = 1
    """torch threads while training: the tiny model runs fastest with 1 on shared cores."""

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "torch_threads": self.torch_threads}
        positive |= {"num_frames": self.num_frames, "max_new_tokens": self.max_new_tokens}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}={value}: expected an int >= 1")
        at_least_zero = {"max_clips": self.max_clips, "max_atoms": self.max_atoms}
        at_least_zero |= {"lr_warmup_steps": self.lr_warmup_steps}
        at_least_zero |= {"eval_clips": self.eval_clips, "eval_every_steps": self.eval_every_steps}
        for name, value in at_least_zero.items():
            if value < 0:
                raise ConfigError(f"{name}={value}: expected an int >= 0 (0 = {_ZERO_MEANS[name]})")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ConfigError("learning_rate and max_grad_norm must be > 0 and weight_decay >= 0")


def run_warmup(config: WarmupConfig, features_table: pa.Table, manifest: pa.Table) -> Path:
    """Warm the MLLM up on `features_table`'s clips (`read_features`) with targets written from
    `manifest`'s stories (`read_manifest` of an avg-synth build); returns `<out_dir>/mllm-warmup/`."""
    config = dataclasses.replace(config)  # re-validate: callers may have set fields after building it
    out_dir = Path(config.out_dir) / WARMUP_DIR
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        gazetteer = Gazetteer.load()
        train = _clips(features_table, manifest, config.split, config.max_clips, config)
        targets = [target_response(story, gazetteer, config.seed) for story in train.stories]
        record = _record(config, train.clip_ids, targets, train.models)
        if _finished(out_dir, record):
            print(f"warm-up: {out_dir} was trained with this config and data; nothing to do")
            return out_dir
        held_out = (
            _clips(features_table, manifest, config.eval_split, config.eval_clips, config)
            if config.eval_clips
            else None
        )
        return _train(config, out_dir, record, train, targets, held_out, gazetteer)
    finally:
        torch.set_num_threads(threads)


def mllm_features(features_table: pa.Table, num_frames: int) -> tuple[torch.Tensor, list[list[SoundAtom]]]:
    """The MLLM's inputs of N embedded clips: (N, num_frames, 512) frame features (subsampled evenly,
    or repeated for shorter clips) and each clip's atoms over all its windows, strongest first.

    Atom vectors z·w come from the IC-SAE dictionary named in the table's `models.icsae`, which must
    load with the fingerprint recorded there.
    """
    if features_table.num_rows == 0:
        return torch.zeros(0, num_frames, VISUAL_DIM), []
    frames = features_table["visual_per_frame"].combine_chunks()
    offsets = frames.offsets.to_numpy()
    flat = frames.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, VISUAL_DIM)
    visual = []
    for start, end in zip(offsets[:-1] - offsets[0], offsets[1:] - offsets[0], strict=True):
        picked = np.linspace(start, end - 1, num_frames).round().astype(int)
        visual.append(flat[picked])
    dictionary = _atom_dictionary(features_table)
    atoms = [
        [
            SoundAtom(atom["class_name"], atom["strength"], atom["strength"] * dictionary[:, atom["kernel"]])
            for atom in sorted(clip_atoms, key=lambda atom: -atom["strength"])
        ]
        for clip_atoms in features_table["atoms"].to_pylist()
    ]
    return torch.from_numpy(np.stack(visual)), atoms


@dataclass(frozen=True)
class _Clips:
    """Embedded clips of one split, in a fixed order, with their stories."""

    clip_ids: list[str]
    """Sorted."""
    visual: torch.Tensor
    """(N, T, 512) frame features."""
    atoms: list[list[SoundAtom]]
    """Each clip's atoms, strongest first."""
    stories: list[dict]
    """The manifest rows."""
    models: list[str]
    """The distinct `models` entries of the clips' feature rows, as JSON."""


def _clips(
    features_table: pa.Table, manifest: pa.Table, split: str, max_clips: int, config: WarmupConfig
) -> _Clips:
    """The embedded clips of `split`, a seeded random `max_clips` of them (0: all), in clip_id order."""
    rows = embedded_rows(features_table.filter(pc.equal(features_table["split"], split)))
    rows = rows.take(pc.sort_indices(rows, [("clip_id", "ascending")]))
    if max_clips and rows.num_rows > max_clips:
        chosen = np.random.default_rng(config.seed).choice(rows.num_rows, max_clips, replace=False)
        rows = rows.take(np.sort(chosen))
    clip_ids = rows["clip_id"].to_pylist()
    stories_by_id = {story["clip_id"]: story for story in manifest.to_pylist()}
    missing = [clip_id for clip_id in clip_ids if clip_id not in stories_by_id]
    if missing:
        raise WarmupError(
            f"clip {missing[0]!r} ({len(missing)} in all) of the feature table is not in the manifest; pass "
            "the manifest the features were embedded from"
        )
    models = sorted({json.dumps(entry, sort_keys=True) for entry in rows["models"].to_pylist()})
    visual, atoms = mllm_features(rows, config.num_frames)
    return _Clips(clip_ids, visual, atoms, [stories_by_id[clip_id] for clip_id in clip_ids], models)


def _atom_dictionary(features_table: pa.Table) -> torch.Tensor:
    """(D, N) the dictionary of the IC-SAE that the table's atoms come from, checked by fingerprint."""
    named = set(pc.struct_field(features_table["models"], "icsae").to_pylist())
    if len(named) != 1:
        raise WarmupError(
            f"the feature table mixes atoms of IC-SAEs {sorted(named)}; embed every clip with one IC-SAE"
        )
    name, _, fingerprint = named.pop().rpartition("@")
    icsae = ICSAE.from_pretrained(name)
    if weights_fingerprint(icsae) != fingerprint:
        raise WarmupError(
            f"the atoms were extracted by IC-SAE {name}@{fingerprint}, but {name} now loads as "
            f"{name}@{weights_fingerprint(icsae)}; re-embed the clips, or restore that checkpoint"
        )
    return icsae.dictionary.detach()


def _record(config: WarmupConfig, clip_ids: list[str], targets: list[str], models: list[str]) -> dict:
    """What `RECORD_FILE` holds: the settings that shape the weights and a hash of the training data."""
    data = json.dumps({"clip_ids": clip_ids, "targets": targets, "models": models}).encode()
    settings = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_IN_WEIGHTS}
    record = {"config": settings, "data_sha256": hashlib.sha256(data).hexdigest()}
    # Through YAML and back, so the record compares equal to the one read from disk.
    return yaml.safe_load(yaml.safe_dump(record))


def _finished(out_dir: Path, record: dict) -> bool:
    """Whether `out_dir` holds a warm-up with this record; raises ConfigError if it holds anything else."""
    if not out_dir.exists():
        return False
    record_path = out_dir / RECORD_FILE
    if not record_path.is_file():
        raise ConfigError(
            f"{out_dir} exists without {RECORD_FILE}, so run_warmup did not write it; use another out_dir"
        )
    previous = yaml.safe_load(record_path.read_text())
    if previous == record:
        return True
    old, new = previous["config"], record["config"]
    differ = [key for key in {**old, **new} if old.get(key) != new.get(key)]
    if previous["data_sha256"] != record["data_sha256"]:
        differ.append("training data")
    raise ConfigError(
        f"{out_dir} holds a warm-up with another {', '.join(differ)}; use another out_dir, or delete that "
        "folder to train again"
    )


def _train(
    config: WarmupConfig,
    out_dir: Path,
    record: dict,
    train: _Clips,
    targets: list[str],
    held_out: _Clips | None,
    gazetteer: Gazetteer,
) -> Path:
    """Train from `config.model`, evaluating on `held_out`, and move the result to `out_dir`."""
    if not train.clip_ids:
        raise WarmupError(
            f"no embedded clips of split {config.split!r} in the feature table; set split to one it holds"
        )
    mllm_config = MLLMConfig(
        model=config.model,
        max_new_tokens=config.max_new_tokens,
        temperature=0.0,  # greedy evaluation; log-probabilities are then those of softmax(logits)
        num_frames=config.num_frames,
        max_atoms=config.max_atoms,
    )
    model = GeoMLLM.from_pretrained(config.model, mllm_config)
    completion_ids = [model.tokenizer(target, add_special_tokens=False).input_ids for target in targets]
    partial_dir = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    metrics = MetricsLog(partial_dir / METRICS_FILE)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    total_steps = config.epochs * -(-len(train.clip_ids) // config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config.lr_warmup_steps, total_steps))
    progress = tqdm(total=total_steps, desc="warm-up", unit="step")
    started = time.perf_counter()
    first_eval = _evaluate(model, held_out, gazetteer, metrics, step=0)
    losses, step = [], 0
    for epoch in range(config.epochs):
        for batch in torch.randperm(len(train.clip_ids), generator=generator).split(config.batch_size):
            model.train()
            loss = _completion_loss(model, train, batch.tolist(), completion_ids)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            metrics.write(step=step, epoch=epoch, loss=losses[-1])
            progress.update()
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
            if config.eval_every_steps and step % config.eval_every_steps == 0:
                _evaluate(model, held_out, gazetteer, metrics, step)
    progress.close()
    last_eval = _evaluate(model, held_out, gazetteer, metrics, step)
    wall_s = time.perf_counter() - started
    model.save_pretrained(partial_dir)
    (partial_dir / RECORD_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
    partial_dir.rename(out_dir)
    rates = (
        f"; greedy parse rate {first_eval[0]:.0%} -> {last_eval[0]:.0%}, align rate {first_eval[1]:.0%} -> "
        f"{last_eval[1]:.0%} on {len(held_out.clip_ids)} {config.eval_split} clips"
        if held_out is not None and held_out.clip_ids
        else ""
    )
    print(
        f"warm-up: {len(train.clip_ids)} clips, {config.epochs} epochs ({step} steps) in {wall_s:.1f} s; "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}{rates} -> {out_dir}"
    )
    return out_dir


def _lr_factor(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier at each step: linear rise over `warmup_steps`, then linear fall to 0."""

    def factor(step: int) -> float:
        rise = (step + 1) / max(warmup_steps, 1)
        fall = (total_steps - step) / max(total_steps - warmup_steps, 1)
        return min(rise, fall)

    return factor


def _completion_loss(
    model: GeoMLLM, clips: _Clips, rows: list[int], completion_ids: list[list[int]]
) -> torch.Tensor:
    """Mean token cross-entropy of the rows' target completions given their prompts (teacher forced)."""
    inputs = model.build_inputs(clips.visual[rows], [clips.atoms[row] for row in rows])
    length = max(len(completion_ids[row]) for row in rows)
    ids = torch.full((len(rows), length), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(completion_ids[row])] = torch.tensor(completion_ids[row])
        mask[i, : len(completion_ids[row])] = 1
    logprobs = model.sequence_logprobs(inputs, ids, mask)
    return -logprobs.sum() / mask.sum()


@torch.no_grad()
def _evaluate(
    model: GeoMLLM, clips: _Clips | None, gazetteer: Gazetteer, metrics: MetricsLog, step: int
) -> tuple[float, float]:
    """(parse rate, align rate) of greedy completions on `clips`, logged; (nan, nan) without clips."""
    if clips is None or not clips.clip_ids:
        return float("nan"), float("nan")
    model.eval()
    generation = model.generate(model.build_inputs(clips.visual, clips.atoms))
    responses = [parse_response(text) for text in generation.texts]
    answers = np.array([r.latlon_deg if r.ok else (np.nan, np.nan) for r in responses]).reshape(-1, 2)
    parse_rate = float(np.mean([r.ok for r in responses]))
    align_rate = float(r_align([r.trace for r in responses], answers, gazetteer).mean())
    metrics.write(step=step, parse_rate=parse_rate, align_rate=align_rate)
    return parse_rate, align_rate
