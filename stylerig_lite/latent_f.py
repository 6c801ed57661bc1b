"""The latent F: the paper's face reconstruction network, reading W+ (W+ -> 3DMM parameters).

Floor: networks. In StyleRig the differentiable face reconstruction network reads the
*latent code*, not the image: ``F: R^{num_ws x w_dim} -> R^196``, a three-layer MLP with
ELU after each hidden layer (Tewari et al., CVPR 2020, section 4). It is trained once,
self-supervised, on the corpus of ``(w, I_w)`` pairs by rendering ``F(w)`` against ``I_w``
and its detected landmarks (:mod:`stylerig_lite.train_latent_f`); RigNet is then trained
through it, so no generator runs inside RigNet's loop. Chapter 4's image F
(:mod:`stylerig_lite.reconstruction`) reads images instead and is trained on FaceWorld's
exact labels; this one needs no labels, which is why it also exists for the photoreal
generator, whose faces have none.

::

    w  [B, num_ws, w_dim]                     (W+, e.g. 10 x 256 FaceWorld, 23 x 512 FFHQ)
      -> standardise: (w - w_mean) / w_std     per entry, statistics of the training corpus
      -> flatten                               [B, num_ws * w_dim]
      -> Linear -> ELU -> Linear -> ELU        [B, hidden]
      -> Linear                                [B, 196]
      -> p = param_mean + param_scale * out    3DMM parameters in their natural units

``param_mean`` / ``param_scale`` put the network's unit outputs on each parameter's own
scale (radians for the angles, cm for the translation, standard deviations for identity
and albedo, blend weights, SH coefficients): the statistics of chapter 1's parameter
distribution, with the translation centred on the generator's *framing* (FaceWorld's
camera is the renderer's by construction; the photoreal generator's FFHQ crop is fitted,
see :func:`stylerig_lite.train_latent_f.fit_framing`). The last layer starts at zero, so
an untrained F returns ``param_mean``: the mean face, framed like the generator's faces.

What it cannot see: F reads w only. Everything of ``I_w`` that w fixes through the
generator (hair, background) is invisible to the 3DMM anyway; but F has seen only latents
from the mapping network (equal W+ rows), and RigNet's edited ŵ have unequal rows, outside
that distribution: chapter 4 (``notebooks/04_face_reconstruction.ipynb``) measures how far
its readings drift there.

A latent F belongs to one generator: it records the generator's sha256 and
:meth:`LatentF.check_generator` refuses another's latents (:class:`~stylerig_lite.io_utils.
GeneratorMismatchError`). Embedded weights: :func:`stylerig_lite.pretrained.latent_f`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from . import morphable
from .checks import assert_finite, assert_shape
from .io_utils import (CheckpointError, GeneratorBinding, GeneratorMismatchError, atomic_torch_save,  # noqa: F401
                       checkpoint_state, load_network_file)
from .morphable import NUM_PARAMS, FaceParams, ParamDistribution

__all__ = [
    "GeneratorMismatchError",  # re-exported from io_utils
    "CHECKPOINT_FORMAT",
    "get_config",
    "LatentF",
    "LatentFConfig",
    "output_statistics",
    "PRESETS",
]

CHECKPOINT_FORMAT = "stylerig_lite.latent_f/1"


@dataclasses.dataclass
class LatentFConfig:
    """Architecture of the latent F: the generator's W+ shape and the MLP's hidden width."""

    num_ws: int = 10
    w_dim: int = 256
    hidden: int = 512  # both hidden layers; the paper gives no width

    def __post_init__(self) -> None:
        for name in ("num_ws", "w_dim", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"LatentFConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))

    @classmethod
    def for_generator(cls, G: Any, **overrides: Any) -> "LatentFConfig":
        """The config that reads ``G``'s W+ (``G.num_ws x G.w_dim``)."""
        return cls(num_ws=int(G.num_ws), w_dim=int(G.w_dim), **overrides)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "LatentFConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LatentFConfig fields {sorted(unknown)}: the checkpoint is from a newer version")
        return cls(**data)


#: Named configurations: the two generators the book rigs, and a tiny one for tests.
PRESETS: Dict[str, Dict[str, Any]] = {
    "faceworld": {"num_ws": 10, "w_dim": 256, "hidden": 512},
    "ffhq": {"num_ws": 23, "w_dim": 512, "hidden": 512},
    "tiny": {"num_ws": 4, "w_dim": 8, "hidden": 16},
}


def get_config(name: str = "faceworld", **overrides: Any) -> LatentFConfig:
    """A preset of :data:`PRESETS` with ``overrides`` applied; an unknown name is a ``ValueError``."""
    from .config import config_from_preset

    return config_from_preset(LatentFConfig, PRESETS, name, overrides, what="latent F")


def output_statistics(distribution: ParamDistribution = ParamDistribution(), *, count: int = 4096,
                      seed: int = 12345) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(param_mean [196], param_scale [196])``: chapter 1's parameter distribution, per dimension.

    The scale of a dimension is its standard deviation, floored at 1e-3 (rare expressions
    barely vary in the sample but must still be reachable). Cheap: parameters only, no render.
    """
    params = morphable.sample_params(count, seed=seed, distribution=distribution).to_vector().double()
    mean, std = params.mean(0), params.std(0).clamp_min(1e-3)
    return mean.float(), std.float()


class LatentF(nn.Module, GeneratorBinding):
    """``F(w) -> p``: W+ latents ``[B, num_ws, w_dim]`` to 3DMM parameter vectors ``[B, 196]``.

    ``forward`` returns the ``[B, 196]`` tensor (differentiable, for training and for RigNet's
    losses); :meth:`estimate` returns a :class:`~stylerig_lite.morphable.FaceParams`.
    """

    #: RigNet's losses call ``F(ŵ)`` on latents (:func:`stylerig_lite.rignet.rig_losses`), not ``F(G(ŵ))``.
    reads_latents = True

    def __init__(self, config: Optional[LatentFConfig] = None, *, param_mean: Optional[torch.Tensor] = None,
                 param_scale: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = config = config or LatentFConfig()
        if param_mean is None or param_scale is None:
            param_mean, param_scale = output_statistics()
        assert_shape(param_mean, [NUM_PARAMS], "param_mean")
        assert_shape(param_scale, [NUM_PARAMS], "param_scale")
        assert_finite(param_mean, "param_mean")
        if not bool((param_scale > 0).all()):
            raise ValueError("param_scale must be positive in every dimension")
        self.register_buffer("param_mean", param_mean.detach().float().clone())  # [196]
        self.register_buffer("param_scale", param_scale.detach().float().clone())  # [196]
        self.register_buffer("w_mean", torch.zeros(config.num_ws, config.w_dim))  # set by set_input_statistics
        self.register_buffer("w_std", torch.ones(config.num_ws, config.w_dim))
        width = config.num_ws * config.w_dim
        self.mlp = nn.Sequential(
            nn.Linear(width, config.hidden), nn.ELU(),
            nn.Linear(config.hidden, config.hidden), nn.ELU(),
            nn.Linear(config.hidden, NUM_PARAMS),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # an untrained F returns param_mean: the mean, framed face
        nn.init.zeros_(self.mlp[-1].bias)
        self.record_generator(None)

    # -- the generator it belongs to (io_utils.GeneratorBinding) ----------------------
    def _binding_label(self) -> str:
        return "latent F"

    def _binding_fix(self) -> str:
        return ("It reads that generator's W+ space; another generator's latents mean other faces. Train one for "
                "this generator with `stylerig-lite train-latent-f --generator NAME --corpus DIR --out latent_f.pt`")

    # -- input statistics --------------------------------------------------------------
    @torch.no_grad()
    def set_input_statistics(self, ws: torch.Tensor) -> "LatentF":
        """Standardise inputs with the per-entry mean and std of ``ws`` ``[N, num_ws, w_dim]`` (a corpus)."""
        self._check_latents(ws)
        ws = ws.detach().double()
        self.w_mean.copy_(ws.mean(0).float())
        self.w_std.copy_(ws.std(0).clamp_min(1e-3).float() if ws.shape[0] > 1 else torch.ones_like(self.w_std))
        return self

    def _check_latents(self, w: Any) -> None:
        c = self.config
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"w must be a torch.Tensor of W+ latents [B, {c.num_ws}, {c.w_dim}], got {type(w).__name__}")
        if w.ndim == 2 and w.shape[1] == c.w_dim:
            raise ValueError(f"w has shape {tuple(w.shape)}: one w per sample, but the latent F reads W+ latents "
                             f"[B, {c.num_ws}, {c.w_dim}]; broadcast with w[:, None].repeat(1, {c.num_ws}, 1)")
        try:
            assert_shape(w, [None, c.num_ws, c.w_dim], "w (W+ latents)")
        except ValueError as error:
            raise ValueError(f"{error}. This latent F reads a generator with {c.num_ws} ws x {c.w_dim}; another "
                             "generator needs its own (LatentFConfig.for_generator(G))") from None
        if not w.is_floating_point():
            raise TypeError(f"w must be floating point, got {w.dtype}")
        assert_finite(w, "w (W+ latents)")

    # -- the map -------------------------------------------------------------------------
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """``[B, num_ws, w_dim] -> [B, 196]`` parameters in their natural units (see the module docstring)."""
        self._check_latents(w)
        x = ((w.to(self.w_mean.dtype) - self.w_mean) / self.w_std).flatten(1)  # [B, num_ws * w_dim]
        return self.param_mean + self.param_scale * self.mlp(x)  # [B, 196]

    def estimate(self, w: torch.Tensor) -> FaceParams:
        """:class:`~stylerig_lite.morphable.FaceParams` of ``F(w)``."""
        return FaceParams.from_vector(self(w))

    def extra_repr(self) -> str:
        c = self.config
        return f"num_ws={c.num_ws}, w_dim={c.w_dim}, hidden={c.hidden}"

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, *, half: bool = False) -> Dict[str, Any]:
        """Config + weights + statistics (+ the generator it belongs to) as a plain dict.

        ``half``: store the MLP's weight matrices in float16 (the embedded ones are; buffers stay
        float32). Loading converts back to float32.
        """
        state = self.state_dict()
        if half:
            state = {k: v.half() if k.startswith("mlp.") and k.endswith("weight") else v for k, v in state.items()}
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "state_dict": state,
                **self.binding_fields()}

    def save(self, path: Union[str, os.PathLike], *, extra: Optional[Dict[str, Any]] = None,
             half: bool = False) -> Path:
        """Write :meth:`checkpoint` atomically to ``path`` (``extra``: more top-level keys)."""
        data = self.checkpoint(half=half)
        if extra:
            data.update(extra)
        return atomic_torch_save(data, path)

    @classmethod
    def from_checkpoint(cls, data: Dict[str, Any]) -> "LatentF":
        state = checkpoint_state(data, CHECKPOINT_FORMAT, "latent-F checkpoint")
        try:
            net = cls(LatentFConfig.from_dict(data["config"]), param_mean=state["param_mean"],
                      param_scale=state["param_scale"])
            net.load_state_dict(state)
        except (KeyError, RuntimeError, TypeError) as error:
            raise CheckpointError(f"corrupt latent-F checkpoint ({type(error).__name__}: {error})") from None
        return net.record_generator(data.get("generator_sha256"), file_sha256=data.get("generator_file_sha256"))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, map_location: Any = "cpu", frozen: bool = True) -> "LatentF":
        """Load a latent F saved by :meth:`save` (or a training checkpoint, which nests it); eval mode, frozen."""
        return load_network_file(cls.from_checkpoint, path, what="latent-F checkpoint", fmt=CHECKPOINT_FORMAT,
                                 nested_key="latent_f", map_location=map_location, frozen=frozen,
                                 hint=f"train one with `stylerig-lite train-latent-f --out {path}`")
