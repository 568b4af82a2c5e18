"""Dataclass configs loaded from YAML or dicts, validated at load.

Every job has one config dataclass. `load_config(JobConfig, "configs/x/tiny.yaml")` builds it and
fails with a `ConfigError` naming the offending key (dotted path) when a key is unknown, missing or of
the wrong type, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict does not match its dataclass; the message names the key and the fix."""


def load_config(cls: type[T], source: str | Path | dict[str, Any] | None = None, **overrides: Any) -> T:
    """Build `cls` from a YAML path or a dict, then apply `overrides` (dotted keys allowed: `train.lr=…`)."""
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        with path.open() as fh:
            raw = yaml.safe_load(fh) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted.split("."), value)
    return _build(cls, raw, prefix="")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain Python types (what `load_config` takes back); paths become strings."""
    return dataclasses.asdict(config, dict_factory=_plain_dict)


def save_config(config: Any, path: str | Path) -> None:
    """Write the config as YAML that `load_config` reads back to an equal object."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _plain_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {
        key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        for key, value in items
    }


def _set_dotted(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _build(cls: type[T], raw: dict[str, Any], prefix: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required config key {key} for {cls.__name__}")
            continue
        kwargs[name] = _coerce(hints[name], raw[name], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads exponents without a dot (`lr: 1e-4`) as strings; accept them as numbers.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got str {value!r}") from None
    if hint is Path and isinstance(value, str):
        return Path(value)
    if isinstance(hint, type):
        if hint is int and isinstance(value, bool):
            raise ConfigError(f"{key}: expected int, got bool {value!r}")
        if not isinstance(value, hint):
            raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
