"""Where the training commands compute: ``--device auto|cpu|cuda|cuda:N`` and the CUDA speed flags.

The project is CPU-first; a GPU is optional. Every training CLI (``train-gan``, ``train-f``,
``train-rignet``, ``make-corpus``) and ``evaluate`` take ``--device``; :func:`resolve_device` turns it
into a ``torch.device``:

* ``auto`` (default): ``cuda`` if ``torch.cuda.is_available()``, else ``cpu``. On a machine without
  a GPU this is exactly the CPU run of before (same code path, same random streams, same results).
* ``cpu``; ``cuda`` (the current GPU); ``cuda:N`` (GPU ``N``).
* Under ``torchrun`` (``WORLD_SIZE`` > 1 and ``LOCAL_RANK`` set), ``auto`` and ``cuda`` mean
  ``cuda:$LOCAL_RANK``: one GPU per process, and the process group uses NCCL for CUDA tensors
  (:func:`stylerig_lite.distributed.backend_for`).

Random numbers keep coming from the trainers' seeded CPU ``torch.Generator`` objects and are moved
to the device (they are small: latents, indices, noise maps), so a run draws the same numbers on any
device and is reproducible across devices up to floating-point differences of the arithmetic.

On the CPU, :func:`keep_freed_memory` stops glibc from handing large freed buffers back to the
operating system: the renderer and the photoreal generator call it once per process.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import re
import sys
from typing import Any, Optional

import torch

__all__ = ["DEVICE_HELP", "add_device_argument", "configure_cuda", "is_cuda", "keep_freed_memory",
           "resolve_device"]

DEVICE_HELP = ("where to compute: auto (cuda if available, else cpu; the default), cpu, cuda or cuda:N; "
               "under torchrun, auto/cuda use cuda:$LOCAL_RANK")

_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def _local_rank() -> Optional[int]:
    """``LOCAL_RANK`` when this process is one of several started by torchrun, else None."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    text = os.environ.get("LOCAL_RANK", "").strip()
    return int(text) if text.isdigit() else None


def resolve_device(spec: Any = "auto") -> torch.device:
    """``torch.device`` for a ``--device`` value (``None`` = ``auto``); a clear ``ValueError`` if unusable.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    match = _PATTERN.match(text)
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N (N = GPU index)")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if kind == "auto":
        if not available:
            return torch.device("cpu")
        kind = "cuda"
    if not available:
        raise ValueError(f"{text} requested but torch.cuda.is_available() is False: no usable GPU (or a CPU-only "
                         f"torch build, {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if index is None:
        local = _local_rank()
        index = local if local is not None else torch.cuda.current_device()
    index = int(index)
    if index >= count:
        raise ValueError(f"cuda:{index} requested but only {count} GPU(s) are visible "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                         f"use cuda:0 .. cuda:{count - 1} or --device cpu")
    return torch.device("cuda", index)


def is_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda"


def configure_cuda(device: Any, tf32: bool = True, benchmark: bool = True) -> None:
    """Select ``device`` as the current GPU and set the speed flags; does nothing for a CPU device.

    ``tf32``: float32 matrix products and convolutions on TensorFloat-32 tensor cores (10-bit
    mantissa inputs, float32 accumulation; the usual choice for GAN training on Ampere and later).
    ``benchmark``: cuDNN picks the fastest convolution algorithm per shape (the shapes are fixed).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return
    if device.index is not None:
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = bool(benchmark)


def add_device_argument(parser: argparse.ArgumentParser, tf32: bool = True) -> None:
    """``--device`` (and ``--no-tf32``) for a training command's parser."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    if tf32:
        parser.add_argument("--no-tf32", dest="tf32", action="store_false",
                            help="on a GPU, keep full float32 matrix products and convolutions (default: TF32)")


# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


@functools.lru_cache(maxsize=None)  # once per process; later calls return the first answer
def keep_freed_memory() -> bool:
    """Let glibc keep freed CPU buffers in its heap for reuse (once per process, Linux/glibc only).

    By default glibc serves a buffer of more than 128 KB with ``mmap`` and unmaps it on free (the
    threshold then grows to the largest such buffer freed, up to 32 MB), so a new intermediate
    tensor pays page faults on its first touch, every time. Measured on the 2-core development
    machine: about 2 ms for a 2.6 MB tensor of the renderer, against 0.1 ms for its arithmetic;
    filling a fresh ``[65536, 128]`` float tensor (33.5 MB, a feature map of the photoreal generator
    at 256 px) took 20 ms, against 2 ms for the same add into memory already touched. Here glibc
    serves no buffer with ``mmap`` (``M_MMAP_MAX = 0``: a threshold alone stops at 32 MB, below the
    generator's largest maps) and returns heap memory only when more than 512 MB is free at its top
    (``M_TRIM_THRESHOLD``). ``python -m stylerig_lite.bench allocator`` times the photoreal generator
    with and without it, in alternating processes (the appendix "How fast is it?", ``book/appendix_performance.md``).

    Process-wide, like ``MALLOC_MMAP_MAX_=0``; no result changes. The cost: memory freed below the
    heap's top stays with the process (its resident size stays near its peak).
    ``STYLERIG_LITE_MALLOC=default`` leaves the allocator alone. Returns whether it was tuned.
    """
    if os.environ.get("STYLERIG_LITE_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 512 << 20), (_M_MMAP_MAX, 0))
        return all([bool(libc.mallopt(option, value)) for option, value in settings])  # a list: set every one
    except (OSError, AttributeError):  # not glibc
        return False
