"""StyleGAN2's networks: the configuration, the equalized-lr layers, the generator and the discriminator.

Modelled on NVlabs' stylegan2-ada-pytorch ``training/networks.py`` (Karras et al., "Analyzing and
Improving the Image Quality of StyleGAN", CVPR 2020, and "Training Generative Adversarial Networks
with Limited Data", NeurIPS 2020). The code is our own, but the *layout* is the official one on
purpose: every module, parameter and buffer has the official name (``mapping.fc0.weight``,
``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``,
``synthesis.b8.conv1.noise_const``, ``synthesis.b64.torgb.weight`` ...), the official
initialisation and the official runtime scaling (equalized learning rate), so that the ``G_ema`` of
an official ``.pkl`` loads with ``load_state_dict`` one to one (see
:func:`~stylerig_lite.stylegan2.legacy.load_official_pickle`).

What is different from the official code, and why:

* Everything runs in float32 with plain PyTorch ops (no CUDA plugins, see
  :mod:`~stylerig_lite.stylegan2.ops`): the book must run on a CPU and on Colab.
  ``num_fp16_res`` is kept in the config only so official checkpoints round-trip.
* The generator is built from a :class:`StyleGAN2Config` (minGPT style, with presets ``tiny``,
  ``cpu64`` and ``ffhq1024``) instead of nested keyword dicts;
  :func:`~stylerig_lite.stylegan2.legacy.config_from_official_kwargs` translates the official
  ``init_kwargs``.
* ``MappingNetwork`` updates ``w_avg`` only when asked (``update_emas=True``, the StyleGAN3
  convention) instead of whenever the module is in training mode, so that sampling a model in train
  mode never silently moves the truncation centre.
* Random noise inputs accept an optional ``noise_generator`` so that training is reproducible
  without touching the global RNG; a :class:`~stylerig_lite.seeding.BatchShard` there draws the
  noise of a whole global batch and keeps this process's rows (data-parallel training).

Shapes are written NVlabs style: ``[B, C, H, W]`` images, ``[B, num_ws, w_dim]`` W+ latents.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import torch

from ..config import config_from_preset
from ..checks import assert_finite, assert_shape
from ..seeding import BatchShard
from .ops import (bias_act, conv2d_resample, get_activation, modulated_conv2d, normalize_2nd_moment, setup_filter,
                  upsample2d)

__all__ = [
    "StyleGAN2Config",
    "PRESETS",
    "get_config",
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
    return config_from_preset(StyleGAN2Config, PRESETS, name, overrides, "StyleGAN2", drop_none=False)


# ----------------------------------------------------------------------------------------------
# Layers with equalized learning rate: weights are stored N(0, 1) and scaled at runtime by
# 1/sqrt(fan_in), so Adam sees every layer at the same scale (Karras et al. 2018).


class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        get_activation(activation)
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
        _, self.act_gain = get_activation(activation)
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
            _assert_finite_input(self, z, "z (mapping input)")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional: pass a label c of shape [B, {self.c_dim}]")
            assert_shape(c, [None if x is None else x.shape[0], self.c_dim], "c (label)")
            _assert_finite_input(self, c, "c (label)")
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


def _assert_finite_input(module: torch.nn.Module, x: torch.Tensor, name: str) -> None:
    """A NaN/inf latent would come out as a NaN image, silently: refuse it, naming the input.

    One ``isfinite`` per call. Skipped only for a module in training mode on an accelerator: the GAN
    training loop draws its latents itself and keeps the GPU free of host syncs (a check reads a
    value back); a loaded generator is in eval mode and always checked.
    """
    if not module.training or x.device.type == "cpu":
        assert_finite(x, name)


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
        _, self.act_gain = get_activation(activation)
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
            _assert_finite_input(self, ws, "ws (a single w per sample)")
            ws = ws.unsqueeze(1).repeat([1, self.num_ws, 1])
        else:
            assert_shape(ws, [None, self.num_ws, self.w_dim], "ws (W+ latents)")
            _assert_finite_input(self, ws, "ws (W+ latents)")
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
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())
