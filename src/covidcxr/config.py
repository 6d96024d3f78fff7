"""Typed configs loaded from YAML with ``key=value`` command-line overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

#: The shipped training recipes, the one configs folder: inside the package, so a fresh install finds
#: them; ``--config configs/NAME.yaml`` finds them by name from any folder (:func:`recipe_path`).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
#: ``covidcxr train <task>`` without ``--config`` reads ``CONFIGS_DIR / DEFAULT_CONFIGS[task]``.
DEFAULT_CONFIGS = {
    "segmentation": "segmentation.yaml",
    "diagnosis": "diagnosis.yaml",
    "severity": "severity.yaml",
}


def default_config_path(task: str) -> Path:
    """The shipped recipe of a training task (``segmentation``, ``diagnosis``, ``severity``)."""
    if task not in DEFAULT_CONFIGS:
        raise KeyError(f"no shipped config for {task!r}; known: {', '.join(DEFAULT_CONFIGS)}")
    return CONFIGS_DIR / DEFAULT_CONFIGS[task]


def config_hash(config: Any) -> str:
    """sha256 of a config (a dataclass or a dict) written as JSON with sorted keys (tuples as lists)."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _coerce(value: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null", "") and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
        origin = typing.get_origin(typ)
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if typ in (int, float, str):
        return typ(value)
    if origin in (tuple, list):
        parsed = yaml.safe_load(value)
        return tuple(parsed) if origin is tuple else list(parsed)
    return yaml.safe_load(value)


def recipe_path(path: str | Path) -> Path:
    """A config file as given, else the shipped recipe of that file name (``configs/severity.yaml``
    finds the package's copy from any working directory).

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped recipes.
    """
    path = Path(path)
    if path.is_file():
        return path
    if (CONFIGS_DIR / path.name).is_file():
        return CONFIGS_DIR / path.name
    shipped = ", ".join(sorted(p.name for p in CONFIGS_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"{path}: config file not found (shipped recipes, usable by name: {shipped})")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build a config dataclass from defaults, then a YAML file, then ``key=value`` overrides.

    Raises:
        ValueError: unknown keys or values of the wrong type, named in the message.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if path is not None:
        path = recipe_path(path)
        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
        for key, val in data.items():
            values[key] = tuple(val) if isinstance(val, list) and typing.get_origin(hints[key]) is tuple else val
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; known: {sorted(fields)}")
        try:
            values[key] = _coerce(raw, hints[key])
        except (ValueError, StopIteration, yaml.YAMLError) as err:
            raise ValueError(f"config key {key}: cannot read {raw!r} ({err})") from None
    return cls(**values)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
