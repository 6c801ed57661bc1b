"""Input checks with messages that say what was expected and how to fix it.

Modelled on ``torch_utils.misc.assert_shape`` from NVlabs' stylegan2-ada-pytorch:
``None`` in the expected shape matches any size. Every public entry point of
the package validates its inputs with these helpers so that bad input fails
loudly instead of producing a silently wrong picture.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "assert_finite",
    "assert_shape",
]


def assert_shape(tensor: torch.Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Raise ``ValueError`` unless ``tensor.shape`` matches ``shape`` (``None`` = any)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != len(shape):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} ({tensor.ndim} dims); expected "
            f"{_fmt(shape)} ({len(shape)} dims)"
        )
    for dim, (size, want) in enumerate(zip(tensor.shape, shape)):
        if want is not None and size != want:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}; expected {_fmt(shape)} "
                f"(dimension {dim} is {size}, must be {want})"
            )


def assert_finite(tensor: torch.Tensor, name: str = "tensor") -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinity."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); check the inputs that produced it")


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
