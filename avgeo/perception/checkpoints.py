"""Where perception checkpoints live on disk, and the seeded `tiny` checkpoints built on first use.

Every model loads through `from_pretrained(name_or_dir)`, which first passes its argument through
`resolve_checkpoint`. The name `tiny` becomes a directory under the cache root that the model's own
`TinyRecipe` builds once (from `TINY_SEED`) and saves, so a tiny model is then read back by exactly the
code that reads a real checkpoint; anything else (a local path, a hub id) passes through unchanged.

The cache root is `$AVGEO_HOME`, or `~/.cache/avgeo` when that is unset. Tiny directories are named by a
hash of their recipe, so changing a tiny architecture builds a new directory instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from avgeo.config import ConfigError, config_to_dict, load_config

TINY = "tiny"
"""The name that resolves to a small, seeded, locally built checkpoint of the same architecture."""

TINY_SEED = 0
"""Seed of torch's global generator while a tiny checkpoint is built."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

C = TypeVar("C")


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the model; the message names the path and the fix."""


def cache_root() -> Path:
    """Root of avgeo's on-disk caches: `$AVGEO_HOME`, else `~/.cache/avgeo`."""
    return Path(os.environ.get("AVGEO_HOME") or Path.home() / ".cache" / "avgeo")


@dataclass(frozen=True)
class TinyRecipe:
    """How one model kind builds its `tiny` checkpoint."""

    kind: str
    """Short model name used in the directory name, e.g. "clap"."""
    spec: dict[str, Any]
    """JSON-serialisable description of the tiny architecture; its hash names the directory."""
    build: Callable[[Path], None]
    """Builds the model (torch's generator is already seeded) and saves it into the given empty directory."""

    def directory(self) -> Path:
        """Where this recipe's checkpoint lives under the current cache root."""
        payload = json.dumps({"spec": self.spec, "seed": TINY_SEED}, sort_keys=True).encode()
        return cache_root() / "checkpoints" / f"{self.kind}-tiny-{hashlib.sha256(payload).hexdigest()[:12]}"


def resolve_checkpoint(name_or_path: str | Path, recipe: TinyRecipe) -> str:
    """`tiny` -> the recipe's local directory (built on first use); any other name or path unchanged."""
    if str(name_or_path) != TINY:
        return str(name_or_path)
    target = recipe.directory()
    if not target.is_dir():
        _build_tiny(recipe, target)
    return str(target)


def _build_tiny(recipe: TinyRecipe, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # fork_rng keeps the caller's random stream untouched by the fixed seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            recipe.build(staging)
        try:
            # Rename is atomic: concurrent builders (e.g. Ray workers) race, one wins, the others
            # find the directory already there; all built the same bytes from the same seed.
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_checkpoint(directory: str | Path, config: Any, state_dict: dict[str, torch.Tensor]) -> None:
    """Write `config.json` (the config dataclass as a dict) and `model.safetensors` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    save_file(
        {key: value.detach().contiguous().cpu() for key, value in state_dict.items()},
        str(directory / WEIGHTS_FILE),
    )


def load_checkpoint(directory: str | Path, config_cls: type[C]) -> tuple[C, dict[str, torch.Tensor]]:
    """Read what `save_checkpoint` wrote: the validated config and the CPU state dict."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(
                f"{directory}: no {name}; pass 'tiny' or a directory written by save_pretrained"
            )
    try:
        config = load_config(config_cls, json.loads((directory / CONFIG_FILE).read_text()))
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc
    return config, load_file(str(directory / WEIGHTS_FILE), device="cpu")


def geoclip_file(relative_path: str) -> Path:
    """A file shipped inside the installed `geoclip` package, e.g. "model/weights/...pth".

    Found without importing geoclip (whose import pulls in pandas and its training code).
    """
    spec = importlib.util.find_spec("geoclip")
    if spec is None or spec.origin is None:
        raise CheckpointError("the geoclip package is not installed; GeoCLIP's weights ship in it")
    path = Path(spec.origin).parent / relative_path
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the installed geoclip package; reinstall geoclip")
    return path
