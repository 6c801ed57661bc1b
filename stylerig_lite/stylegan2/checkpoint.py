"""StyleGAN2 checkpoints in our own format: ``torch.save`` of plain dicts, read back with ``weights_only=True``.

A checkpoint (:func:`save_checkpoint`) holds ``G``, ``D``, ``G_ema``, the optimizer states, the
progress counters, training state in ``extra`` and the generator's
:class:`~stylerig_lite.stylegan2.networks.StyleGAN2Config`, so :func:`load_generator` /
:func:`load_discriminator` rebuild the networks from the file alone. Files are written atomically
(:func:`~stylerig_lite.io_utils.atomic_torch_save`) with CPU tensors only; ``compact=True`` stores
weights in float16 and Adam moments in bfloat16. :func:`save_generator_only` writes the small
``G_ema``-only file that one samples and rigs (the embedded FaceWorld generator is one).

A slim resume checkpoint may store its ``G_ema`` *by reference* (``extra[EMA_REFERENCE_KEY]``: the
name and sha256 of a generator-only file with the same weights); :func:`resolve_ema_reference`
finds that file beside the checkpoint or in the folders its caller names (this module knows
nothing of the package's embedded weights: :mod:`stylerig_lite.pretrained` and
:mod:`stylerig_lite.train_gan` pass their folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..io_utils import CheckpointError, atomic_torch_save, load_checkpoint_file, sha256_file, to_cpu
from .networks import Discriminator, Generator, StyleGAN2Config

__all__ = [
    "CHECKPOINT_KIND",
    "CHECKPOINT_VERSION",
    "EMA_REFERENCE_KEY",
    "save_checkpoint",
    "save_generator_only",
    "load_checkpoint",
    "load_generator",
    "load_discriminator",
    "resolve_ema_reference",
]


# ----------------------------------------------------------------------------------------------
# Checkpoints (our own format): torch.save of plain dicts, loadable with weights_only=True.

CHECKPOINT_KIND = "stylerig_lite.stylegan2"
CHECKPOINT_VERSION = 1


def _state_dict_of(obj: Any) -> dict | None:
    if obj is None:
        return None
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"expected a module, an optimizer or a state dict, got {type(obj).__name__}")


def _cast_floats(obj: Any, dtype: torch.dtype, min_ndim: int = 0) -> Any:
    """Recursively cast floating tensors (with at least ``min_ndim`` dims) to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.ndim >= min_ndim:
            return obj.to(dtype)
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, _cast_floats(v, dtype, min_ndim)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(v, dtype, min_ndim) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, G: Generator, D: Discriminator | None = None,
                    G_ema: Generator | None = None, opt_G: Any = None, opt_D: Any = None, step: int = 0,
                    images_seen: int = 0, extra: Mapping[str, Any] | None = None, compact: bool = False) -> Path:
    """Write G (+ D, G_ema, optimizer states, progress) and G's config atomically to ``path``.

    ``compact=True`` halves the file: weights in float16, Adam moments in bfloat16 (float16 would
    flush the tiny second moments to zero, and a resumed Adam would then take huge first steps).
    ``extra`` holds training state (RNG states, options); it must contain only tensors, numbers,
    strings and containers of them, because checkpoints are read back with ``weights_only=True``.
    """
    if not isinstance(G, Generator):
        raise TypeError(f"G must be a stylerig_lite Generator, got {type(G).__name__}")
    # Always CPU tensors in the file: a checkpoint written on a GPU loads on a CPU-only machine.
    nets = {k: to_cpu(v) for k, v in {"G": _state_dict_of(G), "D": _state_dict_of(D), "G_ema": _state_dict_of(G_ema)}.items()}
    opts = {k: to_cpu(v) for k, v in {"opt_G": _state_dict_of(opt_G), "opt_D": _state_dict_of(opt_D)}.items()}
    if compact:
        nets = {k: _cast_floats(v, torch.float16) for k, v in nets.items()}
        # Only the moment tensors (ndim >= 1); Adam's step counters are 0-dim and stay float32.
        opts = {k: _cast_floats(v, torch.bfloat16, min_ndim=1) for k, v in opts.items()}
    payload = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "config": G.config.to_dict(),
        "compact": bool(compact),
        "step": int(step),
        "images_seen": int(images_seen),
        **nets,
        **opts,
        "extra": to_cpu(dict(extra)) if extra is not None else {},
    }
    path = Path(path)
    atomic_torch_save(payload, path)
    return path


def save_generator_only(path: str | os.PathLike, G_ema: Generator, step: int = 0, images_seen: int = 0) -> Path:
    """A compact file with just ``G_ema`` (float16) and its config: what one samples and rigs.

    Loads with :func:`load_generator`; the embedded FaceWorld generator is such a file.
    """
    save_checkpoint(path, G_ema, G_ema=G_ema, step=step, images_seen=images_seen, compact=True)
    data = load_checkpoint_file(path, "StyleGAN2 checkpoint")
    data["G"] = None  # one copy of the weights: G is G_ema here
    atomic_torch_save(data, Path(path))
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint` (safe: ``weights_only=True``).

    Returns the payload dict with float32 tensors (compact checkpoints are widened again). A missing
    file raises ``FileNotFoundError``; an empty, truncated, corrupt or foreign one
    :class:`~stylerig_lite.io_utils.CheckpointError` (a ``ValueError``).
    """
    path = Path(path)
    hint = "train one with `stylerig-lite train-gan` or check the path"
    if path.suffix == ".pkl":
        hint = "an official NVlabs .pkl? read it with stylerig_lite.stylegan2.load_official_pickle"
    payload = load_checkpoint_file(path, "StyleGAN2 checkpoint", hint, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a StyleGAN2 checkpoint (kind={kind!r}, expected {CHECKPOINT_KIND!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')!r} "
                              f"(this code reads version {CHECKPOINT_VERSION})")
    if payload.get("compact"):
        for key in ("G", "D", "G_ema", "opt_G", "opt_D"):
            payload[key] = _cast_floats(payload[key], torch.float32)
    return payload


def _restore(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the stored {what} weights do not fit its config: {exc}") from exc


def load_generator(path: str | os.PathLike, which: str = "G_ema", map_location: str | torch.device = "cpu", *,
                   search_dirs: Sequence[str | os.PathLike] = ()) -> Generator:
    """Build a :class:`Generator` from the config stored in a checkpoint and load its weights.

    ``which='G_ema'`` (default, the one to sample from; falls back to ``G`` if absent) or ``'G'``.
    A G_ema stored by reference is looked for beside ``path``, then in ``search_dirs``
    (:func:`resolve_ema_reference`; ``pretrained.generator`` passes the embedded weights folder).
    Returned in eval mode with gradients off.
    """
    if which not in ("G_ema", "G"):
        raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
    path = Path(path)
    payload = load_checkpoint(path, map_location=map_location)
    if which == "G_ema" and payload.get("G_ema") is None and EMA_REFERENCE_KEY in (payload.get("extra") or {}):
        payload["G_ema"] = resolve_ema_reference(payload, path, map_location=map_location,
                                                  search_dirs=search_dirs)
    state = payload.get(which) or payload.get("G")
    G = Generator(StyleGAN2Config.from_dict(payload["config"]))
    _restore(G, state, which, path)
    return G.eval().requires_grad_(False)


# A slim resume checkpoint (train_gan.slim_resume_checkpoint) may hold its G_ema by reference to a
# generator-only file with the same weights (the embedded faceworld_stylegan2.pt), so that the
# committed resume state does not carry a second copy of them.
EMA_REFERENCE_KEY = "G_ema_file"


def resolve_ema_reference(payload: Mapping[str, Any], path: str | os.PathLike, ema_file: str | os.PathLike | None = None,
                          map_location: str | torch.device = "cpu", *,
                          search_dirs: Sequence[str | os.PathLike] = ()) -> dict[str, torch.Tensor]:
    """The G_ema state dict that ``payload`` (read from ``path``) stores by reference.

    Looks for the referenced file at ``ema_file`` if given, else beside ``path``, then in each of
    ``search_dirs`` in order (callers that know of the package's embedded weights pass
    ``[stylerig_lite.pretrained.WEIGHTS_DIR]``); a candidate counts only if its sha256 matches the
    reference.
    """
    ref = (payload.get("extra") or {}).get(EMA_REFERENCE_KEY)
    if not ref:
        raise ValueError(f"{path} holds no G_ema and no reference to one")
    if ema_file is not None:
        candidates = [Path(ema_file)]
    else:
        candidates = [Path(path).parent / ref["name"], *(Path(folder) / ref["name"] for folder in search_dirs)]
    looked = []
    for candidate in candidates:
        if not candidate.is_file():
            looked.append(f"{candidate} (missing)")
            continue
        actual = sha256_file(candidate)
        if actual != ref["sha256"]:
            looked.append(f"{candidate} (sha256 {actual[:12]}...)")
            continue
        state = load_checkpoint(candidate, map_location=map_location)["G_ema"]
        if state is None:
            raise ValueError(f"{candidate} matches the reference of {path} but holds no G_ema")
        return state
    raise FileNotFoundError(
        f"{path} stores its G_ema by reference to {ref['name']} with sha256 {ref['sha256'][:12]}... "
        f"({int(ref.get('images_seen', -1))} images), but no matching file was found: {'; '.join(looked)}. "
        "Use the embedded generator exported from the same checkpoint (git checkout the commit that "
        "wrote this resume state) or pass its path as ema_file.")


def load_discriminator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Discriminator:
    path = Path(path)
    payload = load_checkpoint(path, map_location=map_location)
    if payload.get("D") is None:
        raise ValueError(f"{path} holds no discriminator")
    D = Discriminator(StyleGAN2Config.from_dict(payload["config"]))
    _restore(D, payload["D"], "D", path)
    return D
