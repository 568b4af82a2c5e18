"""ψ features: each clip's ψ as the Geolocator computes it, from a feature table, cached as Parquet.

The prediction stage's RFM head and GRPO's R_calib are conditioned on ψ, the MLLM's final hidden state
after its completion (`avgeo.pipeline.ReasoningStage`). To train or score such a head on a feature table,
each embedded row becomes the `Perception` that `PerceptionStage` gives for its clip (the stored frames;
the atoms strongest first, with z·w from the IC-SAE the table names) and `ReasoningStage.reason` runs on
batches of them: ψ here is the Geolocator's ψ by construction. Decoding must be greedy, so that a clip's
ψ does not depend on which clips share its batch.

This module composes the pipeline's stages, so it sits beside `pipeline.py` rather than in `reasoning/`
(a stage never imports a later one).

`cached_psi` writes each table's ψ once, to `<cache_dir>/psi-<key>.parquet`:

| column    | type                          | meaning                                   |
|-----------|-------------------------------|-------------------------------------------|
| `clip_id` | string, never null            | the feature table's clip id               |
| `psi`     | fixed_size_list<float32, H>   | (H,) ψ of the clip's greedy completion    |

The key is a SHA-256 over the MLLM's weights fingerprint, the MLLM settings that shape ψ, and the clips'
inputs (`PSI_INPUT_COLUMNS`), so another MLLM, other settings or re-embedded clips get a file of their own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from avgeo.config import config_to_dict
from avgeo.pipeline import GeolocatorConfig, ReasoningStage
from avgeo.reasoning.mllm import MLLMConfig
from avgeo.reasoning.warmup import mllm_features
from avgeo.stage_outputs import Perception

PSI = "psi"
"""The feature kind of heads conditioned on ψ (`feature_kind: psi` in the rfm job)."""

PSI_INPUT_COLUMNS = ("clip_id", "visual_per_frame", "atoms", "models")
"""Feature-table columns ψ is computed from."""


class PsiError(ValueError):
    """ψ features that cannot be computed or read; the message names the input and the fix."""


def load_reasoning_stage(mllm: MLLMConfig, device: str = "cpu") -> ReasoningStage:
    """The Geolocator's reasoning stage for `mllm`, which must decode greedily (temperature 0)."""
    if mllm.temperature != 0:
        raise PsiError(
            f"mllm.temperature={mllm.temperature}: ψ features come from greedy completions, as the "
            "Geolocator decodes (a sampled completion depends on its batch); set mllm.temperature: 0"
        )
    return ReasoningStage.from_config(GeolocatorConfig(mllm=mllm, device=device))


def table_perceptions(features: pa.Table) -> list[Perception]:
    """The embedded rows of `features` (at least `PSI_INPUT_COLUMNS`) as the `Perception`s that
    `PerceptionStage` gives for their clips, in row order."""
    if features["visual_per_frame"].null_count:
        raise PsiError(
            "the feature table holds rows without features (clips that failed to embed); pass "
            "embedded_rows(table)"
        )
    by_num_frames: dict[int, list[int]] = defaultdict(list)
    frame_counts = features["visual_per_frame"].combine_chunks().value_lengths().to_pylist()
    for row, num_frames in enumerate(frame_counts):
        by_num_frames[num_frames].append(row)
    perceptions: list[Perception | None] = [None] * features.num_rows
    for num_frames, rows in by_num_frames.items():
        group = features.take(rows)
        # num_frames = T keeps every stored frame, as PerceptionStage hands them to the reasoning stage.
        visual, sound_atoms = mllm_features(group, num_frames)
        records = group["atoms"].to_pylist()
        for row, clip_id, clip_visual, clip_atoms, clip_records in zip(
            rows, group["clip_id"].to_pylist(), visual, sound_atoms, records, strict=True
        ):
            vectors = [atom.vector.numpy() for atom in clip_atoms]
            perceptions[row] = Perception(
                clip=clip_id,
                duration_s=math.nan,  # not in the feature table; reasoning does not read it
                visual_per_frame=clip_visual.numpy(),
                atoms=sorted(clip_records, key=lambda atom: -atom["strength"]),
                atom_vectors=np.stack(vectors) if vectors else np.zeros((0, visual.shape[-1]), np.float32),
            )
    return perceptions


def clip_psi(stage: ReasoningStage, features: pa.Table, batch_size: int = 16) -> np.ndarray:
    """(N, H) float32 ψ of each embedded row of `features`, in row order, `batch_size` clips per call."""
    if stage.mllm.config.temperature != 0:
        raise PsiError("ψ features need a greedy reasoning stage; build it with load_reasoning_stage")
    perceptions = table_perceptions(features)
    psi = np.zeros((len(perceptions), stage.psi_dim), dtype=np.float32)
    with tqdm(total=len(perceptions), desc="ψ", unit="clip") as progress:
        for start in range(0, len(perceptions), batch_size):
            batch = perceptions[start : start + batch_size]
            psi[start : start + len(batch)] = [reasoning.psi for reasoning in stage.reason(batch)]
            progress.update(len(batch))
    return psi


def psi_key(stage: ReasoningStage, features: pa.Table) -> str:
    """16 hex digits naming the ψ of `features` under `stage`'s MLLM (see the module docstring)."""
    # The weights' fingerprint, not the checkpoint's name: the same weights anywhere share a file.
    settings = {key: value for key, value in config_to_dict(stage.mllm.config).items() if key != "model"}
    settings["weights"] = stage.models["mllm"].rpartition("@")[2]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    inputs = features.select(list(PSI_INPUT_COLUMNS)).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, inputs.schema) as writer:
        writer.write_table(inputs)
    digest.update(sink.getvalue())
    return digest.hexdigest()[:16]


def cached_psi(
    stage: ReasoningStage, features: pa.Table, cache_dir: str | Path, batch_size: int = 16
) -> Path:
    """The ψ file of `features`' embedded rows under `cache_dir`, computed (`clip_psi`) only if absent."""
    path = Path(cache_dir) / f"psi-{psi_key(stage, features)}.parquet"
    if path.is_file():
        print(f"ψ: {features.num_rows} clips already in {path}")
        return path
    psi = clip_psi(stage, features, batch_size)
    table = pa.table(
        {
            "clip_id": features["clip_id"],
            "psi": pa.FixedSizeListArray.from_arrays(pa.array(psi.reshape(-1)), psi.shape[1]),
        },
        metadata={"mllm": stage.models["mllm"]},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, temp_path)
        os.replace(temp_path, path)
    finally:
        if temp_path.exists():
            temp_path.unlink()
    return path


def read_psi(path: str | Path, clip_ids: Sequence[str]) -> np.ndarray:
    """(N, H) float32 ψ of `clip_ids`, in that order, from a `cached_psi` file."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PsiError(f"{path}: not a readable ψ file ({exc}); delete it and it is computed again") from exc
    row_of = {clip_id: row for row, clip_id in enumerate(table["clip_id"].to_pylist())}
    missing = [clip_id for clip_id in clip_ids if clip_id not in row_of]
    if missing:
        raise PsiError(
            f"{path}: no ψ for clip {missing[0]!r} ({len(missing)} in all); compute it with cached_psi on a "
            "table holding those clips"
        )
    column = table["psi"].combine_chunks()
    psi = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
    return np.ascontiguousarray(psi[[row_of[clip_id] for clip_id in clip_ids]], dtype=np.float32)
