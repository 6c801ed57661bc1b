"""Presets: the one idiom every configurable piece uses.

Floor: base. Each module with a config dataclass defines ``PRESETS`` (name ->
the values that differ from the dataclass defaults, or a whole config) and
``get_config(name, **overrides)``, which calls :func:`config_from_preset`::

    stylegan2.get_config("cpu64", z_dim=128)       # the generator
    train_f.get_config("tiny", steps=10)           # F's training loop
    train_rignet.get_config("cpu", batch=4)        # RigNet's training loop

``None`` overrides are ignored, so a command-line option left out keeps the
preset's value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Type, TypeVar

__all__ = ["config_from_preset"]

ConfigT = TypeVar("ConfigT")


def config_from_preset(cls: Type[ConfigT], presets: Mapping[str, Any], name: str,
                       overrides: Mapping[str, Any], what: str = "", *, drop_none: bool = True) -> ConfigT:
    """``cls`` built from ``presets[name]`` with ``overrides`` on top.

    A preset is a dict of field values or an instance of ``cls``. Unknown preset
    names and unknown fields raise ``ValueError`` naming the valid choices.
    ``drop_none``: ignore ``None`` overrides (an option not given on the command
    line); ``False`` for configs where ``None`` is a meaningful value.
    """
    label = f"{what} preset" if what else "preset"
    if name not in presets:
        raise ValueError(f"unknown {label} {name!r}; expected one of {sorted(presets)}")
    base = presets[name]
    given = {k: v for k, v in overrides.items() if v is not None or not drop_none}
    fields = {f.name for f in dataclasses.fields(cls)}
    values = given if dataclasses.is_dataclass(base) else {**dict(base), **given}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown {what + ' ' if what else ''}options {sorted(unknown)}; expected some of {sorted(fields)}")
    if dataclasses.is_dataclass(base):
        return dataclasses.replace(base, **values)
    return cls(**values)
