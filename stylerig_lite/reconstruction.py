"""F: the face reconstruction network (image -> 3DMM parameters and 2D landmarks).

StyleRig needs a differentiable map F from an image to the parameters of the
3D morphable model: RigNet is trained by comparing F(G(ŵ)) with target
parameters. The paper uses a pretrained model-based face autoencoder (MoFA).
We have something better for a toy world: FaceWorld renders with *exact*
labels, so F is a small CNN trained by plain regression::

    image [B, 3, 64, 64] in [0, 1]
      -> stem conv (+ 2 coordinate channels)           [B, w0, 64, 64]
      -> 4 residual stages, each halving the size      [B, w3, 4, 4]
      -> global average pooling, 2-layer MLP head
      -> normalised parameters [B, 196] and landmarks [B, 68, 2] (pixels)

Targets are *normalised*: each parameter is predicted as ``(p - mean) / std``
with the mean and standard deviation of FaceWorld's parameter distribution
(estimated from a seeded sample and stored in the checkpoint), so that the
loss weighs, say, a light coefficient of typical size 0.05 and an identity
weight of typical size 1 alike. The three pose angles are the exception: they
are predicted directly in radians and carry a larger loss weight, because the
rig's pose control is scored in degrees.

A second network built by the same code but trained with another seed and
width is the *evaluation estimator*: RigNet is never scored by the network
that trained it (:func:`estimator_agreement` measures how far the two agree).

Public API: :class:`ReconstructionConfig`, :class:`ReconstructionNet`
(``net.estimate(images) -> (FaceParams, landmarks)``, ``net.save`` /
``ReconstructionNet.load``), :func:`reconstruction_loss`, :func:`augment`,
:func:`estimator_agreement` (scoring against held-out FaceWorld labels is
:func:`stylerig_lite.evaluate.evaluate_estimator`).
Training lives in :mod:`stylerig_lite.train_f`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as nnf
from torch import nn

from . import morphable
from .checks import assert_finite, assert_shape
from .seeding import BatchShard
from .io_utils import CheckpointError, atomic_torch_save, load_checkpoint_file
from .morphable import NUM_EXPRESSION, NUM_PARAMS, SLICES, FaceParams, ParamDistribution
from .params import NUM_LANDMARKS

__all__ = [
    "ANGLE_SLICE",
    "augment",
    "AugmentConfig",
    "check_images",
    "CHECKPOINT_FORMAT",
    "DEFAULT_LOSS_WEIGHTS",
    "estimate_all",
    "estimator_agreement",
    "EstimatorLike",
    "expression_metric",
    "format_metrics",
    "gaussian_blur",
    "get_default_config",
    "parameter_errors",
    "parameter_statistics",
    "reconstruction_loss",
    "ReconstructionConfig",
    "ReconstructionNet",
    "ReconstructionOutput",
    "ResidualBlock",
    "shift_images",
    "shift_images_reference",
    "SubsampledPointwiseConv",
    "tiny_config",
    "TRANSLATION_SLICE",
    "width_ladder",
]

CHECKPOINT_FORMAT = "stylerig_lite.reconstruction/1"
#: The yaw, pitch, roll entries of the parameter vector (predicted in radians, not normalised).
ANGLE_SLICE = slice(SLICES["pose"].start, SLICES["pose"].start + 3)
TRANSLATION_SLICE = slice(SLICES["pose"].start + 3, SLICES["pose"].stop)

# ----------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass
class ReconstructionConfig:
    """Architecture of F. ``get_default_config()`` is the embedded size; ``tiny`` is for tests."""

    image_size: int = 64
    widths: Tuple[int, ...] = (32, 64, 128, 256)  # one residual stage per width, each halves the resolution
    blocks_per_stage: int = 1
    norm: str = "batch"  # "batch" or "group" (GroupNorm is batch-size independent but slower on a CPU)
    coord_channels: bool = True  # append (x, y) pixel-coordinate channels: helps regress positions after pooling
    head_hidden: int = 256

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.norm not in ("batch", "group"):
            raise ValueError(f"ReconstructionConfig.norm must be 'batch' or 'group', got {self.norm!r}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"ReconstructionConfig.widths must be positive integers, got {self.widths}")
        if self.norm == "group" and any(w % _groups(w) for w in self.widths):
            raise ValueError(f"GroupNorm needs widths divisible by their group count, got {self.widths}")
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.widths)} (one halving per stage)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ReconstructionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ReconstructionConfig fields {sorted(unknown)}: the checkpoint is from a newer version")
        return cls(**data)


def width_ladder(width: int, stages: int = 4) -> Tuple[int, ...]:
    """``(w, 2w, 4w, 8w)``: the CLI's ``--width`` is the first stage's width."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return tuple(int(width) * 2**i for i in range(stages))


def get_default_config() -> ReconstructionConfig:
    return ReconstructionConfig()


def tiny_config() -> ReconstructionConfig:
    """A few thousand parameters: for tests and the ``--preset tiny`` smoke run."""
    return ReconstructionConfig(widths=width_ladder(8), head_hidden=32)


def _groups(channels: int) -> int:
    return min(8, channels)


# ----------------------------------------------------------------------------
# Parameter statistics (what the normalised targets are relative to).


def parameter_statistics(
    distribution: ParamDistribution = ParamDistribution(), *, count: int = 4096, seed: int = 12345
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension ``(mean [196], std [196])`` of :func:`~stylerig_lite.morphable.sample_params`.

    Only parameters are drawn (nothing is rendered), so this is cheap. The
    pose angles get mean 0 and std 1: F predicts them in radians. A floor on
    the std keeps dimensions that barely vary (rare expressions) from
    dominating the loss.
    """
    key = (repr(distribution), int(count), int(seed))  # ParamDistribution is not hashable: key by repr
    if key not in _STATISTICS_CACHE:
        params = morphable.sample_params(count, seed=seed, distribution=distribution).to_vector().double()  # [N, 196]
        mean, std = params.mean(0), params.std(0)
        std = torch.maximum(std, torch.full_like(std, 1e-3))
        mean[ANGLE_SLICE], std[ANGLE_SLICE] = 0.0, 1.0
        _STATISTICS_CACHE[key] = (mean.float(), std.float())
    mean, std = _STATISTICS_CACHE[key]
    return mean.clone(), std.clone()


_STATISTICS_CACHE: Dict[Tuple[str, int, int], Tuple[torch.Tensor, torch.Tensor]] = {}


# ----------------------------------------------------------------------------
# The network.


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(_groups(channels), channels)


class SubsampledPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride ``s``, computed as "take every s-th pixel, then a stride-1 1x1 conv".

    The two are the same function (a 1x1 kernel with no padding only ever reads the pixels
    at multiples of the stride) with the same parameters, so checkpoints do not change.
    Why: torch 2.11's oneDNN backward of a *strided* 1x1 channels-last convolution with
    fewer than 16 channels corrupts the heap on some x86 CPUs (seen on an AMD EPYC:
    "double free or corruption" at the first backward of widths 8 and 12).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = x[:, :, :: s[0], :: s[1]]
        return nnf.conv2d(x.contiguous(memory_format=torch.channels_last), self.weight, None, 1)


class ResidualBlock(nn.Module):
    """ResNet basic block (post-activation): conv-norm-relu-conv-norm, plus the (projected) shortcut, then relu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        # Start each residual branch at zero, so a deep stack begins as (near) identity maps.
        nn.init.zeros_(self.norm2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(SubsampledPointwiseConv(in_channels, out_channels, stride), _norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


@dataclasses.dataclass
class ReconstructionOutput:
    """What :meth:`ReconstructionNet.forward` returns (all differentiable)."""

    params_normalized: torch.Tensor  # [B, 196] (p - mean) / std; angles in radians
    params: torch.Tensor  # [B, 196] in the units of the parameter vector
    landmarks: torch.Tensor  # [B, 68, 2] pixels (u right, v down, pixel centres at half-integers)

    @property
    def face_params(self) -> FaceParams:
        return FaceParams.from_vector(self.params)


class ReconstructionNet(nn.Module):
    """F: ``[B, 3, 64, 64]`` images in [0, 1] -> parameters ``[B, 196]`` and landmarks ``[B, 68, 2]``.

    ``forward`` is the raw, differentiable network (shape-checked only);
    :meth:`estimate` validates and converts its input first and returns a
    :class:`~stylerig_lite.morphable.FaceParams`. For scoring or as a frozen
    loss network, use ``net.eval()`` (see :meth:`load`).
    """

    def __init__(
        self,
        config: Optional[ReconstructionConfig] = None,
        *,
        param_mean: Optional[torch.Tensor] = None,
        param_std: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.config = config = config or get_default_config()
        if param_mean is None or param_std is None:
            param_mean, param_std = parameter_statistics()
        assert_shape(param_mean, [NUM_PARAMS], "param_mean")
        assert_shape(param_std, [NUM_PARAMS], "param_std")
        if not bool((param_std > 0).all()):
            raise ValueError("param_std must be positive in every dimension")
        self.register_buffer("param_mean", param_mean.detach().float().clone())  # [196]
        self.register_buffer("param_std", param_std.detach().float().clone())  # [196]

        in_channels = 3 + (2 if config.coord_channels else 0)
        w0 = config.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w0, 3, padding=1, bias=False), _norm(config.norm, w0), nn.ReLU())
        stages, channels = [], w0
        for width in config.widths:
            blocks = [ResidualBlock(channels, width, 2, config.norm)]
            blocks += [ResidualBlock(width, width, 1, config.norm) for _ in range(config.blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Linear(channels, config.head_hidden), nn.ReLU(), nn.Linear(config.head_hidden, NUM_PARAMS + 2 * NUM_LANDMARKS))
        # A zero last layer: training starts from "the mean face at the image centre".
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        # Channels-last convolutions: measured 1.1-1.8x faster for training on a CPU (width 16-32).
        self.to(memory_format=torch.channels_last)

    # -- normalisation ------------------------------------------------------
    def normalize_params(self, params: torch.Tensor) -> torch.Tensor:
        """``[B, 196]`` parameters -> the normalised targets the network regresses."""
        return (params - self.param_mean) / self.param_std

    def denormalize_params(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized * self.param_std + self.param_mean

    def _coordinates(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        ramp = torch.linspace(-1.0, 1.0, size, dtype=like.dtype, device=like.device)
        yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
        return torch.stack([xx, yy])[None].expand(batch, 2, size, size)  # [B, 2, H, W]

    # -- the network ---------------------------------------------------------
    def forward(self, images: torch.Tensor) -> ReconstructionOutput:
        size = self.config.image_size
        assert_shape(images, [None, 3, size, size], "images")
        x = images
        if self.config.coord_channels:
            x = torch.cat([x, self._coordinates(x.shape[0], x)], dim=1)
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.stages(self.stem(x))  # [B, C, 4, 4]
        features = x.mean(dim=(2, 3))  # [B, C]
        out = self.head(features)  # [B, 196 + 136]
        normalized = out[:, :NUM_PARAMS]
        # Landmarks are regressed relative to the image centre in units of half the image.
        half = size / 2.0
        landmarks = out[:, NUM_PARAMS:].view(-1, NUM_LANDMARKS, 2) * half + half  # [B, 68, 2] pixels
        return ReconstructionOutput(normalized, self.denormalize_params(normalized), landmarks)

    def estimate(self, images: torch.Tensor, *, value_range: Tuple[float, float] = (0.0, 1.0)) -> Tuple[FaceParams, torch.Tensor]:
        """Parameters and landmarks of ``images [B, 3, 64, 64]``.

        ``value_range``: the range the images are in: ``(0, 1)`` for renders,
        ``(-1, 1)`` for GAN outputs (converted here; values past the range, as
        GAN outputs often have, are clamped). Differentiable in ``images``;
        runs in the module's current mode, so call ``net.eval()`` first (or
        use :meth:`load`, which returns an eval-mode network).
        Returns ``(FaceParams, landmarks [B, 68, 2] pixels)``.
        """
        images = check_images(images, value_range=value_range, image_size=self.config.image_size)
        out = self(images.to(self.param_mean.device))
        return out.face_params, out.landmarks

    def features(self, images: torch.Tensor, *, value_range: Tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """The pooled features ``[B, C]`` the head reads (C = the last stage's width).

        A feature space trained on faces, used like Inception features in FID:
        :func:`stylerig_lite.evaluate.frechet_distance` compares generated and
        FaceWorld images in it. Same input checks and ``value_range`` as :meth:`estimate`.
        """
        images = check_images(images, value_range=value_range, image_size=self.config.image_size)
        x = images.to(self.param_mean.device)
        if self.config.coord_channels:
            x = torch.cat([x, self._coordinates(x.shape[0], x)], dim=1)
        x = self.stages(self.stem(x.contiguous(memory_format=torch.channels_last)))  # [B, C, 4, 4]
        return x.mean(dim=(2, 3))  # [B, C], as in forward

    # -- checkpoints ---------------------------------------------------------
    def checkpoint(self) -> Dict[str, Any]:
        """The network as a plain dict (its config travels with it)."""
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "state_dict": self.state_dict()}

    def save(self, path: Union[str, os.PathLike], *, extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write the network (config + weights + normalisation) atomically to ``path``."""
        data = self.checkpoint()
        if extra:
            data.update(extra)
        return atomic_torch_save(data, path)

    @classmethod
    def from_checkpoint(cls, data: Dict[str, Any]) -> "ReconstructionNet":
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"not an F checkpoint: expected format {CHECKPOINT_FORMAT!r}, found {found!r}")
        state = data["state_dict"]
        net = cls(ReconstructionConfig.from_dict(data["config"]), param_mean=state["param_mean"], param_std=state["param_std"])
        net.load_state_dict(state)
        return net

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, map_location: Any = "cpu", frozen: bool = True) -> "ReconstructionNet":
        """Load a network saved by :meth:`save` or a training checkpoint of :mod:`~stylerig_lite.train_f`.

        Returns it in eval mode; ``frozen=True`` also turns off its parameters'
        gradients (the usual use: a fixed estimator or loss network).
        """
        path = Path(path)
        data = load_checkpoint_file(path, "F checkpoint", f"train one with `stylerig-lite train-f --out {path}`",
                                    map_location=map_location)
        net = cls.from_checkpoint(data).eval()
        if frozen:
            net.requires_grad_(False)
        return net


# ----------------------------------------------------------------------------
# Input checks.


def check_images(images: Any, *, value_range: Tuple[float, float] = (0.0, 1.0), image_size: int = 64) -> torch.Tensor:
    """Validate a batch of images and return it as float in [0, 1].

    Raises ``TypeError``/``ValueError`` that say what was wrong and how to fix
    it: not a tensor, integer dtype, wrong number of dims, grayscale or RGBA,
    wrong size, NaN, values outside ``value_range``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, {image_size}, {image_size}], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floating point in [0, 1], got dtype {images.dtype}; for uint8 images use images.float() / 255"
        )
    if images.ndim == 3 and images.shape[0] in (1, 3):
        raise ValueError(
            f"images has shape {tuple(images.shape)} (one image); F expects a batch [B, 3, H, W]: use images[None]"
        )
    if images.ndim != 4:
        raise ValueError(f"images has shape {tuple(images.shape)} ({images.ndim} dims); expected [B, 3, {image_size}, {image_size}]")
    channels = images.shape[1]
    if channels == 1:
        raise ValueError(
            f"images are grayscale (shape {tuple(images.shape)}); F expects RGB: use images.expand(-1, 3, -1, -1) "
            "(F was trained on colour images, so expect worse light and albedo estimates)"
        )
    if channels != 3:
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if images.shape[-1] in (1, 3, 4) else ""
        hint = hint or (" (RGBA? drop alpha with images[:, :3])" if channels == 4 else "")
        raise ValueError(f"images has {channels} channels (shape {tuple(images.shape)}); expected 3 (RGB){hint}")
    if tuple(images.shape[2:]) != (image_size, image_size):
        raise ValueError(
            f"images are {images.shape[2]}x{images.shape[3]} pixels; F expects {image_size}x{image_size}. Resize with "
            f"torch.nn.functional.interpolate(images, size=({image_size}, {image_size}), mode='bilinear', antialias=True) "
            "(and scale landmarks by the same factor)"
        )
    assert_finite(images, "images")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if images.numel():
        vmin, vmax = float(images.detach().min()), float(images.detach().max())
        tolerance = 0.02 * (hi - lo)
        if (lo, hi) == (0.0, 1.0) and (vmin < -tolerance or vmax > 1 + tolerance):
            if vmin >= -1 - tolerance and vmax <= 1 + tolerance:
                hint = (
                    "they look like GAN images in [-1, 1]: pass value_range=(-1, 1), or convert with "
                    "stylerig_lite.plotting.to_unit(images)"
                )
            elif vmax > 1.5 and vmin >= -tolerance:
                hint = "they look like 0..255 values: divide by 255"
            else:
                hint = "rescale them to [0, 1]"
            raise ValueError(f"images must lie in [0, 1] but range over [{vmin:.3g}, {vmax:.3g}]; {hint}")
        # GAN outputs overshoot [-1, 1] a little; anything beyond twice the span is a wrong range, not overshoot.
        if (lo, hi) != (0.0, 1.0) and (vmin < lo - (hi - lo) or vmax > hi + (hi - lo)):
            hint = "pass the range they are in"
            if vmin >= -tolerance and vmax <= 255 * 1.02:
                hint = "they look like 0..255 values: divide by 255 and pass value_range=(0, 1)"
            raise ValueError(
                f"images range over [{vmin:.3g}, {vmax:.3g}], far outside value_range {value_range}; {hint}"
            )
    if (lo, hi) != (0.0, 1.0):
        images = (images - lo) / (hi - lo)
    return images.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------
# The loss.

#: Default loss weights: the mean squared error of each normalised component, the expression
#: error as a mean squared vertex displacement (mm², see :func:`expression_metric`), the angle
#: error in radians² and the landmark error in units of the image size.
DEFAULT_LOSS_WEIGHTS: Dict[str, float] = {
    "identity": 1.0,
    # Expression is scored by what it does to the face, not weight by weight: most of the 53 weights
    # (eye gaze, brow details) move the surface by a fraction of a millimetre and are invisible at
    # 64 px, while jawOpen moves it by 11 mm per unit. Measured: with a per-weight normalised loss
    # (weights 10 or 300), jawOpen error stayed at the mean predictor's 0.17 after 20 minutes, and at
    # 300 the loss also drowned pose and lighting. The mean predictor costs about 12 mm² here.
    "expression": 0.1,
    "albedo": 2.0,
    "light": 5.0,
    "angles": 50.0,  # radians²: 1° error -> 0.015, 5° -> 0.38
    "translation": 1.0,
    "landmarks": 20.0,  # smooth-L1 in image sizes: 1 px at 64 px -> 0.31
}


@functools.lru_cache(maxsize=1)
def expression_metric() -> torch.Tensor:
    """``[53, 53]`` Gram matrix ``M`` with ``Δβᵀ M Δβ`` = mean squared displacement (mm²) of the face.

    Over the vertices of the ICT ``face`` part: ``M = B Bᵀ / V`` with the expression basis ``B``
    ``[53, V·3]`` in millimetres. Its diagonal says how much each blendshape moves the face
    (jawOpen: 11 mm RMS per unit weight; eye gaze: 0.4 mm).
    """
    model = morphable.load_face_model()
    selected = model.vertex_part == morphable.PART_NAMES.index("face")  # [V]
    basis = model.expression_basis.view(NUM_EXPRESSION, -1, 3)[:, selected] * 10.0  # [53, V', 3] mm
    return (torch.einsum("avc,bvc->ab", basis, basis) / int(selected.sum())).float()


def reconstruction_loss(
    net: ReconstructionNet,
    output: ReconstructionOutput,
    target_params: torch.Tensor,
    target_landmarks: torch.Tensor,
    weights: Optional[Dict[str, float]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Weighted per-component loss. Returns ``(total, {part: unweighted value})``.

    Each component's error is a *mean* over its dimensions, so the 100 identity
    weights (most of which a 64-px image barely shows) count as much as the 6
    pose values, not 17 times as much. Expression is the exception: its error is
    the mean squared displacement of the face surface (:func:`expression_metric`).
    """
    unknown = set(weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown loss weights {sorted(unknown)}; expected keys of DEFAULT_LOSS_WEIGHTS: {list(DEFAULT_LOSS_WEIGHTS)}")
    weights = {**DEFAULT_LOSS_WEIGHTS, **(weights or {})}
    batch = output.params.shape[0]
    assert_shape(target_params, [batch, NUM_PARAMS], "target_params")
    assert_shape(target_landmarks, [batch, NUM_LANDMARKS, 2], "target_landmarks")
    squared = (output.params_normalized - net.normalize_params(target_params)) ** 2  # [B, 196]
    parts = {name: squared[:, SLICES[name]].mean() for name in ("identity", "albedo", "light")}
    delta = output.params[:, SLICES["expression"]] - target_params[:, SLICES["expression"]]  # [B, 53]
    metric = expression_metric().to(delta)
    parts["expression"] = torch.einsum("ba,ac,bc->b", delta, metric, delta).mean()
    parts["angles"] = squared[:, ANGLE_SLICE].mean()
    parts["translation"] = squared[:, TRANSLATION_SLICE].mean()
    size = float(net.config.image_size)
    parts["landmarks"] = nnf.smooth_l1_loss(output.landmarks / size, target_landmarks / size, beta=1.0 / size)
    total = sum(weights[name] * value for name, value in parts.items())
    return total, parts


# ----------------------------------------------------------------------------
# Augmentation: make F read GAN images (softer, noisier, colour-shifted) too.


@dataclasses.dataclass
class AugmentConfig:
    """Random degradations applied to each training image (seeded). Zero everything to turn one off."""

    max_shift_px: int = 2  # integer translation in [-max, max]; landmarks and (tx, ty) move with it
    blur_prob: float = 0.5
    blur_sigma: Tuple[float, float] = (0.3, 1.0)  # Gaussian sigma in pixels, when blurred
    noise_std: float = 0.03  # per-image noise std drawn from [0, noise_std]
    brightness: float = 0.08  # per-image gain in [1 - b, 1 + b]; the light labels are scaled to match
    channel_gain: float = 0.04  # per-channel gain on top; also applied to the light labels


def shift_images(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Translate each image by an integer ``shift [B, 2] = (dx, dy)`` pixels, replicating the border.

    ``out[b, :, i, j] = images[b, :, i - dy, j - dx]`` (clamped to the image).
    """
    batch, _, height, width = images.shape
    assert_shape(shift, [batch, 2], "shift")
    shift = shift.long()
    rows = (torch.arange(height, device=images.device)[None] - shift[:, 1:2]).clamp(0, height - 1)  # [B, H]
    cols = (torch.arange(width, device=images.device)[None] - shift[:, 0:1]).clamp(0, width - 1)  # [B, W]
    b = torch.arange(batch, device=images.device)[:, None, None]
    out = images.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def shift_images_reference(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Slow path of :func:`shift_images`: pad by replication and crop, one image at a time."""
    out = torch.empty_like(images)
    pad = int(shift.abs().max()) if shift.numel() else 0
    padded = nnf.pad(images, (pad, pad, pad, pad), mode="replicate")
    height, width = images.shape[2:]
    for b, (dx, dy) in enumerate(shift.tolist()):
        out[b] = padded[b, :, pad - dy : pad - dy + height, pad - dx : pad - dx + width]
    return out


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Blur each image with its own Gaussian ``sigma [B]`` (pixels; 0 = unchanged), separable, reflect padding."""
    batch, channels, height, width = images.shape
    assert_shape(sigma, [batch], "sigma")
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)  # [K]
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None].to(images.dtype) ** 2))  # [B, K]
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(channels, dim=0)  # [B*C, K]
    x = images.reshape(1, batch * channels, height, width)
    x = nnf.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = nnf.conv2d(x, kernel[:, None, None, :], groups=batch * channels)  # horizontal
    x = nnf.conv2d(x, kernel[:, None, :, None], groups=batch * channels)  # vertical
    return x.reshape(batch, channels, height, width)


def augment(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    params: torch.Tensor,
    generator: Union[torch.Generator, BatchShard],
    config: AugmentConfig = AugmentConfig(),
    *,
    cm_per_px: Optional[float] = None,
    camera_distance: float = 100.0,
    face_mask: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Degrade a batch like a generator would, and keep the labels consistent.

    Order: integer shift (landmarks move by the same pixels; with
    ``cm_per_px`` = 1 / focal length in pixels, the translation labels move by
    ``shift · depth / f`` so the label still describes the image), a colour
    gain (the SH light labels are scaled by the same per-channel gain:
    colour = albedo · shading is linear in γ, so this is exact up to
    clipping), then blur and noise (label-free). Returns a dict with
    ``images`` (degraded), ``clean`` (shifted and gained only, the target of a
    photometric loss), ``landmarks``, ``params``, ``face_mask`` (shifted, if given)
    and the drawn ``shift [B, 2]``.

    ``generator`` may be a :class:`~stylerig_lite.distributed.BatchShard`: the random numbers are
    then drawn for its whole global batch, of which the inputs are this process's rows.
    """
    batch = images.shape[0]
    assert_shape(images, [batch, 3, None, None], "images")
    assert_shape(landmarks, [batch, NUM_LANDMARKS, 2], "landmarks")
    assert_shape(params, [batch, NUM_PARAMS], "params")
    device = images.device
    draws = BatchShard.of(generator, batch)  # a plain generator: the whole batch (the same draws as ever)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * draws.rand(*shape)).to(device)

    # Draw every random number first, in a fixed order, so the stream does not depend on which ops are on.
    m = config.max_shift_px
    shift = draws.randint(-m, m + 1, 2).to(device)
    gains = uniform(1 - config.brightness, 1 + config.brightness, 1) * uniform(1 - config.channel_gain, 1 + config.channel_gain, 3)
    blurred = draws.rand().to(device) < config.blur_prob
    sigma = uniform(*config.blur_sigma) * blurred
    noise_std = uniform(0.0, config.noise_std)
    noise = draws.randn(*images.shape[1:]).to(device)

    out: Dict[str, torch.Tensor] = {"shift": shift}
    x = shift_images(images, shift) if m > 0 else images
    landmarks = landmarks + shift.to(landmarks.dtype)[:, None, :]
    params = params.clone()
    if cm_per_px is not None and m > 0:
        depth = camera_distance - params[:, SLICES["pose"].start + 5]  # [B] depth of the head origin
        params[:, TRANSLATION_SLICE.start] += shift[:, 0] * depth * cm_per_px  # image right = world +x
        params[:, TRANSLATION_SLICE.start + 1] -= shift[:, 1] * depth * cm_per_px  # image down = world -y
    x = (x * gains[:, :, None, None]).clamp(0, 1)
    light = params[:, SLICES["light"]].view(batch, 3, 9) * gains[:, :, None]
    params[:, SLICES["light"]] = light.reshape(batch, 27)
    out["clean"] = x
    if face_mask is not None:
        out["face_mask"] = shift_images(face_mask, shift) if m > 0 else face_mask
    if bool(blurred.any()):
        x = gaussian_blur(x, sigma)
    x = (x + noise * noise_std[:, None, None, None]).clamp(0, 1)
    out.update(images=x, landmarks=landmarks, params=params)
    return out


# ----------------------------------------------------------------------------
# Evaluation.

EstimatorLike = Union[ReconstructionNet, Callable[[torch.Tensor], Tuple[FaceParams, torch.Tensor]]]


def _estimate(estimator: EstimatorLike, images: torch.Tensor) -> Tuple[FaceParams, torch.Tensor]:
    if isinstance(estimator, ReconstructionNet):
        return estimator.estimate(images)
    if hasattr(estimator, "estimate"):
        return estimator.estimate(images)  # type: ignore[union-attr]
    return estimator(images)


@torch.no_grad()
def estimate_all(estimator: EstimatorLike, images: torch.Tensor, *, batch_size: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run an estimator over many images in batches (eval mode): ``(params [N, 196], landmarks [N, 68, 2])``."""
    was_training = isinstance(estimator, nn.Module) and estimator.training
    if isinstance(estimator, nn.Module):
        estimator.eval()
    try:
        params, landmarks = [], []
        for start in range(0, images.shape[0], batch_size):
            p, l = _estimate(estimator, images[start : start + batch_size])
            params.append(p.to_vector().cpu())
            landmarks.append(l.cpu())
    finally:
        if was_training:
            estimator.train()  # type: ignore[union-attr]
    return torch.cat(params), torch.cat(landmarks)


def parameter_errors(predicted: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """Per-component errors between two ``[N, 196]`` parameter sets (degrees for angles)."""
    assert_shape(predicted, [None, NUM_PARAMS], "predicted")
    assert_shape(target, [predicted.shape[0], NUM_PARAMS], "target")
    out: Dict[str, float] = {}
    angle_error = torch.rad2deg((predicted[:, ANGLE_SLICE] - target[:, ANGLE_SLICE]).abs())  # [N, 3]
    for i, name in enumerate(("yaw", "pitch", "roll")):
        out[f"{name}_deg_median"] = float(angle_error[:, i].median())
        out[f"{name}_deg_mean"] = float(angle_error[:, i].mean())
    diff = predicted - target
    out["translation_cm_mean"] = float(diff[:, TRANSLATION_SLICE].abs().mean())
    out["expression_mae"] = float(diff[:, SLICES["expression"]].abs().mean())
    out["jaw_open_mae"] = float(diff[:, SLICES["expression"].start + morphable.expression_index("jawOpen")].abs().mean())
    out["light_rmse"] = float(diff[:, SLICES["light"]].pow(2).mean().sqrt())
    out["identity_rmse"] = float(diff[:, SLICES["identity"]].pow(2).mean().sqrt())
    out["albedo_rmse"] = float(diff[:, SLICES["albedo"]].pow(2).mean().sqrt())
    return out


@torch.no_grad()
def estimator_agreement(a: EstimatorLike, b: EstimatorLike, images: torch.Tensor, *, batch_size: int = 128) -> Dict[str, float]:
    """How far two estimators agree on the same images (no labels needed, so it works on GAN images too).

    Same keys as :func:`parameter_errors` (errors of ``a`` measured against
    ``b``) plus ``landmarks_px_mean`` and the correlation of their yaw estimates.
    """
    params_a, landmarks_a = estimate_all(a, images, batch_size=batch_size)
    params_b, landmarks_b = estimate_all(b, images, batch_size=batch_size)
    out = parameter_errors(params_a, params_b)
    out["landmarks_px_mean"] = float((landmarks_a - landmarks_b).norm(dim=-1).mean())
    for i, name in enumerate(("yaw", "pitch", "roll")):
        pair = torch.stack([params_a[:, ANGLE_SLICE.start + i], params_b[:, ANGLE_SLICE.start + i]])
        out[f"{name}_correlation"] = float(torch.corrcoef(pair)[0, 1]) if images.shape[0] > 1 else math.nan
    return out


def format_metrics(metrics: Dict[str, float], keys: Optional[Sequence[str]] = None) -> str:
    """One line of the headline metrics (for logs and the CLI)."""
    keys = keys or (
        "yaw_deg_median", "pitch_deg_median", "roll_deg_median", "expression_mae", "jaw_open_mae", "light_rmse",
        "identity_rmse", "landmarks_px_mean", "photometric_face_mae_255",
    )
    return "  ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)
