"""The MART job's data factory on Ray Data: synthetic mixtures rendered, mixed and CLAP-encoded into a
Parquet cache that the training workers read (`avgeo.distributed.mart`).

Mixture i is a pure function of (factory seed, i): `plan_mixture` and `render_mixture`
(`avgeo.perception.mart`) draw from `np.random.default_rng([seed, i])`, so the rows do not depend on
batching or worker counts. Ids below `num_train` are the training split, the next `num_heldout` the
held-out split. The Parquet files go to `<cache_dir>/mixtures-<hash>/`, the hash being that of everything
that decides the rows (`FactoryConfig.cache_key`); a second run with the same factory config reads them
back. They are written into a hidden staging folder renamed into place at the end, with `factory.json`
last, so an interrupted factory leaves nothing that looks complete.

(When both stages ask for the same resources, as in the tiny config, Ray Data fuses the render into the
encoder actors; on a cluster the render runs on CPU nodes and the encoders hold GPUs.)
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from avgeo.config import ConfigError, config_to_dict
from avgeo.data.audioset import class_by_mid
from avgeo.data.soundbank import SoundBank
from avgeo.distributed.data_stages import StageResources, actor_pool_options, stage_device
from avgeo.perception.mart import (
    PAD_CLASS,
    MixtureBatch,
    MixtureRecipe,
    plan_mixture,
    render_mixture,
)

if TYPE_CHECKING:
    from avgeo.distributed.mart import MartConfig

FACTORY_FILE = "factory.json"
"""Written last into a cache folder: the factory config, row counts and how long it took."""


def mixture_schema(dim: int) -> pa.Schema:
    """The data factory's Parquet rows, one per mixture, with `dim`-wide encoder projections."""
    projection = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            pa.field("mixture_id", pa.int64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),  # "train" or "heldout"
            pa.field("class_mids", pa.list_(pa.string())),  # (K,) AudioSet mids, loudest first
            pa.field("gains", pa.list_(pa.float64())),  # (K,) amplitude gains, strictly decreasing
            pa.field("onsets_s", pa.list_(pa.float64())),  # (K,) start of each source in the mixture
            pa.field("duration_s", pa.float64()),
            pa.field("mixture_projection", projection),  # (dim,) encoder projection of the mixture
            pa.field("source_projections", pa.list_(projection)),  # (K, dim) of each scaled source
        ]
    )


@dataclass
class FactoryConfig:
    """The data factory: which sounds and encoder, how many mixtures, how they are drawn, its resources."""

    sound_bank: str = "procedural"
    """"procedural" (the built-in generators) or a folder of AudioSet clips (with `labels_csv`)."""
    labels_csv: str = ""
    """For a folder bank: its labels CSV (format: `avgeo.data.soundbank.folder`)."""
    encoder: str = "tiny"
    """The frozen CLAP audio encoder: `AudioEncoder.from_pretrained` name, directory or .pt checkpoint."""
    sample_rate_hz: int = 48000
    """Render rate, Hz; must be the encoder's (48 kHz for CLAP)."""
    num_train: int = 2000
    """Training mixtures."""
    num_heldout: int = 200
    """Held-out mixtures, scored for decomposition accuracy."""
    seed: int = 0
    """Mixture i draws from `np.random.default_rng([seed, i])`."""
    mixtures: MixtureRecipe = field(default_factory=MixtureRecipe)
    """How each mixture is drawn."""
    render_stage: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
    """Render-and-mix tasks (`pool_size`: tasks at once)."""
    encode_stage: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
    """Encoder actor pool; `num_gpus` > 0 runs the encoder on CUDA."""
    torch_threads: int = 1
    """torch threads per encoder actor."""

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_heldout < 1:
            raise ConfigError(
                f"factory.num_train {self.num_train} and factory.num_heldout {self.num_heldout} must be >= 1"
            )
        if self.sound_bank != "procedural" and not self.labels_csv:
            raise ConfigError(
                f"factory.sound_bank {self.sound_bank!r} is a folder: set factory.labels_csv to its labels"
            )
        if self.torch_threads < 1:
            raise ConfigError(f"factory.torch_threads must be >= 1, got {self.torch_threads}")

    def cache_key(self) -> str:
        """12 hex digits naming the cache folder: a hash of every setting that decides the rows."""
        deciding = {
            key: value
            for key, value in config_to_dict(self).items()
            if key not in ("render_stage", "encode_stage", "torch_threads")
        }
        return hashlib.sha256(json.dumps(deciding, sort_keys=True).encode()).hexdigest()[:12]

    def bank(self) -> SoundBank:
        """The sound bank the mixtures draw from."""
        if self.sound_bank == "procedural":
            return SoundBank.procedural(self.sample_rate_hz)
        return SoundBank.from_folder(self.sound_bank, self.labels_csv, self.sample_rate_hz)


def build_factory(config: MartConfig) -> tuple[Path, float | None]:
    """The factory's cache folder, built unless it exists; with the seconds the build took (None: reused)."""
    import ray.data

    target = config.factory_dir()
    if (target / FACTORY_FILE).is_file():
        return target, None
    start_s = time.perf_counter()
    factory = config.factory
    staging = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
    total = factory.num_train + factory.num_heldout
    render, encode = factory.render_stage, factory.encode_stage
    dataset = ray.data.range(total, override_num_blocks=math.ceil(total / render.batch_size))
    dataset = dataset.map_batches(
        render_batch,
        fn_kwargs={"factory": factory},
        batch_format="pyarrow",
        batch_size=render.batch_size,
        num_cpus=render.num_cpus,
        compute=ray.data.TaskPoolStrategy(size=render.pool_size),
    )
    dataset = dataset.map_batches(
        EncodeStage, fn_constructor_kwargs={"factory": factory}, **actor_pool_options(encode)
    )
    try:
        dataset.write_parquet(str(staging))
        about = {
            "factory": config_to_dict(factory),
            "rows": total,
            "build_s": time.perf_counter() - start_s,
        }
        (staging / FACTORY_FILE).write_text(json.dumps(about, indent=2) + "\n")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, time.perf_counter() - start_s


def render_batch(ids: pa.Table, factory: FactoryConfig) -> pa.Table:
    """Render stage: mixture ids -> each mixture's plan and waveforms.

    The waveforms travel as raw float32 bytes: row 0 the mixture, rows 1..K the scaled sources, each
    `num_samples` long (Arrow has no ragged 2-D arrays; the encoder stage drops them).
    """
    bank = factory.bank()
    class_mids = [audioset_class.mid for audioset_class in bank.classes]
    rows: dict[str, list[Any]] = {
        "mixture_id": [], "split": [], "class_mids": [], "gains": [], "onsets_s": [], "duration_s": [],
        "num_samples": [], "audio": [],
    }  # fmt: skip
    for mixture_id in ids["id"].to_pylist():
        rng = np.random.default_rng([factory.seed, mixture_id])
        plan = plan_mixture(factory.mixtures, class_mids, bank.sample_rate, rng)
        mixture, sources = render_mixture(plan, bank, rng)
        rows["mixture_id"].append(mixture_id)
        rows["split"].append("train" if mixture_id < factory.num_train else "heldout")
        rows["class_mids"].append(list(plan.class_mids))
        rows["gains"].append(plan.gains.tolist())
        rows["onsets_s"].append((plan.onsets / bank.sample_rate).tolist())
        rows["duration_s"].append(plan.num_samples / bank.sample_rate)
        rows["num_samples"].append(plan.num_samples)
        rows["audio"].append(np.concatenate([mixture[None], sources]).tobytes())
    return pa.table(rows)


class EncodeStage:
    """Encoder actor: rendered waveforms -> projections of each mixture and of each scaled source."""

    def __init__(self, factory: FactoryConfig) -> None:
        from avgeo.perception.audio import AudioEncoder

        torch.set_num_threads(factory.torch_threads)
        device = stage_device(factory.encode_stage)
        self.encoder = AudioEncoder.from_pretrained(factory.encoder).to(device)
        if self.encoder.sample_rate_hz != factory.sample_rate_hz:
            raise ConfigError(
                f"factory.sample_rate_hz {factory.sample_rate_hz}: the encoder {factory.encoder!r} takes "
                f"{self.encoder.sample_rate_hz} Hz audio; set factory.sample_rate_hz to that"
            )
        self.max_samples = self.encoder.window_samples

    def __call__(self, batch: pa.Table) -> pa.Table:
        waveforms = [
            np.frombuffer(audio, np.float32).reshape(-1, num_samples)
            for audio, num_samples in zip(
                batch["audio"].to_pylist(), batch["num_samples"].to_pylist(), strict=True
            )
        ]
        if max(w.shape[1] for w in waveforms) > self.max_samples:
            raise ConfigError(
                f"factory.mixtures.max_duration_s exceeds the encoder's {self.encoder.window_s:g} s window; "
                "one embedding must cover a whole mixture"
            )
        # Zero-padded to one window, as the encoder pads, so one forward pass takes every waveform.
        padded = np.zeros((sum(len(w) for w in waveforms), self.max_samples), np.float32)
        first_rows = np.cumsum([0] + [len(w) for w in waveforms[:-1]])  # each mixture's row in `padded`
        for first, waveform in zip(first_rows, waveforms, strict=True):
            padded[first : first + len(waveform), : waveform.shape[1]] = waveform
        projections = self.encoder.embed(torch.from_numpy(padded)).projection[:, 0].float().cpu().numpy()
        dim = projections.shape[1]
        sources = [
            projections[first + 1 : first + len(w)] for first, w in zip(first_rows, waveforms, strict=True)
        ]
        columns = {
            name: batch[name]
            for name in ("mixture_id", "split", "class_mids", "gains", "onsets_s", "duration_s")
        }
        columns["mixture_projection"] = pa.FixedSizeListArray.from_arrays(
            pa.array(projections[first_rows].ravel()), dim
        )
        columns["source_projections"] = pa.array(
            [list(source) for source in sources], type=pa.list_(pa.list_(pa.float32(), dim))
        )
        return pa.table(columns, schema=mixture_schema(dim))


def read_mixtures(factory_dir: Path, split: str, max_sources: int) -> MixtureBatch:
    """The cached rows of `split` ("train" or "heldout") as one batch, in mixture-id order."""
    files = sorted(str(path) for path in factory_dir.glob("*.parquet"))
    table = pq.read_table(files, filters=pc.field("split") == split) if files else pa.table({})
    if table.num_rows == 0:
        raise ConfigError(f"{factory_dir}: no {split!r} mixtures; delete the folder to rebuild the factory")
    table = table.sort_by("mixture_id")
    dim = table.schema.field("mixture_projection").type.list_size
    mixtures = table["mixture_projection"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    targets = np.zeros((table.num_rows, max_sources, dim), np.float32)
    classes = np.full((table.num_rows, max_sources), PAD_CLASS, np.int64)
    rows = zip(table["class_mids"].to_pylist(), table["source_projections"].to_numpy(), strict=True)
    for row, (mids, sources) in enumerate(rows):
        classes[row, : len(mids)] = [class_by_mid(mid).index for mid in mids]
        targets[row, : len(mids)] = np.stack(sources)
    return MixtureBatch(
        torch.from_numpy(mixtures.copy()), torch.from_numpy(targets), torch.from_numpy(classes)
    )
