"""The photo encoder: an aligned face crop -> a first guess of its latent ``w`` (chapter 7, section 2).

Editing a photograph needs the photo's code in the generator's W+ space (the "embedding"
step of PIE, Tewari et al. 2020). Optimising W+ through the generator from the average
face takes hundreds of generator passes; a network that reads the photo and predicts its
``w`` gives the optimisation (:func:`stylerig_lite.photo.embed`) a start near the answer.
It is trained on the photoreal corpus, whose pairs ``(w, G(w))`` are exactly the inverse
problem's labels: no photo and no label is needed (the in-domain encoder of Zhu et al. 2020,
without its adversarial term).

Network: a ResNet (the reconstruction network's residual blocks,
:class:`~stylerig_lite.reconstruction.ResidualBlock`) on ``[B, 3, S, S]`` crops in [-1, 1],
one stride-2 stage per width down to 4x4, global average pooling, a two-layer head to
``w_dim`` numbers. The output is ``w_mean + w_std * head(x)`` with the corpus's per-entry
mean and std and a zero-initialised last layer, so an untrained encoder returns the mean
``w``. Since the corpus codes have equal W+ rows, it predicts one ``w`` and repeats it
(:meth:`PhotoEncoder.forward` returns ``[B, num_ws, w_dim]``).

Its stage outputs double as a *feature space for faces of this generator*
(:meth:`PhotoEncoder.features`): the embedding's feature term compares a photo and its
reconstruction there, in place of an ImageNet VGG (LPIPS), whose weights no pip package
ships.

Loss: mean squared error in the standardised ``w`` (units of the corpus's std). Inputs are
jittered (:func:`jitter`: shift, scale, rotation, brightness, contrast) because a real photo's
alignment and exposure differ from the generator's; the jitter ranges cover what
:func:`stylerig_lite.photo.align_face` leaves on generated images. The validation split is
the corpus's first ``validation_items`` items (as for the latent F).

Bound to its generator (:class:`~stylerig_lite.io_utils.GeneratorBinding`): a code for another
generator's W+ space is another face.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from .checks import assert_finite, assert_shape
from .io_utils import (CheckpointError, GeneratorBinding, atomic_torch_save, checkpoint_state,
                       load_network_file)
from .reconstruction import ResidualBlock

__all__ = ["EncoderConfig", "PhotoEncoder", "get_config", "jitter", "CHECKPOINT_FORMAT", "PRESETS"]

CHECKPOINT_FORMAT = "stylerig_lite.encoder/1"


@dataclasses.dataclass
class EncoderConfig:
    """Architecture of the encoder. ``get_config('ffhq')`` is the embedded one; ``'tiny'`` is for tests."""

    image_size: int = 64
    widths: Tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 stage each: 64 -> 4 px
    head_hidden: int = 512
    num_ws: int = 23
    w_dim: int = 512

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"EncoderConfig.widths must be positive integers, got {self.widths}")
        if self.image_size % (2 ** len(self.widths)) or self.image_size < 2 ** len(self.widths):
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**{len(self.widths)}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "EncoderConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields {sorted(unknown)}: the checkpoint is from a newer version")
        return cls(**data)


PRESETS: Dict[str, Dict[str, Any]] = {
    "ffhq": {},
    "tiny": {"image_size": 32, "widths": (4, 8), "head_hidden": 16, "num_ws": 4, "w_dim": 8},
}


def get_config(name: str = "ffhq", **overrides: Any) -> EncoderConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown encoder preset {name!r}; expected one of {list(PRESETS)}")
    return EncoderConfig(**{**PRESETS[name], **overrides})


class PhotoEncoder(nn.Module, GeneratorBinding):
    """``E(x) -> w``: aligned crops ``[B, 3, S, S]`` in [-1, 1] to W+ codes ``[B, num_ws, w_dim]``."""

    def __init__(self, config: Optional[EncoderConfig] = None):
        super().__init__()
        self.config = c = config or EncoderConfig()
        self.register_buffer("w_mean", torch.zeros(c.w_dim))  # set by set_output_statistics
        self.register_buffer("w_std", torch.ones(c.w_dim))
        self.stem = nn.Sequential(nn.Conv2d(3, c.widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(c.widths[0]),
                                  nn.ReLU())
        stages, channels = [], c.widths[0]
        for width in c.widths:
            stages.append(ResidualBlock(channels, width, 2, "batch"))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.Linear(channels, c.head_hidden), nn.ELU(), nn.Linear(c.head_hidden, c.w_dim))
        nn.init.zeros_(self.head[-1].weight)  # untrained: the mean w
        nn.init.zeros_(self.head[-1].bias)
        self.record_generator(None)
        # Channels-last convolutions: faster on a CPU (as the reconstruction network measured).
        self.to(memory_format=torch.channels_last)

    def _binding_label(self) -> str:
        return "photo encoder"

    def _binding_fix(self) -> str:
        return ("Its codes live in that generator's W+ space. Train one for this generator with "
                "`stylerig-lite train-encoder --corpus DIR --out encoder.pt` on a corpus of it")

    @torch.no_grad()
    def set_output_statistics(self, ws: torch.Tensor) -> "PhotoEncoder":
        """Per-entry mean and std of the codes ``ws [N, num_ws, w_dim]`` (their first row) the encoder predicts."""
        assert_shape(ws, [None, self.config.num_ws, self.config.w_dim], "ws (corpus W+ codes)")
        w = ws[:, 0].double()
        self.w_mean.copy_(w.mean(0).float())
        self.w_std.copy_(w.std(0).clamp_min(1e-3).float() if len(w) > 1 else torch.ones_like(self.w_std))
        return self

    def _check_images(self, x: Any) -> torch.Tensor:
        s = self.config.image_size
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the encoder reads a tensor of face crops [B, 3, {s}, {s}] in [-1, 1], got {type(x).__name__}")
        assert_shape(x, [None, 3, s, s], f"face crops (resize aligned crops to {s} px)")
        assert_finite(x, "face crops")
        if float(x.detach().abs().max()) > 1.5:
            raise ValueError(f"face crops must be in [-1, 1] (found values up to {float(x.abs().max()):.3g}); "
                             "convert uint8 images with x / 127.5 - 1")
        return x

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The stage outputs ``[B, width_k, S / 2^(k+1), S / 2^(k+1)]``, one per width (differentiable in ``x``)."""
        x = self._check_images(x).to(self.w_mean.device).contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, w_dim]``: the code in units of the corpus std, relative to its mean (what the loss compares)."""
        return self.head(self.features(x)[-1].mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` in [-1, 1] -> W+ ``[B, num_ws, w_dim]`` (equal rows)."""
        w = self.w_mean + self.w_std * self.standardised(x)  # [B, w_dim]
        return w[:, None].repeat(1, self.config.num_ws, 1)

    def extra_repr(self) -> str:
        c = self.config
        return f"image_size={c.image_size}, widths={c.widths}, num_ws={c.num_ws}, w_dim={c.w_dim}"

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, *, half: bool = False) -> Dict[str, Any]:
        """Config + weights + the generator it belongs to; ``half``: conv and linear weights in float16."""
        state = self.state_dict()
        if half:
            state = {k: v.half() if k.endswith("weight") and v.ndim > 1 else v for k, v in state.items()}
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "state_dict": state,
                **self.binding_fields()}

    def save(self, path: Union[str, os.PathLike], *, extra: Optional[Dict[str, Any]] = None,
             half: bool = False) -> Path:
        data = self.checkpoint(half=half)
        data.update(extra or {})
        return atomic_torch_save(data, path)

    @classmethod
    def from_checkpoint(cls, data: Dict[str, Any]) -> "PhotoEncoder":
        state = checkpoint_state(data, CHECKPOINT_FORMAT, "photo-encoder checkpoint")
        try:
            net = cls(EncoderConfig.from_dict(data["config"]))
            net.load_state_dict(state)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            raise CheckpointError(f"corrupt photo-encoder checkpoint ({type(error).__name__}: {error})") from None
        return net.record_generator(data.get("generator_sha256"), file_sha256=data.get("generator_file_sha256"))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, map_location: Any = "cpu", frozen: bool = True) -> "PhotoEncoder":
        """An encoder saved by :meth:`save` or a training checkpoint; eval mode, frozen by default."""
        return load_network_file(cls.from_checkpoint, path, what="photo-encoder checkpoint", fmt=CHECKPOINT_FORMAT,
                                 nested_key="encoder", map_location=map_location, frozen=frozen,
                                 hint=f"train one with `stylerig-lite train-encoder --out {path}`")


# ----------------------------------------------------------------------------------------------
# Augmentation (the training loop is :mod:`stylerig_lite.train_encoder`).


def jitter(images: torch.Tensor, generator: torch.Generator, *, shift: float = 0.04, scale: float = 0.05,
           rotate_deg: float = 4.0, brightness: float = 0.1, contrast: float = 0.1) -> torch.Tensor:
    """Random similarity transforms and exposure changes of ``[B, 3, S, S]`` images in [-1, 1].

    ``shift`` in fractions of the image, ``scale`` relative, ``rotate_deg`` degrees, ``brightness``
    added (in [-1, 1] units) and ``contrast`` relative; each uniform in ``±`` its value. Borders are
    filled by reflection (an aligned crop of a photo continues past its edge too).
    """
    b = images.shape[0]

    def uniform(limit: float, *shape: int) -> torch.Tensor:
        return (torch.rand(b, *shape, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(rotate_deg))
    s = 1 + uniform(scale)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, uniform(2 * shift)], 1),
                         torch.stack([sin, cos, uniform(2 * shift)], 1)], 1)  # [B, 2, 3]
    grid = nnf.affine_grid(theta, list(images.shape), align_corners=False)
    out = nnf.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * (1 + uniform(contrast, 1, 1, 1)) + mean + uniform(brightness, 1, 1, 1)
    return out.clamp(-1, 1)
