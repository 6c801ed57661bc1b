"""Small shared pieces of the training CLIs: atomic saving and preset-based configs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Type, TypeVar, Union

import torch

ConfigT = TypeVar("ConfigT")


def atomic_torch_save(data: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def config_from_preset(cls: Type[ConfigT], presets: Mapping[str, Dict[str, Any]], preset: str, overrides: Mapping[str, Any]) -> ConfigT:
    """``cls(**{**presets[preset], **overrides})``; ``None`` overrides are ignored (an option not given)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(presets)}")
    values = {**presets[preset], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}")
    return cls(**values)
