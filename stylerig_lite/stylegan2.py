"""StyleGAN2 in one readable file: mapping, synthesis, discriminator, checkpoints, official import.

Modelled on NVlabs' stylegan2-ada-pytorch ``training/networks.py`` (Karras et al., "Analyzing and
Improving the Image Quality of StyleGAN", CVPR 2020, and "Training Generative Adversarial Networks
with Limited Data", NeurIPS 2020). The code is our own, but the *layout* is the official one on
purpose: every module, parameter and buffer has the official name (``mapping.fc0.weight``,
``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``,
``synthesis.b8.conv1.noise_const``, ``synthesis.b64.torgb.weight`` ...), the official
initialisation and the official runtime scaling (equalized learning rate), so that the ``G_ema`` of
an official ``.pkl`` loads with ``load_state_dict`` one to one (see :func:`load_official_pickle`).

What is different from the official code, and why:

* Everything runs in float32 with plain PyTorch ops (no CUDA plugins): the book must run on a CPU
  and on Colab. ``num_fp16_res`` is kept in the config only so official checkpoints round-trip.
* The generator is built from a :class:`StyleGAN2Config` (minGPT style, with presets ``tiny``,
  ``cpu64`` and ``ffhq1024``) instead of nested keyword dicts; :func:`config_from_official_kwargs`
  translates the official ``init_kwargs``.
* ``MappingNetwork`` updates ``w_avg`` only when asked (``update_emas=True``, the StyleGAN3
  convention) instead of whenever the module is in training mode, so that sampling a model in train
  mode never silently moves the truncation centre.
* Random noise inputs accept an optional ``noise_generator`` so that training is reproducible
  without touching the global RNG; a :class:`~stylerig_lite.distributed.BatchShard` there draws the
  noise of a whole global batch and keeps this process's rows (data-parallel training).

Each custom op has a fast path and a slow reference path beside it (``impl='fast' | 'ref'``),
checked against each other in ``tests/test_stylegan2.py``:

* :func:`upfirdn2d`: pad, upsample, FIR-filter and downsample (fast: transposed / strided depthwise
  convolution; reference: literal zero insertion, padding, filtering and decimation);
* :func:`conv2d_resample`: convolution with up/downsampling (fast: transposed or strided convolution
  plus one filter pass; reference: upfirdn2d then a plain convolution);
* :func:`modulated_conv2d`: fused (one grouped convolution with per-sample weights, the official
  way) and non-fused (modulate the activations, one shared convolution, demodulate the outputs).

Shapes are written NVlabs style: ``[B, C, H, W]`` images, ``[B, num_ws, w_dim]`` W+ latents.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checks import assert_shape
from .distributed import BatchShard

__all__ = [
    "StyleGAN2Config",
    "PRESETS",
    "get_config",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "downsample2d",
    "conv2d_resample",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "bias_act",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "MappingNetwork",
    "SynthesisLayer",
    "ToRGBLayer",
    "SynthesisBlock",
    "SynthesisNetwork",
    "Generator",
    "DiscriminatorBlock",
    "MinibatchStdLayer",
    "DiscriminatorEpilogue",
    "Discriminator",
    "count_parameters",
    "save_checkpoint",
    "load_checkpoint",
    "load_generator",
    "load_discriminator",
    "load_official_pickle",
    "read_official_pickle",
    "config_from_official_kwargs",
    "CHECKPOINT_KIND",
]

# ----------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass
class StyleGAN2Config:
    """Everything needed to rebuild a generator and its discriminator; stored in every checkpoint.

    Channel counts follow the official rule ``channels(res) = min(channel_base // res, channel_max)``
    so the official layouts are reproduced exactly (``ffhq1024``: 512 channels up to 64 px, then
    256, 128, 64, 32) and thin high-resolution layers on the CPU are one number away
    (``cpu64``: base 1024, max 128 gives 128/128/64/32/16 at 4/8/16/32/64 px).
    """

    name: str = "custom"
    img_resolution: int = 64          # Output resolution (power of two >= 4).
    img_channels: int = 3             # Colour channels.
    z_dim: int = 256                  # Input latent (Z) size.
    c_dim: int = 0                    # Conditioning label size, 0 = unconditional.
    w_dim: int = 256                  # Intermediate latent (W) size.
    mapping_layers: int = 8           # Fully connected layers in the mapping network.
    mapping_lr_multiplier: float = 0.01   # Learning-rate multiplier of the mapping layers.
    w_avg_beta: float = 0.995         # Decay of the tracked mean of W (truncation centre).
    channel_base: int = 1024          # Generator channels: min(channel_base // res, channel_max).
    channel_max: int = 128
    architecture: str = "skip"        # Generator: 'skip' (StyleGAN2 default) or 'resnet'.
    use_noise: bool = True            # Per-layer noise inputs.
    conv_clamp: float | None = None   # Clamp conv outputs to +-X (official FFHQ uses 256).
    num_fp16_res: int = 0             # Kept for official round trips; we always compute in fp32.
    fused_modconv: bool = False       # Default modulated-conv path (non-fused measured faster on a CPU).
    channels_last: bool = False       # NHWC convolutions (faster on a CPU; weights and outputs unaffected).
    d_channel_base: int = 1024        # Discriminator channels, same rule.
    d_channel_max: int = 128
    d_architecture: str = "resnet"    # Discriminator: 'resnet' (StyleGAN2 default) or 'orig'.
    mbstd_group_size: int = 4         # Minibatch-stddev group size (None = whole batch).
    mbstd_num_channels: int = 1       # Minibatch-stddev features, 0 = disable.

    def __post_init__(self) -> None:
        res = self.img_resolution
        if not isinstance(res, int) or res < 4 or res & (res - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {res!r}")
        for field in ("img_channels", "w_dim", "mapping_layers", "channel_base", "channel_max",
                      "d_channel_base", "d_channel_max"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.z_dim < 0 or self.c_dim < 0 or (self.z_dim == 0 and self.c_dim == 0):
            raise ValueError(f"need z_dim > 0 or c_dim > 0 (got z_dim={self.z_dim}, c_dim={self.c_dim})")
        if self.architecture not in ("skip", "resnet", "orig"):
            raise ValueError(f"architecture must be 'skip', 'resnet' or 'orig', got {self.architecture!r}")
        if self.d_architecture not in ("resnet", "orig"):
            raise ValueError(f"d_architecture must be 'resnet' or 'orig', got {self.d_architecture!r}")

    @property
    def block_resolutions(self) -> list[int]:
        """Generator block resolutions, 4 ... img_resolution."""
        return [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """W+ length: one w per synthesis conv layer plus one for the final toRGB (official count)."""
        return 1 + 2 * (len(self.block_resolutions) - 1) + 1

    def g_channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def d_channels(self, res: int) -> int:
        return min(self.d_channel_base // res, self.d_channel_max)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StyleGAN2Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown StyleGAN2Config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "StyleGAN2Config":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, StyleGAN2Config] = {
    # Unit tests: 16 px, 6 ws, seconds to train a few steps.
    "tiny": StyleGAN2Config(name="tiny", img_resolution=16, z_dim=32, w_dim=32, mapping_layers=2,
                            channel_base=256, channel_max=32, d_channel_base=256, d_channel_max=32,
                            fused_modconv=False, channels_last=True),
    # The book's FaceWorld GAN: 64 px, 10 ws x 256, G 128/128/64/32/16, D 16/32/64/128/128
    # (DESIGN section 5: thin high-resolution layers are what makes CPU training feasible).
    # Non-fused modconv + channels-last convolutions: the fastest combination measured on the
    # 2-core CPU (CPU seconds per training step at batch 32, 1 thread, best of 5: non-fused +
    # channels-last 1.39, non-fused 1.53, fused + channels-last 1.58, fused 1.72; inference at
    # batch 16: 177 vs 81 images/s per core for non-fused + channels-last vs fused).
    "cpu64": StyleGAN2Config(name="cpu64", img_resolution=64, z_dim=256, w_dim=256, mapping_layers=8,
                             channel_base=1024, channel_max=128, d_channel_base=1024, d_channel_max=128,
                             fused_modconv=False, channels_last=True),
    # Official FFHQ 1024 layout (stylegan2 / paper1024 configs): 18 ws x 512, conv_clamp 256.
    "ffhq1024": StyleGAN2Config(name="ffhq1024", img_resolution=1024, z_dim=512, w_dim=512,
                                mapping_layers=8, channel_base=32768, channel_max=512,
                                conv_clamp=256, num_fp16_res=4, fused_modconv=True,
                                d_channel_base=32768, d_channel_max=512),
}


def get_config(name: str = "cpu64", **overrides: Any) -> StyleGAN2Config:
    """A copy of preset ``name`` ('tiny', 'cpu64', 'ffhq1024') with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown StyleGAN2 preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Low-level ops: FIR filtering with resampling (upfirdn2d), resampling convolution, bias+activation.


def setup_filter(f: Sequence[float] | torch.Tensor = (1, 3, 3, 1), normalize: bool = True,
                 gain: float = 1.0) -> torch.Tensor:
    """2-D FIR filter ``[fh, fw]`` from 1-D taps (outer product), normalised to unit DC gain.

    [1, 3, 3, 1] is the binomial low-pass filter StyleGAN2 uses for all up/downsampling.
    """
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1:
        f = torch.outer(f, f)
    if f.ndim != 2 or f.numel() == 0:
        raise ValueError(f"filter must be 1-D taps or a 2-D kernel, got shape {tuple(f.shape)}")
    if normalize:
        f = f / f.sum()
    return f * gain


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Padding as (x_before, x_after, y_before, y_after), the official order."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return padding[0], padding[1], padding[2], padding[3]
    raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}")


def _depthwise(f: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    return f.to(dtype)[None, None].expand(channels, 1, *f.shape)  # [C, 1, fh, fw]


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, flip_filter: bool = False, gain: float = 1.0,
              impl: str = "fast") -> torch.Tensor:
    """Upsample (insert up-1 zeros), pad, convolve with FIR ``f`` and downsample, per channel.

    Same semantics as the official op: padding is given in upsampled pixels, negative padding
    crops, ``flip_filter=False`` means true convolution and ``gain`` scales the filter.
    ``impl='ref'`` does each step literally; ``impl='fast'`` never builds the zero-stuffed image
    (transposed depthwise convolution) and never computes dropped pixels (strided convolution).
    """
    assert_shape(x, [None, None, None, None], "upfirdn2d input x")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if f.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D filter from setup_filter(), got shape {tuple(f.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    pad = _parse_padding(padding)
    if impl == "ref":
        return _upfirdn2d_ref(x, f, up, down, pad, flip_filter, gain)
    if impl == "fast":
        return _upfirdn2d_fast(x, f, up, down, pad, flip_filter, gain)
    raise ValueError(f"impl must be 'fast' or 'ref', got {impl!r}")


def _upfirdn2d_ref(x, f, up, down, pad, flip_filter, gain):
    """Slow reference: literal zero insertion, padding/cropping, depthwise filtering, decimation."""
    B, C, H, W = x.shape
    px0, px1, py0, py1 = pad
    # Upsample by inserting zeros after each pixel.
    x = x.reshape(B, C, H, 1, W, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(B, C, H * up, W * up)
    # Pad (positive) and crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # conv2d is a correlation; a true convolution needs the flipped filter.
    f = f * gain
    if not flip_filter:
        f = f.flip([0, 1])
    x = F.conv2d(x, _depthwise(f, C, x.dtype), groups=C)
    return x[:, :, ::down, ::down]


def _upfirdn2d_fast(x, f, up, down, pad, flip_filter, gain):
    B, C, H, W = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = pad
    f = f * gain
    if up > 1:
        # conv_transpose2d(x, k, stride=up) equals the full convolution of the zero-stuffed image
        # with k; the reference output is a window of it starting at (f - 1 - pad_before).
        k = f.flip([0, 1]) if flip_filter else f
        x = F.conv_transpose2d(x, _depthwise(k, C, x.dtype), stride=up, groups=C)
        x = F.pad(x, [px0 - (fw - 1), px1 + up - fw, py0 - (fh - 1), py1 + up - fh])
        return x[:, :, ::down, ::down] if down > 1 else x
    # No upsampling: pad/crop once, then a (strided) correlation with the flipped filter.
    x = F.pad(x, [px0, px1, py0, py1])
    k = f if flip_filter else f.flip([0, 1])
    return F.conv2d(x, _depthwise(k, C, x.dtype), stride=down, groups=C)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float = 1.0, impl: str = "fast") -> torch.Tensor:
    """Upsample by ``up`` with FIR filter ``f``; output is exactly ``up`` times larger."""
    fh, fw = f.shape
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, gain: float = 1.0, impl: str = "fast") -> torch.Tensor:
    """Low-pass filter with ``f`` and keep every ``down``-th pixel; output is ``down`` times smaller."""
    fh, fw = f.shape
    p = [(fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p, gain=gain, impl=impl)


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True, channels_last=False):
    """conv2d is a correlation (``flip_weight=True``); ``flip_weight=False`` is a true convolution."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if channels_last:
        # oneDNN convolves NHWC tensors without reordering them to its blocked layout and back
        # on every call: measured 10-25% less CPU time per training step and 2x faster batched
        # inference with the non-fused modconv (the grouped, fused one gains nothing).
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    op = F.conv_transpose2d if transpose else F.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1,
                    down: int = 1, padding: int | Sequence[int] = 0, groups: int = 1,
                    flip_weight: bool = True, impl: str = "fast", channels_last: bool = False) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling, padding given w.r.t. the upsampled image.

    ``impl='ref'``: upfirdn2d(up) -> conv2d -> upfirdn2d(down), exactly the definition.
    ``impl='fast'``: the cheapest equivalent order for each case (as in the official op):
    1x1 conv with down -> downsample first; 1x1 with up -> convolve first; 3x3 with down -> filter,
    then *strided* convolution (the DESIGN measurement: 4x cheaper than convolving at full
    resolution); 3x3 with up -> transposed strided convolution, then one filter pass.
    """
    assert_shape(x, [None, None, None, None], "conv2d_resample input x")
    assert_shape(w, [None, None, None, None], "conv2d_resample weight w")
    if up > 1 or down > 1:
        if f is None:
            raise ValueError("conv2d_resample with up/down needs a resampling filter f (see setup_filter)")
    out_channels, in_per_group, kh, kw = w.shape
    fh, fw = f.shape if f is not None else (1, 1)
    px0, px1, py0, py1 = _parse_padding(padding)
    # Extend padding to make room for the resampling filter (same rule as upsample2d/downsample2d).
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if impl == "ref":
        x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up * up, impl="ref")
        x = _conv(x, w, groups=groups, flip_weight=flip_weight, channels_last=channels_last)
        if down > 1:
            x = upfirdn2d(x, f, down=down, impl="ref")
        return x
    if impl != "fast":
        raise ValueError(f"impl must be 'fast' or 'ref', got {impl!r}")

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight, channels_last=channels_last)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight, channels_last=channels_last)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight, channels_last=channels_last)
    if up > 1:
        # Transposed convolution wants [in, out/groups, kh, kw] weights, per group.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        # conv_transpose2d already applies the kernel in convolution orientation, hence the flip
        # of flip_weight; the transposed conv covers kw - 1 / kw - up of the padding itself.
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight,
                  channels_last=channels_last)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight, channels_last=channels_last)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return _conv(x, w, groups=groups, flip_weight=flip_weight, channels_last=channels_last)


_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    # name: (function, default gain). The gain keeps the activations' second moment ~1 (He init).
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
}


def _activation(name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """Add bias (along dim 1), apply activation, multiply by gain, clamp to +-clamp (official order)."""
    func, default_gain = _activation(act)
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    x = func(x)
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (the 'pixel norm' applied to z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, down: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True, impl: str = "fast",
                     channels_last: bool = False) -> torch.Tensor:
    """StyleGAN2's modulated convolution: scale input channels by ``styles``, optionally demodulate.

    Per sample b: w'_{oikk} = w_{oikk} s_{bi}; demodulated: w''_{oikk} = w'_{oikk} / sqrt(sum_ikk w'^2).
    fused: build the per-sample weights and run one grouped convolution (groups = batch).
    non-fused: x * s -> shared convolution with w -> * demodulation coefficients. The two are
    mathematically identical because modulation and demodulation are per input / output channel.
    ``channels_last`` applies to the non-fused path only (it slowed the grouped convolution down).
    """
    B = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(weight, [out_channels, in_channels, kh, kw], "modulated_conv2d weight")  # [OIkk]
    assert_shape(x, [B, in_channels, None, None], "modulated_conv2d input x")  # [BIHW]
    assert_shape(styles, [B, in_channels], "modulated_conv2d styles")  # [BI]

    w = None
    dcoefs = None
    if impl == "ref":
        # Reference (the official code): materialise the per-sample weights [B, O, I, k, k].
        if demodulate or fused_modconv:
            w = weight.unsqueeze(0) * styles.reshape(B, 1, -1, 1, 1)  # [BOIkk]
        if demodulate:
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [BO]
    else:
        # sum_ikk (w_oikk s_bi)^2 = sum_i s_bi^2 sum_kk w_oikk^2: one [B, I] x [I, O] product instead
        # of building, squaring and summing B*O*I*k*k values (and their gradients). That tensor was
        # most of a cpu64 training step's CPU time; the non-fused path now never builds it.
        if demodulate:
            dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [BO]
        if fused_modconv:
            w = weight.unsqueeze(0) * styles.reshape(B, 1, -1, 1, 1)  # [BOIkk]

    if not fused_modconv:
        x = x * styles.reshape(B, -1, 1, 1)
        x = conv2d_resample(x, weight, f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight, impl=impl, channels_last=channels_last)
        if demodulate:
            x = x * dcoefs.reshape(B, -1, 1, 1)
        if noise is not None:
            x = x + noise
        return x

    if demodulate:
        w = w * dcoefs.reshape(B, -1, 1, 1, 1)  # [BOIkk]
    x = x.reshape(1, -1, *x.shape[2:])  # [1, B*I, H, W]
    w = w.reshape(-1, in_channels, kh, kw)  # [B*O, I, k, k]
    x = conv2d_resample(x, w, f=resample_filter, up=up, down=down, padding=padding, groups=B,
                        flip_weight=flip_weight, impl=impl)
    x = x.reshape(B, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise
    return x


# ----------------------------------------------------------------------------------------------
# Layers with equalized learning rate: weights are stored N(0, 1) and scaled at runtime by
# 1/sqrt(fan_in), so Adam sees every layer at the same scale (Karras et al. 2018).


class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        _activation(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)  # [out, in]
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_features], f"{type(self).__name__} input")
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False):
        super().__init__()
        _, self.act_gain = _activation(activation)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.channels_last = channels_last
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None], f"{type(self).__name__} input")
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1), channels_last=self.channels_last)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.weight.shape[-1]}, "
                f"activation={self.activation}, up={self.up}, down={self.down}")


# ----------------------------------------------------------------------------------------------
# Generator.


class MappingNetwork(torch.nn.Module):
    """z [B, z_dim] (+ label c [B, c_dim]) -> w broadcast to W+ [B, num_ws, w_dim]."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = w_dim if c_dim > 0 else 0
        features = [z_dim + embed_features] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))  # [w_dim] running mean of w

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            assert_shape(z, [None, self.z_dim], "z (mapping input)")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional: pass a label c of shape [B, {self.c_dim}]")
            assert_shape(c, [None if x is None else x.shape[0], self.c_dim], "c (label)")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # [B, w_dim]

        if update_emas and self.w_avg_beta is not None:
            # Exponential moving average of w: the centre that truncation pulls toward.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [B, num_ws, w_dim]

        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg, but this mapping network does not track it")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


def _check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in ("random", "const", "none"):
        raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + per-pixel noise + bias + lrelu (gain sqrt 2)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False):
        super().__init__()
        _, self.act_gain = _activation(activation)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels_last = channels_last
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        # bias_init=1: styles start at 1, i.e. the modulation starts as the identity.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))  # [H, W]
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0, noise_generator: torch.Generator | None = None) -> torch.Tensor:
        _check_noise_mode(noise_mode)
        in_resolution = self.resolution // self.up
        assert_shape(x, [None, self.in_channels, in_resolution, in_resolution], "SynthesisLayer input x")
        assert_shape(w, [x.shape[0], None], "SynthesisLayer w")
        styles = self.affine(w)  # [B, in_channels]

        noise = None
        if self.use_noise and noise_mode == "random":
            if isinstance(noise_generator, BatchShard):  # this process's rows of a global batch's noise
                noise = noise_generator.randn(1, self.resolution, self.resolution).to(x.device)
                assert_shape(noise, [x.shape[0], None, None, None], "SynthesisLayer noise rows")
                noise = noise * self.noise_strength
            else:
                noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                    generator=noise_generator) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv, channels_last=self.channels_last)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 conv to RGB, no demodulation (the colour scale must stay free)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.channels_last = channels_last
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None], "ToRGBLayer input x")
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv,
                             channels_last=self.channels_last)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    """One resolution: [const | 2x-up conv0] -> conv1 -> toRGB, image skip-connection upsampled."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, use_noise: bool = True, channels_last: bool = False):
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))  # [C, 4, 4]
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, use_noise=use_noise,
                                        channels_last=channels_last)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, use_noise=use_noise, channels_last=channels_last)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "random",
                fused_modconv: bool = True, noise_generator: torch.Generator | None = None):
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"b{self.resolution} ws")
        w_iter = iter(ws.unbind(dim=1))
        layer_kwargs = dict(noise_mode=noise_mode, fused_modconv=fused_modconv, noise_generator=noise_generator)

        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [B, C, 4, 4]
            x = self.conv1(x, next(w_iter), **layer_kwargs)
        else:
            half = self.resolution // 2
            assert_shape(x, [ws.shape[0], self.in_channels, half, half], f"b{self.resolution} input x")
            if self.architecture == "resnet":
                y = self.skip(x, gain=math.sqrt(0.5))
                x = self.conv0(x, next(w_iter), **layer_kwargs)
                x = self.conv1(x, next(w_iter), gain=math.sqrt(0.5), **layer_kwargs)
                x = y + x
            else:
                x = self.conv0(x, next(w_iter), **layer_kwargs)
                x = self.conv1(x, next(w_iter), **layer_kwargs)

        if img is not None:
            half = self.resolution // 2
            assert_shape(img, [ws.shape[0], self.img_channels, half, half], f"b{self.resolution} input img")
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(torch.nn.Module):
    """W+ [B, num_ws, w_dim] -> image [B, img_channels, R, R] (roughly in [-1, 1])."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, architecture: str = "skip", conv_clamp: float | None = None,
                 use_noise: bool = True, channels_last: bool = False):
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim,
                                   resolution=res, img_channels=img_channels, is_last=is_last,
                                   architecture=architecture, conv_clamp=conv_clamp, use_noise=use_noise,
                                   channels_last=channels_last)
            # Consecutive blocks share a w: block i's toRGB uses the same w as block i+1's conv0.
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool | None = None,
                noise_generator: torch.Generator | None = None) -> torch.Tensor:
        """``ws``: W+ ``[B, num_ws, w_dim]``, or one w ``[B, w_dim]`` that is broadcast to all layers."""
        if isinstance(ws, torch.Tensor) and ws.ndim == 2:
            assert_shape(ws, [None, self.w_dim], "ws (a single w per sample)")
            ws = ws.unsqueeze(1).repeat([1, self.num_ws, 1])
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws (W+ latents)")
        _check_noise_mode(noise_mode)
        if fused_modconv is None:
            fused_modconv = bool(getattr(self, "default_fused_modconv", False))
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused_modconv,
                           noise_generator=noise_generator)
        return img.contiguous()  # [B, C, R, R] in the default layout, whatever the conv layout was


def _build_with_seed(seed: int | None, build: Callable[[], None]) -> None:
    """Run ``build`` with the global RNG seeded (and restored afterwards) so init is reproducible."""
    if seed is None:
        build()
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        build()


class Generator(torch.nn.Module):
    """z [B, z_dim] -> mapping -> W+ [B, num_ws, w_dim] -> synthesis -> image [B, 3, R, R].

    ``G(z)``, ``G.mapping(z)`` and ``G.synthesis(ws)`` mirror the official API; ``G.synthesis`` also
    takes any edited W+ directly (RigNet works there).
    """

    def __init__(self, config: StyleGAN2Config | str = "cpu64", seed: int | None = None):
        super().__init__()
        if isinstance(config, str):
            config = get_config(config)
        if not isinstance(config, StyleGAN2Config):
            raise TypeError(f"config must be a StyleGAN2Config or a preset name, got {type(config).__name__}")
        self.config = config
        self.z_dim = config.z_dim
        self.c_dim = config.c_dim
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels

        def build() -> None:
            self.synthesis = SynthesisNetwork(
                w_dim=config.w_dim, img_resolution=config.img_resolution, img_channels=config.img_channels,
                channel_base=config.channel_base, channel_max=config.channel_max,
                architecture=config.architecture, conv_clamp=config.conv_clamp, use_noise=config.use_noise,
                channels_last=config.channels_last)
            self.mapping = MappingNetwork(
                z_dim=config.z_dim, c_dim=config.c_dim, w_dim=config.w_dim, num_ws=self.synthesis.num_ws,
                num_layers=config.mapping_layers, lr_multiplier=config.mapping_lr_multiplier,
                w_avg_beta=config.w_avg_beta)

        _build_with_seed(seed, build)
        self.num_ws = self.synthesis.num_ws
        self.synthesis.default_fused_modconv = config.fused_modconv
        assert self.num_ws == config.num_ws

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "random",
                fused_modconv: bool | None = None, update_emas: bool = False,
                noise_generator: torch.Generator | None = None) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv,
                              noise_generator=noise_generator)

    def sample_z(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Standard normal latents ``[batch_size, z_dim]``."""
        return torch.randn([batch_size, self.z_dim], generator=generator, device=device)

    def extra_repr(self) -> str:
        c = self.config
        return (f"preset={c.name!r}, resolution={c.img_resolution}, num_ws={self.num_ws}, w_dim={c.w_dim}, "
                f"channels={[c.g_channels(r) for r in c.block_resolutions]}")


# ----------------------------------------------------------------------------------------------
# Discriminator (residual, as in StyleGAN2 config F).


class DiscriminatorBlock(torch.nn.Module):
    """[fromRGB] -> conv0 3x3 -> conv1 3x3 stride-2 (blur first) + 1x1 stride-2 residual skip."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       conv_clamp=conv_clamp, channels_last=channels_last)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 conv_clamp=conv_clamp, channels_last=channels_last)
        # Strided conv after a blur: computes only the kept output pixels (DESIGN: 4x cheaper than
        # convolving at full resolution and downsampling afterwards).
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp, channels_last=channels_last)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    resample_filter=resample_filter, channels_last=channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x is not None:
            assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], f"D b{self.resolution} input x")
        if self.in_channels == 0:
            assert_shape(img, [None, self.img_channels, self.resolution, self.resolution],
                         f"D b{self.resolution} input img")
            x = self.fromrgb(img)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, None


class MinibatchStdLayer(torch.nn.Module):
    """Append the mean standard deviation across groups of samples as extra feature maps.

    Lets D see batch-level variety, which discourages mode collapse.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        Fc = self.num_channels
        if N % G != 0:
            raise ValueError(f"minibatch-std: batch size {N} must be a multiple of the group size {G}; "
                             f"use a batch size divisible by {G} or set mbstd_group_size")
        c = C // Fc
        y = x.reshape(G, -1, Fc, c, H, W)  # [GnFcHW] split batch into n groups of G samples
        y = y - y.mean(dim=0)  # [GnFcHW]
        y = y.square().mean(dim=0)  # [nFcHW] variance over the group
        y = (y + 1e-8).sqrt()  # [nFcHW]
        y = y.mean(dim=[2, 3, 4])  # [nF]
        y = y.reshape(-1, Fc, 1, 1).repeat(G, 1, H, W)  # [NFHW]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    """4x4: minibatch-std -> conv 3x3 -> fc -> out (one logit)."""

    def __init__(self, in_channels: int, resolution: int, img_channels: int, mbstd_group_size: int | None = 4,
                 mbstd_num_channels: int = 1, activation: str = "lrelu", conv_clamp: float | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3,
                                activation=activation, conv_clamp=conv_clamp, channels_last=channels_last)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], "D epilogue input x")
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)  # [B, 1]


class Discriminator(torch.nn.Module):
    """image [B, 3, R, R] -> realness logit [B, 1] (unconditional; c_dim > 0 is not supported here)."""

    def __init__(self, config: StyleGAN2Config | str = "cpu64", seed: int | None = None):
        super().__init__()
        if isinstance(config, str):
            config = get_config(config)
        if config.c_dim != 0:
            raise ValueError("the discriminator here is unconditional; set c_dim=0 to train a GAN")
        self.config = config
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.block_resolutions = [2 ** i for i in range(int(math.log2(config.img_resolution)), 2, -1)]

        def build() -> None:
            for res in self.block_resolutions:
                block = DiscriminatorBlock(
                    config.d_channels(res) if res < config.img_resolution else 0, config.d_channels(res),
                    config.d_channels(res // 2), resolution=res, img_channels=config.img_channels,
                    architecture=config.d_architecture, conv_clamp=config.conv_clamp,
                    channels_last=config.channels_last)
                setattr(self, f"b{res}", block)
            self.b4 = DiscriminatorEpilogue(config.d_channels(4), resolution=4, img_channels=config.img_channels,
                                            mbstd_group_size=config.mbstd_group_size,
                                            mbstd_num_channels=config.mbstd_num_channels,
                                            conv_clamp=config.conv_clamp, channels_last=config.channels_last)

        _build_with_seed(seed, build)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        R = self.img_resolution
        assert_shape(img, [None, self.img_channels, R, R], "D input img")
        x = None
        for res in self.block_resolutions:
            x, _ = getattr(self, f"b{res}")(x, img)
        if x is None:  # 4 px discriminator: only the epilogue, fed by a fromRGB-less image.
            raise ValueError("img_resolution 4 is too small for the discriminator (needs >= 8)")
        return self.b4(x)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


def _to_cpu(obj: Any) -> Any:
    """Recursively move tensors to the CPU; an object holding no GPU tensor is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        moved = {k: _to_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj  # unchanged (keeps a state dict's _metadata and the file byte-identical)
        out = type(obj)(moved.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        moved_items = [_to_cpu(v) for v in obj]
        if all(a is b for a, b in zip(moved_items, obj)):
            return obj
        return type(obj)(moved_items)
    return obj


def _default_file_mode() -> int:
    """rw for everyone minus the umask: what ``open()`` would give (mkstemp always uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_torch_save(payload: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    nets = {k: _to_cpu(v) for k, v in {"G": _state_dict_of(G), "D": _state_dict_of(D), "G_ema": _state_dict_of(G_ema)}.items()}
    opts = {k: _to_cpu(v) for k, v in {"opt_G": _state_dict_of(opt_G), "opt_D": _state_dict_of(opt_D)}.items()}
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
        "extra": _to_cpu(dict(extra)) if extra is not None else {},
    }
    path = Path(path)
    _atomic_torch_save(payload, path)
    return path


def save_generator_only(path: str | os.PathLike, G_ema: Generator, step: int = 0, images_seen: int = 0) -> Path:
    """A compact file with just ``G_ema`` (float16) and its config: what one samples and rigs.

    Loads with :func:`load_generator`; the embedded FaceWorld generator is such a file.
    """
    save_checkpoint(path, G_ema, G_ema=G_ema, step=step, images_seen=images_seen, compact=True)
    data = torch.load(path, weights_only=True)
    data["G"] = None  # one copy of the weights: G is G_ema here
    _atomic_torch_save(data, Path(path))
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint` (safe: ``weights_only=True``).

    Returns the payload dict with float32 tensors (compact checkpoints are widened again).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no StyleGAN2 checkpoint at {path}; train one with "
                                f"stylerig_lite.train_gan or check the path")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickles with code, ...
        hint = ""
        if path.suffix == ".pkl":
            hint = " (an official NVlabs .pkl? use stylerig_lite.stylegan2.load_official_pickle)"
        raise ValueError(f"{path} is not a readable StyleGAN2 checkpoint{hint}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a StyleGAN2 checkpoint (kind={kind!r}, expected {CHECKPOINT_KIND!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {payload.get('version')!r} "
                         f"(this code reads version {CHECKPOINT_VERSION})")
    if payload.get("compact"):
        for key in ("G", "D", "G_ema", "opt_G", "opt_D"):
            payload[key] = _cast_floats(payload[key], torch.float32)
    return payload


def _restore(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the stored {what} weights do not fit its config: {exc}") from exc


def load_generator(path: str | os.PathLike, which: str = "G_ema", map_location: str | torch.device = "cpu") -> Generator:
    """Build a :class:`Generator` from the config stored in a checkpoint and load its weights.

    ``which='G_ema'`` (default, the one to sample from; falls back to ``G`` if absent) or ``'G'``.
    Returned in eval mode with gradients off.
    """
    if which not in ("G_ema", "G"):
        raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
    path = Path(path)
    payload = load_checkpoint(path, map_location=map_location)
    if which == "G_ema" and payload.get("G_ema") is None and EMA_REFERENCE_KEY in (payload.get("extra") or {}):
        payload["G_ema"] = resolve_ema_reference(payload, path, map_location=map_location)
    state = payload.get(which) or payload.get("G")
    G = Generator(StyleGAN2Config.from_dict(payload["config"]))
    _restore(G, state, which, path)
    return G.eval().requires_grad_(False)


# A slim resume checkpoint (train_gan.slim_resume_checkpoint) may hold its G_ema by reference to a
# generator-only file with the same weights (the embedded faceworld_stylegan2.pt), so that the
# committed resume state does not carry a second copy of them.
EMA_REFERENCE_KEY = "G_ema_file"


def resolve_ema_reference(payload: Mapping[str, Any], path: str | os.PathLike, ema_file: str | os.PathLike | None = None,
                          map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The G_ema state dict that ``payload`` (read from ``path``) stores by reference.

    Looks for the referenced file at ``ema_file`` if given, else beside ``path``, else among the
    package's embedded weights; a candidate counts only if its sha256 matches the reference.
    """
    from .pretrained import WEIGHTS_DIR, sha256_of

    ref = (payload.get("extra") or {}).get(EMA_REFERENCE_KEY)
    if not ref:
        raise ValueError(f"{path} holds no G_ema and no reference to one")
    candidates = [Path(ema_file)] if ema_file is not None else [Path(path).parent / ref["name"], WEIGHTS_DIR / ref["name"]]
    looked = []
    for candidate in candidates:
        if not candidate.is_file():
            looked.append(f"{candidate} (missing)")
            continue
        actual = sha256_of(candidate)
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


# ----------------------------------------------------------------------------------------------
# Official NVlabs stylegan2-ada-pytorch pickles, read WITHOUT executing anything from them.
#
# An official snapshot is ``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
# training_set_kwargs=...))``. Each network object is a "persistent class" instance that pickles as
# ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` holds the *full
# source code* of training/networks.py (``module_src``), the class name and the object's
# ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...). A plain
# ``pickle.load`` would ``exec`` that source: arbitrary code from a downloaded file. Instead we
# allow only a whitelist of harmless reconstructors, capture ``meta`` as data, and copy the
# tensors into our own classes, which use the official names.


class OfficialPickleError(ValueError):
    """The file is not an official StyleGAN2-ADA pickle (or holds something we refuse to load)."""


class EasyDictStub(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access) when unpickling."""


@dataclasses.dataclass
class PersistentRecord:
    """A captured persistent object: its class name and state. ``module_src`` is kept as text only."""

    class_name: str
    state: dict
    version: int
    module_src_sha256: str

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


def _capture_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement for ``_reconstruct_persistent_obj``: record, never exec ``meta['module_src']``."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: malformed persistent-object record")
    src = meta.get("module_src")
    digest = hashlib.sha256(src.encode("utf-8", "replace")).hexdigest() if isinstance(src, str) else ""
    state = meta.get("state")
    if not isinstance(state, dict):
        raise OfficialPickleError(f"not an official StyleGAN2-ADA pickle: {meta['class_name']} has no state dict")
    return PersistentRecord(meta["class_name"], state, int(meta.get("version", -1)), digest)


def _safe_storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` (a nested legacy ``torch.save``), read with weights_only."""
    if not isinstance(data, (bytes, bytearray)):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: storage payload is not bytes")
    return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)


def _is_storage(obj: Any) -> bool:
    return isinstance(obj, (torch.TypedStorage, torch.UntypedStorage))


def _safe_rebuild_tensor_v2(storage, *args):
    if not _is_storage(storage):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: tensor without a storage")
    return torch._utils._rebuild_tensor_v2(storage, *args)


def _safe_rebuild_tensor(storage, *args):
    if not _is_storage(storage):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: tensor without a storage")
    return torch._utils._rebuild_tensor(storage, *args)


def _safe_rebuild_parameter(data, requires_grad, backward_hooks, *state):
    if not isinstance(data, torch.Tensor):
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: parameter without a tensor")
    # Drop any extra Python state (attributes set on the Parameter): we only need the numbers.
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    """numpy scalars/arrays (e.g. the float64 ``weight_gain`` attributes) pickle via these helpers."""
    try:  # numpy >= 2 moved multiarray to numpy._core; numpy.core is a deprecated alias there.
        from numpy._core import multiarray as _ma  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as _ma  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "scalar")] = _ma.scalar
        allowed[(mod, "_reconstruct")] = _ma._reconstruct
    return allowed


class _OfficialUnpickler(pickle.Unpickler):
    """Unpickler that resolves only a fixed whitelist of globals; everything else is refused."""

    _allowed: dict[tuple[str, str], Any] | None = None

    @classmethod
    def allowed(cls) -> dict[tuple[str, str], Any]:
        if cls._allowed is None:
            table: dict[tuple[str, str], Any] = {
                ("torch_utils.persistence", "_reconstruct_persistent_obj"): _capture_persistent_obj,
                ("dnnlib.util", "EasyDict"): EasyDictStub,
                ("dnnlib", "EasyDict"): EasyDictStub,
                ("collections", "OrderedDict"): collections.OrderedDict,
                ("builtins", "set"): set,
                ("builtins", "frozenset"): frozenset,
                ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor_v2,
                ("torch._utils", "_rebuild_tensor"): _safe_rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _safe_rebuild_parameter,
                ("torch._utils", "_rebuild_parameter_with_state"): _safe_rebuild_parameter,
                ("torch.storage", "_load_from_bytes"): _safe_storage_from_bytes,
            }
            table.update(_numpy_allowed())
            cls._allowed = table
        return cls._allowed

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed().get((module, name))
        if target is None:
            hint = ""
            if module.startswith("dnnlib.tflib"):
                hint = " (a TensorFlow StyleGAN2 pickle: convert it with NVlabs' legacy.py first)"
            raise OfficialPickleError(f"not an official StyleGAN2-ADA pickle: found class {module}.{name}{hint}; "
                                      f"refusing to load it")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise OfficialPickleError("not an official StyleGAN2-ADA pickle: unexpected persistent id "
                                  "(a torch.save file? use load_generator)")


def read_official_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle an official snapshot into plain data: ``{'G_ema': PersistentRecord, ...}``.

    No code from the file runs: network objects come back as :class:`PersistentRecord` s.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no official StyleGAN2-ADA pickle at {path}")
    with open(path, "rb") as f:
        try:
            data = _OfficialUnpickler(f).load()
        except OfficialPickleError:
            raise
        except Exception as exc:
            raise OfficialPickleError(f"{path} is not a readable StyleGAN2-ADA pickle: "
                                      f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise OfficialPickleError(f"{path}: not an official StyleGAN2-ADA pickle: top level is "
                                  f"{type(data).__name__}, expected a dict with 'G_ema'")
    return data


_OFFICIAL_G_CLASSES = {"Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
                       "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer"}


def config_from_official_kwargs(init_kwargs: Mapping[str, Any], name: str = "official") -> StyleGAN2Config:
    """Translate an official ``Generator(**init_kwargs)`` into a :class:`StyleGAN2Config`."""
    kw = dict(init_kwargs)
    mapping = dict(kw.pop("mapping_kwargs", {}) or {})
    synthesis = dict(kw.pop("synthesis_kwargs", {}) or {})
    try:
        z_dim, c_dim, w_dim = int(kw.pop("z_dim")), int(kw.pop("c_dim")), int(kw.pop("w_dim"))
        res, channels = int(kw.pop("img_resolution")), int(kw.pop("img_channels"))
    except KeyError as exc:
        raise OfficialPickleError(f"official Generator kwargs lack {exc}; got {sorted(init_kwargs)}") from exc
    unsupported = []
    for key, value in kw.items():
        if key != "epochs":  # some forks add an epoch counter; harmless
            unsupported.append(f"{key}={value!r}")
    for key in ("embed_features", "layer_features"):
        if mapping.pop(key, None) is not None:
            unsupported.append(f"mapping_kwargs.{key}")
    if mapping.pop("activation", "lrelu") != "lrelu":
        unsupported.append("mapping_kwargs.activation")
    if synthesis.pop("activation", "lrelu") != "lrelu":  # legacy.py (TF conversions) spells it out
        unsupported.append("synthesis_kwargs.activation")
    if list(synthesis.pop("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        unsupported.append("synthesis_kwargs.resample_filter")
    for key in ("channels_last", "fp16_channels_last"):
        synthesis.pop(key, None)  # memory layout only
    cfg = dict(
        name=name, img_resolution=res, img_channels=channels, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim,
        mapping_layers=int(mapping.pop("num_layers", 8)),
        mapping_lr_multiplier=float(mapping.pop("lr_multiplier", 0.01)),
        w_avg_beta=mapping.pop("w_avg_beta", 0.995),
        channel_base=int(synthesis.pop("channel_base", 32768)),
        channel_max=int(synthesis.pop("channel_max", 512)),
        num_fp16_res=int(synthesis.pop("num_fp16_res", 0)),
        conv_clamp=synthesis.pop("conv_clamp", None),
        architecture=synthesis.pop("architecture", "skip"),
        use_noise=bool(synthesis.pop("use_noise", True)),
        fused_modconv=True,
    )
    if cfg["w_avg_beta"] is None:
        unsupported.append("mapping_kwargs.w_avg_beta=None")
    unsupported += [f"mapping_kwargs.{k}" for k in mapping] + [f"synthesis_kwargs.{k}" for k in synthesis]
    if unsupported:
        raise OfficialPickleError(f"official Generator options not supported here: {unsupported}")
    if cfg["conv_clamp"] is not None:
        cfg["conv_clamp"] = float(cfg["conv_clamp"])
    cfg["d_channel_base"], cfg["d_channel_max"] = cfg["channel_base"], cfg["channel_max"]
    return StyleGAN2Config(**cfg)


def _official_state_dict(record: PersistentRecord, prefix: str, out: dict[str, torch.Tensor],
                         classes: set[str]) -> None:
    classes.add(record.class_name)
    state = record.state
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise OfficialPickleError(f"not an official StyleGAN2-ADA pickle: submodule {prefix + name} is "
                                      f"{type(child).__name__}")
        _official_state_dict(child, f"{prefix}{name}.", out, classes)


def load_official_pickle(path: str | os.PathLike, which: str = "G_ema") -> Generator:
    """Load the generator of an official NVlabs stylegan2-ada-pytorch ``.pkl`` without running its code.

    Builds our :class:`Generator` from the pickled ``init_kwargs`` and copies parameters and
    buffers by their (identical) names with ``load_state_dict(strict=True)``. Returned in eval mode
    with gradients off and ``fused_modconv=True`` (the official inference default).
    """
    path = Path(path)
    data = read_official_pickle(path)
    record = data.get(which)
    if not isinstance(record, PersistentRecord):
        raise OfficialPickleError(f"{path}: not an official StyleGAN2-ADA pickle: no persistent network "
                                  f"{which!r} (keys: {sorted(map(str, data))})")
    if record.class_name != "Generator":
        raise OfficialPickleError(f"{path}: {which} is a {record.class_name}, expected a Generator")
    config = config_from_official_kwargs(record.init_kwargs, name=f"official:{path.name}")
    state: dict[str, torch.Tensor] = {}
    classes: set[str] = set()
    _official_state_dict(record, "", state, classes)
    foreign = sorted(classes - _OFFICIAL_G_CLASSES)
    if foreign:
        raise OfficialPickleError(f"{path}: generator uses classes this StyleGAN2 cannot load: {foreign} "
                                  f"(StyleGAN3 / other forks are not supported)")
    G = Generator(config)
    missing, unexpected = [], []
    own = G.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad_shape:
        raise OfficialPickleError(f"{path}: official weights do not map onto our Generator: missing {missing[:8]}, "
                                  f"unexpected {unexpected[:8]}, shape mismatch {bad_shape[:8]}")
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return G.eval().requires_grad_(False)
