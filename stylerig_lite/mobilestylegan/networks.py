"""MobileStyleGAN's networks in plain PyTorch, with the weights read from the OpenVINO IR.

MobileStyleGAN (Belousov, "MobileStyleGAN: A Lightweight Convolutional Neural Network for
High-Fidelity Image Synthesis", 2021, arXiv 2104.04767) is a StyleGAN2 distilled into a network a
phone can run: the same mapping network z -> w, and a synthesis network that replaces StyleGAN2's
modulated 3x3 convolutions by *modulated depthwise-separable* ones and its upsampling + skip
``toRGB`` layers by an *inverse discrete wavelet transform* (IDWT, Haar): each block predicts the
four wavelet bands of the next resolution and the IDWT puts them together. Module and parameter
names follow the author's code (``bes-dev/MobileStyleGAN.pytorch``: ``input.input``, ``conv1``,
``layers.{i}.up``, ``layers.{i}.conv1``, ``layers.{i}.conv2``, ``to_img``, ``...conv.weight_dw``,
``...conv.weight_permute``, ``...conv.modulation``), so a reader can put the two side by side.

The architecture, as the IR ``SynthesisNetwork.xml`` of ``random-face==2021.7.21.1`` holds it
(every shape below is checked when the weights are loaded, see :meth:`MobileStyleGAN.load_from_ir`)::

    w [B, 23, 512]  (W+: one w per style consumer; the IR takes one w for all 23)
    input.input     const [1, 512, 4, 4]
    conv1           modulated 3x3 conv 512 -> 512 (full, not depthwise) + noise + bias + lrelu   @ 4
    layers.0..6     up:    modulate C_in, IDWT: C_in channels -> C_in / 4 at twice the size
                    conv1: modulated depthwise 3x3 + pointwise 1x1, C_in / 4 -> C_out, noise, bias, lrelu
                    conv2: the same, C_out -> C_out                                  @ 8, 16, ..., 512
                    C_out = 512, 512, 512, 512, 256, 128, 64
    to_img          modulated 1x1 conv 64 -> 12 wavelet channels (+ bias)                       @ 512
    idwt            Haar IDWT: 12 channels (3 colours x LL, LH, HL, HH) -> RGB [B, 3, 1024, 1024]

What the IR exporter folded, and what that means here:

* *Demodulation*: MobileStyleGAN demodulates with a fixed ``style_inv`` buffer, not the current
  style, so the exporter multiplied it into the convolution weights; ``weight_permute`` (and
  ``conv1``'s weight) are the demodulated weights. Nothing of it depends on w.
* *Equalized learning rate*: the mapping's weights are stored already scaled (``lr_mul`` and
  ``1/sqrt(fan_in)`` applied). The style affines keep their scale ``1/sqrt(C_in k^2)`` as an
  explicit multiply, which we keep as ``modulation_scale``.
* *Noise*: every ``StyledConv2d`` adds ``noise.weight * noise`` with a *fixed* noise map; the IR
  holds the product ``[1, 1, R, R]`` as one constant, buffer ``noise.noise_const`` here.
  ``noise_mode='const'`` (the default) adds it, so the output is deterministic and equals the
  IR's; ``'none'`` adds nothing; ``'random'`` adds fresh standard-normal noise scaled by the
  standard deviation of the stored map (an *estimate* of ``noise.weight``, assuming the
  exporter's noise map was a standard-normal draw, as the author's code draws it).
* *Intermediate images*: the author's model has a ``to_img`` head in every block (the distillation
  compares every scale); the exporter kept only the last, so the IR has no cheap 256-px image.

Smaller images (``synthesis(ws, resolution=...)``), built from one fact: the 2x2 average of a Haar
IDWT's output is ``tap^2 LL = LL / 2``, its low band. So

* ``resolution=512`` is *exact*: the 2x2 area average of the 1024-px image is half the LL band of
  ``to_img``'s output, and the final IDWT (and 9 of ``to_img``'s 12 outputs) can be skipped;
* ``resolution=256`` is an *approximation* with no fitted weights: the last block (512 px, the
  most expensive, about half the time) runs at 256 px instead -- its ``up`` keeps only the LL band
  (the 2x2 average of what it would upsample to), its convolutions run on that with the noise
  maps 2x2 averaged, the 256-px block computes only the LL channels the last block reads, and
  the image is half the LL band of ``to_img``. Depthwise 3x3 kernels at half the resolution see
  twice the extent, so this is not exact: PSNR against the area-downsampled 1024-px image is
  31.7-34.2 dB on three seeds at truncation 0.7 (``python -m stylerig_lite.bench photoreal``), 32.4 dB
  on average over 16 faces of which half untruncated, 27.0 dB at worst on an untruncated one
  (``training/photoreal_256_head.py``, which also measures a fitted head on earlier features).

Speed, measured on the project's 2-core CPU machine while idle, 2 threads, one image, forward
(``python -m stylerig_lite.bench photoreal``): 1024 px in 215 ms, OpenVINO f32 on the same IR in
221 ms in the same run; 256 px in 91 ms (2.3x cheaper: the 256-px block, which this path still
runs, costs about 30% of the full pass). One thread: 380 ms, OpenVINO 415 ms. What makes the fast
path (``impl='fast'``) fast: channels-last activations (depthwise and 1x1 convolutions 2-3x faster
than NCHW on this CPU), per-sample styles folded into the small 1x1 weights instead of scaling the
activations, the noise and bias written as the 1x1 product's initial value, and the IDWT's bands
kept band-major so its sums read contiguous memory. On a machine shared with other jobs, PyTorch's
OpenMP threads spin while waiting for a descheduled peer and two threads can be 3x slower than one
(measured: 1.2 s); run such jobs with ``OMP_WAIT_POLICY=PASSIVE`` (0.39 s there) or one thread.
The feature maps reach 67 MB (64 channels at 512 px), and glibc returns buffers that large to the
operating system on every free, so each pass paid page faults on first touch again:
:meth:`MobileStyleGAN.synthesis` calls :func:`~stylerig_lite.devices.keep_freed_memory` once per
process, which keeps them in the heap (``python -m stylerig_lite.bench allocator`` times both).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import assert_shape
from ..devices import keep_freed_memory
from .ir import IRError, IRGraph, IRLayer, read_ir

__all__ = [
    "autograd_backward",
    "CHANNELS",
    "FileIntegrityError",
    "IDWTUpsample",
    "MappingNetwork",
    "MobileStyleGAN",
    "MobileSynthesisBlock",
    "ModulatedConv2d",
    "ModulatedDWConv2d",
    "MultichannelImage",
    "NoiseInjection",
    "SUPPORTED_RESOLUTIONS",
    "StyledConv2d",
    "SynthesisNetwork",
    "W_AVG_SAMPLES",
    "W_AVG_SEED",
    "HAAR_TAP",
    "idwt_haar",
    "idwt_haar_bands",
    "idwt_haar_ref",
]

#: Feature channels of the synthesis network at 4, 8, ..., 512 px (the author's default).
CHANNELS: Tuple[int, ...] = (512, 512, 512, 512, 512, 256, 128, 64)
#: Resolutions ``synthesis(ws, resolution=...)`` can return (1024: the network; 512: its exact 2x2
#: area average, the LL band; 256: the last block at half resolution, an approximation).
SUPPORTED_RESOLUTIONS: Tuple[int, ...] = (1024, 512, 256)
#: The truncation centre ``w_avg`` is the mean of ``mapping(z)`` over this many z ~ N(0, I) drawn
#: with ``torch.Generator().manual_seed(W_AVG_SEED)`` (StyleGAN2 tracks a running mean during
#: training; the IR does not carry it). Its standard error per coordinate is below 0.01 (w's
#: coordinates have standard deviations up to about 1).
W_AVG_SAMPLES = 10_000
W_AVG_SEED = 0

_NOISE_MODES = ("const", "none", "random")


class FileIntegrityError(RuntimeError):
    """A MobileStyleGAN IR file is missing, truncated or not the one expected (size or sha256)."""


# ----------------------------------------------------------------------------------------------
# The inverse Haar wavelet transform.

#: The IR's Haar synthesis taps: g0 = (R, R), g1 = (R, -R) with R = float32(1 / sqrt 2) (checked on load).
HAAR_TAP = float(np.float32(2 ** -0.5))


def idwt_haar_ref(low: torch.Tensor, high: torch.Tensor, tap: float = HAAR_TAP) -> torch.Tensor:
    """Reference IDWT, written as the IR computes it: 1-d synthesis filters along H, then along W.

    ``low`` [B, C, H, W] (LL), ``high`` [B, C, 3, H, W] (LH, HL, HH, pytorch_wavelets' order) ->
    [B, C, 2H, 2W]. Each 1-d step is a stride-2 transposed convolution with the synthesis filters
    ``g0 = (tap, tap)`` (low) and ``g1 = (tap, -tap)`` (high): ``out[2i + k] = lo[i] g0[k] + hi[i] g1[k]``.
    """
    g0, g1 = (tap, tap), (tap, -tap)

    def synth(lo: torch.Tensor, hi: torch.Tensor, dim: int) -> torch.Tensor:
        parts = [lo * g0[k] + hi * g1[k] for k in range(2)]
        return torch.stack(parts, dim=dim + 1).flatten(dim, dim + 1)

    lh, hl, hh = high.unbind(2)
    lo = synth(low, lh, dim=2)    # along H: LL with g0, LH with g1
    hi = synth(hl, hh, dim=2)     # along H: HL with g0, HH with g1
    return synth(lo, hi, dim=3)   # along W


def idwt_haar(low: torch.Tensor, high: torch.Tensor, gain: float = HAAR_TAP ** 2,
              channels_last: bool = False) -> torch.Tensor:
    """Fast Haar IDWT: the four output phases from sums and differences, interleaved in one pass.

    ``out[2i + a, 2j + b] = gain (LL + s_a LH + s_b HL + s_a s_b HH)`` with ``s_0 = 1, s_1 = -1``
    and ``gain = tap^2 = 1/2``; equal to :func:`idwt_haar_ref` to float rounding (tested). Shapes as
    there. See :func:`idwt_haar_bands` for ``gain`` and ``channels_last``.
    """
    lh, hl, hh = high.unbind(2)
    return idwt_haar_bands(low, lh, hl, hh, gain, channels_last)


def idwt_haar_bands(ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor, hh: torch.Tensor,
                    gain: float = HAAR_TAP ** 2, channels_last: bool = False) -> torch.Tensor:
    """:func:`idwt_haar` on four bands [B, C, H, W] -> [B, C, 2H, 2W].

    ``gain=1`` skips the scaling (for callers that fold it into an earlier multiply).
    ``channels_last``: return a channels-last tensor (memory ``[B, 2H, 2W, C]``, what the next
    depthwise conv wants; fast when the bands are channels-last views with unit channel stride);
    else a contiguous one. Without autograd the four phases are written straight into the
    interleaved output; with autograd, ``torch.stack`` does it (one more copy).
    """
    if gain != 1.0:
        ll, lh, hl, hh = (t * gain for t in (ll, lh, hl, hh))
    p, m = ll + lh, ll - lh      # output rows 2i and 2i + 1 (LL, LH along H) ...
    q, n = hl + hh, hl - hh      # ... and (HL, HH along H)
    B, C, H, W = p.shape
    if channels_last:            # phase (a, b) of pixel (i, j) at memory [B, i, a, j, b, C]
        p, m, q, n = (t.permute(0, 2, 3, 1) for t in (p, m, q, n))
        phase = lambda out, a, b: out[:, :, a, :, b]  # noqa: E731
        shape, final = (B, H, 2, W, 2, C), lambda out: out.reshape(B, 2 * H, 2 * W, C).permute(0, 3, 1, 2)
        stack_dims = (3, 2)
    else:                        # memory [B, C, i, a, j, b]
        phase = lambda out, a, b: out[:, :, :, a, :, b]  # noqa: E731
        shape, final = (B, C, H, 2, W, 2), lambda out: out.reshape(B, C, 2 * H, 2 * W)
        stack_dims = (-1, 3)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (p, m, q, n)):
        out = torch.stack([torch.stack([p + q, p - q], dim=stack_dims[0]),
                           torch.stack([m + n, m - n], dim=stack_dims[0])], dim=stack_dims[1])
        return final(out)
    out = p.new_empty(shape)
    torch.add(p, q, out=phase(out, 0, 0))
    torch.sub(p, q, out=phase(out, 0, 1))
    torch.add(m, n, out=phase(out, 1, 0))
    torch.sub(m, n, out=phase(out, 1, 1))
    return final(out)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1x1 conv with one weight per sample, + bias (+ a per-pixel noise map), channels-last.

    ``x`` [B, C, H, W], ``weight`` [B, C_out, C], ``bias`` [C_out], ``noise`` [1 or B, 1, H, W]
    -> [B, C_out, H, W] (memory ``[B, H, W, C_out]``). The output is first filled with
    ``bias + noise`` (one pass, as a conv fills it with its bias) and the matrix product is
    accumulated onto it (``baddbmm_``), so adding the noise costs no pass of its own.
    """
    B, C, H, W = x.shape
    C_out = weight.shape[1]
    pixels = x.permute(0, 2, 3, 1).reshape(B, H * W, C)          # a view when x is channels-last
    init = bias.view(1, 1, C_out)
    if noise is not None:
        init = noise.reshape(noise.shape[0], H * W, 1) + init
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # out of place under autograd: with B = 1 the expanded init is a view, and an in-place product
        # on a view costs a copy of the whole gradient in the backward (CopySlices)
        out = torch.baddbmm(init, pixels, weight.transpose(1, 2))
    else:
        out = init.expand(B, H * W, C_out).contiguous()
        out.baddbmm_(pixels, weight.transpose(1, 2))
    return out.view(B, H, W, C_out).permute(0, 3, 1, 2)


class _StyledPointwise(torch.autograd.Function):
    """``_pointwise(x, weight[None] * s[:, None, :], bias, noise)`` for a frozen ``weight``, with a cheaper backward.

    ``x`` [B, C, H, W], ``s`` [B, C] (the style), ``weight`` [C_out, C], ``bias`` [C_out], ``noise`` as
    in :func:`_pointwise`; gradients for ``x`` and ``s`` only. The forward is :func:`_pointwise`'s, the
    same numbers bit for bit. Autograd's backward of that product would form the gradient of the
    modulated weight, one more matrix product over every pixel (``[C_out, HW] @ [HW, C]`` per image),
    and reduce it to ``s``. Here ``back = g W`` (one product) gives both: ``dL/dx = back * s`` and
    ``dL/ds = sum over pixels of x * back``, a pass over the activations instead of a product. A
    256-px forward and backward of the photoreal generator took 0.52 s against 0.61 s with autograd's
    backward (two threads, five runs each, interleaved; ``python -m stylerig_lite.bench --threads 2
    photoreal`` prints both); the gradients equal autograd's to float rounding (tested).
    """

    @staticmethod
    def forward(ctx, x, s, weight, bias, noise):
        ctx.save_for_backward(x, s, weight)
        return _pointwise(x, weight[None] * s[:, None, :], bias, noise)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, s, weight = ctx.saved_tensors
        B, C, H, W = x.shape
        g = grad_out.permute(0, 2, 3, 1).reshape(B, H * W, weight.shape[0])    # [B, HW, C_out]
        back = torch.matmul(g, weight)                                         # [B, HW, C]
        grad_x = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_x = (back * s[:, None, :]).view(B, H, W, C).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_s = (x.permute(0, 2, 3, 1).reshape(B, H * W, C) * back).sum(1)
        return grad_x, grad_s, None, None, None


_OWN_BACKWARD = [True]  # off inside autograd_backward()


@contextlib.contextmanager
def autograd_backward() -> Iterator[None]:
    """Inside the block the styled 1x1 convs take autograd's backward, the reference for
    :class:`_StyledPointwise` (``tests/test_mobilestylegan.py``, ``bench photoreal``)."""
    before = _OWN_BACKWARD[0]
    _OWN_BACKWARD[0] = False
    try:
        yield
    finally:
        _OWN_BACKWARD[0] = before


def _styled_pointwise(x: torch.Tensor, s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The 1x1 conv with weights ``weight [C_out, C]`` modulated by ``s [B, C]``: :func:`_pointwise`,
    through :class:`_StyledPointwise` when autograd needs gradients for ``x`` or ``s`` only."""
    frozen = not any(t is not None and t.requires_grad for t in (weight, bias, noise))
    if _OWN_BACKWARD[0] and frozen and torch.is_grad_enabled() and (x.requires_grad or s.requires_grad):
        return _StyledPointwise.apply(x, s, weight, bias, noise)
    return _pointwise(x, weight[None] * s[:, None, :], bias, noise)


# ----------------------------------------------------------------------------------------------
# Mapping.


class MappingNetwork(nn.Module):
    """z [B, 512] -> pixel norm -> 8 x (linear, lrelu 0.2, x sqrt 2) -> w [B, 512].

    The weights are stored as the IR has them, with StyleGAN2's equalized-lr gains already applied
    (``fc{i}.weight`` [512, 512], ``fc{i}.bias`` [512]). ``w_avg`` [512] is the truncation centre.
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, num_layers: int = 8, eps: float = 1e-8):
        super().__init__()
        self.z_dim, self.w_dim, self.num_layers, self.eps = z_dim, w_dim, num_layers, eps
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", nn.Linear(z_dim if idx == 0 else w_dim, w_dim))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x^2) + eps), written as the IR writes it (pow, mean, add, pow -0.5)
        x = z * (z.square().mean(dim=1, keepdim=True) + self.eps).rsqrt()
        for idx in range(self.num_layers):
            x = F.leaky_relu(getattr(self, f"fc{idx}")(x), 0.2) * math.sqrt(2.0)
        return x


# ----------------------------------------------------------------------------------------------
# Synthesis layers. Each takes ``impl``: 'fast' (channels-last, per-sample scales folded into
# weights; the default) or 'ref' (the IR's op order, NCHW, op by op), equal to float rounding.

_IMPLS = ("fast", "ref")


class _Modulation(nn.Linear):
    """A style affine: w [B, w_dim] -> per-channel scales [B, C] (``modulation`` in the author's code)."""


class NoiseInjection(nn.Module):
    """Adds a per-pixel noise map (one for all channels) ``[1, 1, R, R]``; see the module docstring."""

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("noise_const", torch.zeros(1, 1, resolution, resolution))

    def noise_map(self, x: torch.Tensor, noise_mode: str = "const",
                  noise_generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """The map to add to ``x`` [B, C, H, W]: [1, 1, H, W] ('const'), [B, 1, H, W] ('random') or None.

        At a lower resolution than the map's (the half-resolution last block), the map is area-averaged.
        """
        if noise_mode == "const":
            noise = self.noise_const
            return noise if x.shape[-1] == self.resolution else F.adaptive_avg_pool2d(noise, x.shape[-2:])
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], generator=noise_generator,
                                device=x.device if noise_generator is None else noise_generator.device)
            return noise.to(x) * self.noise_const.std()
        return None

    def forward(self, x: torch.Tensor, noise_mode: str = "const",
                noise_generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``x`` plus the noise, in place (``x`` is a fresh conv output; autograd allows it)."""
        noise = self.noise_map(x, noise_mode, noise_generator)
        return x if noise is None else x.add_(noise)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}"


class ModulatedConv2d(nn.Module):
    """Full modulated conv (only the 4-px ``conv1``): ``conv(x * s)``, ``s = scale * affine(w)``.

    ``weight`` [C_out, C_in, k, k] already holds the (w-independent) demodulation.
    """

    def __init__(self, channels_in: int, channels_out: int, w_dim: int, kernel_size: int = 3):
        super().__init__()
        self.channels_in, self.channels_out, self.kernel_size = channels_in, channels_out, kernel_size
        self.weight = nn.Parameter(torch.zeros(channels_out, channels_in, kernel_size, kernel_size))
        self.modulation = _Modulation(w_dim, channels_in)
        self.modulation_scale = 1.0 / math.sqrt(channels_in * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, impl: str = "fast",
                out_order: Optional[torch.Tensor] = None) -> torch.Tensor:
        s = self.modulation(w) * self.modulation_scale                            # [B, C_in]
        weight = self.weight if out_order is None else self.weight[out_order]
        return F.conv2d(x * s[:, :, None, None], weight, padding=self.kernel_size // 2)


class ModulatedDWConv2d(nn.Module):
    """Modulated depthwise-separable conv: ``pointwise(depthwise(x * s))``, ``s = scale * affine(w)``.

    ``weight_dw`` [C_in, 1, k, k] (depthwise), ``weight_permute`` [C_out, C_in, 1, 1] (pointwise,
    demodulation folded in). The fast path moves the per-sample scale ``s`` from the activations
    to the pointwise weights (both steps are linear and per input channel), so the depthwise conv
    runs once for the batch and no pass over the activations is spent on modulating them.
    """

    def __init__(self, channels_in: int, channels_out: int, w_dim: int, kernel_size: int = 3):
        super().__init__()
        self.channels_in, self.channels_out, self.kernel_size = channels_in, channels_out, kernel_size
        self.weight_dw = nn.Parameter(torch.zeros(channels_in, 1, kernel_size, kernel_size))
        self.weight_permute = nn.Parameter(torch.zeros(channels_out, channels_in, 1, 1))
        self.modulation = _Modulation(w_dim, channels_in)
        self.modulation_scale = 1.0 / math.sqrt(channels_in * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None,
                impl: str = "fast", out_order: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H, W] (+ ``bias`` [C_out] and ``noise`` [1 or B, 1, H, W] if given).

        ``out_order`` (fast path): return the output channels in this order (see :class:`IDWTUpsample`).
        """
        s = self.modulation(w) * self.modulation_scale                            # [B, C_in]
        pad = self.kernel_size // 2
        if impl == "ref":
            x = F.conv2d(x * s[:, :, None, None], self.weight_dw, padding=pad, groups=self.channels_in)
            x = F.conv2d(x, self.weight_permute)
            x = x if noise is None else x + noise
            return x if bias is None else x + bias[:, None, None]
        x = F.conv2d(x, self.weight_dw, padding=pad, groups=self.channels_in)
        weight = self.weight_permute[:, :, 0, 0]                                  # [C_out, C_in]
        bias = torch.zeros_like(self.weight_permute[:, 0, 0]) if bias is None else bias
        if out_order is not None:
            weight, bias = weight[out_order], bias[out_order]
        return _styled_pointwise(x, s, weight, bias, noise)                      # (x s) W = x (W s)


class StyledConv2d(nn.Module):
    """``lrelu_0.2(conv(x, w) + noise + bias)``: one styled layer (``conv`` depthwise or full)."""

    def __init__(self, channels_in: int, channels_out: int, w_dim: int, resolution: int, depthwise: bool = True):
        super().__init__()
        conv = ModulatedDWConv2d if depthwise else ModulatedConv2d
        self.conv = conv(channels_in, channels_out, w_dim)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(channels_out))
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                noise_generator: Optional[torch.Generator] = None, impl: str = "fast",
                out_order: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``out_order`` (fast path only): permute the output channels (the noise is the same for
        every channel and the activation is elementwise, so a permutation commutes with both)."""
        if impl == "ref":                                                # the IR's order
            x = self.noise(self.conv(x, w, impl=impl), noise_mode, noise_generator) + self.bias[:, None, None]
        elif isinstance(self.conv, ModulatedDWConv2d):                   # bias and noise in the 1x1 conv
            noise = self.noise.noise_map(x, noise_mode, noise_generator)
            x = self.conv(x, w, self.bias, impl, out_order, noise)
        else:
            bias = self.bias if out_order is None else self.bias[out_order]
            x = self.noise(self.conv(x, w, impl, out_order), noise_mode, noise_generator) + bias[:, None, None]
        if torch.is_grad_enabled() and x.requires_grad:
            # Out of place under autograd: x is a (permuted) view of the 1x1 conv's output, and an in-place
            # activation on a view makes the backward copy the whole gradient through CopySlices (a 256-px
            # forward and backward took 1.0 s with it, 0.75 s without; same image and gradients, tested).
            return F.leaky_relu(x, 0.2)
        return F.leaky_relu_(x, 0.2)


class IDWTUpsample(nn.Module):
    """Modulate, split into LL [C/4] and LH, HL, HH [C/4, 3], inverse Haar transform: C -> C/4 at 2x.

    The IR's channel order is LL of every channel, then (LH, HL, HH) of channel 0, of channel 1, ...
    In channels-last memory the high bands then sit three floats apart, which makes the IDWT's
    sums slow; so the fast path asks the layer before for its output channels in *band-major*
    order (LL, all LH, all HL, all HH: ``band_major``, a permutation applied to that layer's
    per-sample weights, free) and reads them with ``band_major=True``.
    """

    def __init__(self, channels_in: int, w_dim: int):
        super().__init__()
        if channels_in % 4:
            raise ValueError(f"IDWTUpsample needs a multiple of 4 channels, got {channels_in}")
        c = channels_in // 4
        self.channels_in, self.channels = channels_in, c
        self.modulation = _Modulation(w_dim, channels_in)
        order = list(range(c)) + [c + 3 * k + band for band in range(3) for k in range(c)]
        self.register_buffer("band_major", torch.tensor(order), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, impl: str = "fast", band_major: bool = False,
                half: bool = False) -> torch.Tensor:
        """[B, C, H, W] -> [B, C/4, 2H, 2W]; ``half``: only the 2x2 average of that, [B, C/4, H, W] (=
        ``LL / 2``; ``x`` may then hold only the LL channels, which come first in either order)."""
        c = self.channels
        s = self.modulation(w)
        if half:
            return x[:, :c] * (s[:, :c] * HAAR_TAP ** 2)[:, :, None, None]
        if impl == "ref":
            x = x * s[:, :, None, None]
            return idwt_haar_ref(x[:, :c], x[:, c:].unflatten(1, (c, 3)))
        scale = s[:, self.band_major] * HAAR_TAP ** 2                # band-major, the IDWT gain folded in
        if not band_major:
            x = x[:, self.band_major] * scale[:, :, None, None]
        elif torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            x = x * scale[:, :, None, None]
        else:  # x is the previous layer's fresh output, read by no one else: scale it in place
            x = x.mul_(scale[:, :, None, None])
        return idwt_haar_bands(*x.split(c, dim=1), gain=1.0, channels_last=True)


class MultichannelImage(nn.Module):
    """The to-wavelet head: modulated 1x1 conv C -> 12 (= 3 colours x 4 Haar bands) + bias."""

    def __init__(self, channels_in: int, w_dim: int, channels_out: int = 12):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels_out, channels_in, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels_out))
        self.modulation = _Modulation(w_dim, channels_in)
        self.modulation_scale = 1.0 / math.sqrt(channels_in)

    def forward(self, x: torch.Tensor, w: torch.Tensor, impl: str = "fast", outputs: Optional[int] = None
                ) -> torch.Tensor:
        """[B, C, H, W] -> [B, 12, H, W]; ``outputs``: compute only the first that many channels."""
        s = self.modulation(w) * self.modulation_scale
        weight, bias = self.weight[:outputs], self.bias[:outputs]
        if impl == "ref":
            return F.conv2d(x * s[:, :, None, None], weight) + bias[:, None, None]
        return _styled_pointwise(x, s, weight[:, :, 0, 0], bias)  # (x s) W = x (W s)


class MobileSynthesisBlock(nn.Module):
    """IDWT upsample (3 ws: ``up``, ``conv1``, ``conv2``): [B, C_in, R/2, R/2] -> [B, C_out, R, R]."""

    num_ws = 3

    def __init__(self, channels_in: int, channels_out: int, w_dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.up = IDWTUpsample(channels_in, w_dim)
        self.conv1 = StyledConv2d(channels_in // 4, channels_out, w_dim, resolution)
        self.conv2 = StyledConv2d(channels_out, channels_out, w_dim, resolution)

    def forward(self, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "const",
                noise_generator: Optional[torch.Generator] = None, impl: str = "fast",
                band_major_in: bool = False, out_order: Optional[torch.Tensor] = None,
                half: bool = False) -> torch.Tensor:
        """``ws`` [B, 3, w_dim]; ``band_major_in``, ``out_order``: see :class:`IDWTUpsample` (fast path);
        ``half``: run at the input's resolution instead of twice it (see the module docstring)."""
        x = self.up(x, ws[:, 0], impl, band_major_in, half)
        x = self.conv1(x, ws[:, 1], noise_mode, noise_generator, impl)
        return self.conv2(x, ws[:, 2], noise_mode, noise_generator, impl, out_order)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}"


class SynthesisNetwork(nn.Module):
    """W+ [B, 23, 512] -> image [B, 3, 1024, 1024] in about [-1, 1] (not clamped, like the IR).

    ``ws[:, 0]`` styles ``conv1``; ``ws[:, 1 + 3 i + (0, 1, 2)]`` style ``layers[i].up``, ``.conv1``,
    ``.conv2``; ``ws[:, 22]`` styles ``to_img``.
    """

    def __init__(self, w_dim: int = 512, channels: Sequence[int] = CHANNELS):
        super().__init__()
        self.w_dim, self.channels = w_dim, tuple(channels)
        self.input = nn.Module()
        self.input.register_parameter("input", nn.Parameter(torch.zeros(1, channels[0], 4, 4)))
        self.conv1 = StyledConv2d(channels[0], channels[0], w_dim, resolution=4, depthwise=False)
        self.layers = nn.ModuleList(
            MobileSynthesisBlock(c_in, c_out, w_dim, resolution=2 ** (i + 3))
            for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])))
        self.to_img = MultichannelImage(channels[-1], w_dim)
        self.feature_resolution = 2 ** (len(channels) + 1)          # 512
        self.img_resolution = 2 * self.feature_resolution           # 1024
        self.img_channels = 3
        self.num_ws = 1 + MobileSynthesisBlock.num_ws * len(self.layers) + 1  # 23

    def layers_up_to(self, resolution: int) -> int:
        """How many of ``layers`` run before the features are ``resolution`` px (4 -> 0, 256 -> 6)."""
        return int(math.log2(resolution)) - 2

    def features(self, ws: torch.Tensor, resolution: int, noise_mode: str = "const",
                 noise_generator: Optional[torch.Generator] = None, start: Optional[torch.Tensor] = None,
                 impl: str = "fast", half_last: bool = False) -> torch.Tensor:
        """The feature maps at ``resolution`` (4 ... 512 px): ``[B, channels, resolution, resolution]``.

        ``start``: features at a lower resolution to continue from (instead of the constant input).
        ``half_last``: the last block runs at half resolution (see the module docstring), so the
        features come out at ``resolution // 2``.
        """
        run = range(self.layers_up_to(4 if start is None else start.shape[-1]), self.layers_up_to(resolution))
        last = run[-1] if len(run) else None

        def order(i: int) -> Optional[torch.Tensor]:  # fast path: the channels (and order) block i reads
            if impl != "fast" or i not in run:
                return None
            up = self.layers[i].up
            return up.band_major[:up.channels] if half_last and i == last else up.band_major

        if start is None:
            x = self.input.input.expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode, noise_generator, impl, order(0))
            band_major = order(0) is not None
        else:
            x, band_major = start, False
        if impl == "fast":
            x = x.contiguous(memory_format=torch.channels_last)
        for i in run:
            x = self.layers[i](x, ws[:, 1 + 3 * i:4 + 3 * i], noise_mode, noise_generator, impl,
                               band_major_in=band_major, out_order=order(i + 1), half=half_last and i == last)
            band_major = order(i + 1) is not None
        return x

    def wavelets(self, ws: torch.Tensor, noise_mode: str = "const",
                 noise_generator: Optional[torch.Generator] = None, impl: str = "fast") -> torch.Tensor:
        """The 12 wavelet channels at 512 px: ``[B, 3 colours x (LL, LH, HL, HH), 512, 512]``.

        Channel order as the IR's split: LL of R, G, B, then (LH, HL, HH) of R, of G, of B.
        """
        x = self.features(ws, self.feature_resolution, noise_mode, noise_generator, impl=impl)
        return self.to_img(x, ws[:, -1], impl)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", resolution: Optional[int] = None,
                noise_generator: Optional[torch.Generator] = None, impl: str = "fast") -> torch.Tensor:
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        resolution = self.img_resolution if resolution is None else resolution
        if resolution < self.img_resolution:  # 512: exact (LL / 2); 256: the last block at half resolution
            x = self.features(ws, self.feature_resolution, noise_mode, noise_generator, impl=impl,
                              half_last=resolution < self.feature_resolution)
            low = self.to_img(x, ws[:, -1], impl, outputs=self.img_channels)
            return (low * HAAR_TAP ** 2).contiguous()
        freq = self.wavelets(ws, noise_mode, noise_generator, impl)
        low, high = freq[:, :3], freq[:, 3:].unflatten(1, (3, 3))
        if impl == "ref":
            return idwt_haar_ref(low, high)
        return idwt_haar(low, high)


# ----------------------------------------------------------------------------------------------
# The generator.


class MobileStyleGAN(nn.Module):
    """The photoreal generator: ``mapping`` z -> W+ [B, 23, 512], ``synthesis`` W+ -> [B, 3, 1024, 1024].

    Follows the package's generator protocol (that of :class:`~stylerig_lite.stylegan2.Generator`):
    ``z_dim``, ``w_dim``, ``num_ws``, ``img_resolution``, ``img_channels``, :meth:`mapping`,
    :meth:`synthesis`, ``G(z)``, :meth:`sample_z`. Build it with weights through
    :func:`~stylerig_lite.mobilestylegan.load_mobilestylegan` (or :meth:`load_from_ir`).
    """

    def __init__(self, w_dim: int = 512, channels: Sequence[int] = CHANNELS):
        super().__init__()
        self.z_dim = self.w_dim = w_dim
        self.c_dim = 0
        self.mapping_network = MappingNetwork(w_dim, w_dim)
        self.synthesis_network = SynthesisNetwork(w_dim, channels)
        self.num_ws = self.synthesis_network.num_ws
        self.img_resolution = self.synthesis_network.img_resolution
        self.img_channels = self.synthesis_network.img_channels
        #: sha256 of the four IR files, in the order of IR_FILES (set by the loader): bind RigNets to it.
        self.generator_sha256: Optional[str] = None
        self.file_sha256: Dict[str, str] = {}

    # ------------------------------------------------------------------------------ protocol
    def mapping(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """z [B, 512] -> W+ [B, 23, 512] (rows equal), pulled toward ``w_avg`` by ``truncation_psi``.

        ``truncation_cutoff`` truncates only the first that many ws (coarse layers), as in StyleGAN2.
        ``c`` must be None (the model is unconditional).
        """
        _check_latent(z, [None, self.z_dim], "z (mapping input)")
        if c is not None and c.numel():
            raise ValueError("MobileStyleGAN is unconditional: pass c=None")
        if not math.isfinite(float(truncation_psi)):
            raise ValueError(f"truncation_psi must be finite, got {truncation_psi}")
        w = self.mapping_network(z.to(torch.float32))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            w_avg = self.mapping_network.w_avg
            if truncation_cutoff is None:
                ws = w_avg.lerp(ws, truncation_psi)
            else:
                ws = ws.clone()
                ws[:, :truncation_cutoff] = w_avg.lerp(ws[:, :truncation_cutoff], truncation_psi)
        return ws

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const", resolution: Optional[int] = None,
                  noise_generator: Optional[torch.Generator] = None, impl: str = "fast", **_: object) -> torch.Tensor:
        """W+ [B, 23, 512] (or one w [B, 512] for every layer) -> image [B, 3, R, R], about [-1, 1].

        ``resolution``: None or 1024 (default, the network's image), 512 (its exact 2x2 area
        average, at the same cost), 256 (the last block at half resolution: an approximation of the
        area-downsampled image, about 32 dB PSNR, see the module docstring). ``noise_mode``:
        'const' (deterministic, the IR's), 'none', 'random'. ``impl``: 'fast' (default) or 'ref'
        (the IR's op order, slower; the reference the fast path is tested against). Other keyword
        arguments (``fused_modconv``...) are accepted and ignored, so callers written for StyleGAN2
        work unchanged.
        """
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        if resolution is not None and resolution not in self.resolutions:
            raise ValueError(f"resolution must be one of {self.resolutions} (or None for "
                             f"{self.img_resolution}), got {resolution!r}")
        if isinstance(ws, torch.Tensor) and ws.ndim == 2:
            _check_latent(ws, [None, self.w_dim], "ws (one w per sample)")
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        _check_latent(ws, [None, self.num_ws, self.w_dim], "ws (W+ latents)")
        if ws.device.type == "cpu":
            keep_freed_memory()  # its feature maps reach 67 MB: reuse freed ones (devices.keep_freed_memory)
        return self.synthesis_network(ws.to(torch.float32), noise_mode, resolution, noise_generator, impl)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, noise_mode: str = "const",
                resolution: Optional[int] = None, **kwargs: object) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, resolution=resolution, **kwargs)

    def sample_z(self, batch_size: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """Standard normal latents ``[batch_size, 512]``."""
        return torch.randn([batch_size, self.z_dim], generator=generator, device=device)

    @property
    def resolutions(self) -> Tuple[int, ...]:
        """What ``synthesis(ws, resolution=...)`` accepts: (1024, 512, 256) for the FFHQ model."""
        return tuple(self.img_resolution // k for k in (1, 2, 4))

    @property
    def w_avg(self) -> torch.Tensor:
        """The truncation centre [512] (mean w over :data:`W_AVG_SAMPLES` seeded z)."""
        return self.mapping_network.w_avg

    def extra_repr(self) -> str:
        sha = f", sha256={self.generator_sha256[:12]}..." if self.generator_sha256 else ""
        return (f"resolution={self.img_resolution}, num_ws={self.num_ws}, w_dim={self.w_dim}, "
                f"channels={list(self.synthesis_network.channels)}{sha}")

    # ------------------------------------------------------------------------------ weights
    def load_from_ir(self, data_dir: Union[str, os.PathLike]) -> "MobileStyleGAN":
        """Copy the weights of ``MappingNetwork.{xml,bin}`` and ``SynthesisNetwork.{xml,bin}`` in ``data_dir``.

        Walks the IR graphs (see :func:`_mapping_weights`, :func:`_synthesis_weights`) and checks
        every tensor's shape against this module; then computes ``w_avg``. No sha256 check here
        (the loader :func:`~stylerig_lite.mobilestylegan.load_mobilestylegan` does it).
        """
        data_dir = Path(data_dir)
        state: Dict[str, np.ndarray] = {}
        state.update({f"mapping_network.{k}": v for k, v in
                      _mapping_weights(read_ir(data_dir / "MappingNetwork.xml")).items()})
        state.update({f"synthesis_network.{k}": v for k, v in
                      _synthesis_weights(read_ir(data_dir / "SynthesisNetwork.xml"), self.synthesis_network).items()})
        own = self.state_dict()
        expected = {k for k in own if not k.endswith("w_avg")}
        missing, unexpected = expected - set(state), set(state) - set(own)
        if missing or unexpected:
            raise IRError(f"the IR does not match MobileStyleGAN's layout: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
        with torch.no_grad():
            for key, value in state.items():
                if tuple(own[key].shape) != tuple(value.shape):
                    raise IRError(f"{key}: the IR holds shape {tuple(value.shape)}, the module expects "
                                  f"{tuple(own[key].shape)}")
                own[key].copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
        self.compute_w_avg()
        return self

    @torch.no_grad()
    def compute_w_avg(self, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED, batch: int = 2000) -> torch.Tensor:
        """Set ``w_avg`` to the mean of ``mapping(z)`` over ``samples`` seeded z (about 0.3 s for 10,000)."""
        g = torch.Generator().manual_seed(seed)
        device = self.mapping_network.w_avg.device
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=device)
        for start in range(0, samples, batch):
            z = torch.randn(min(batch, samples - start), self.z_dim, generator=g).to(device)
            total += self.mapping_network(z).sum(0, dtype=torch.float64)
        self.mapping_network.w_avg.copy_((total / samples).to(torch.float32))
        return self.mapping_network.w_avg


def _check_latent(x: torch.Tensor, shape: Sequence[Optional[int]], name: str) -> None:
    assert_shape(x, shape, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s): a latent must be finite "
                         f"(a NaN latent would give a NaN image)")


# ----------------------------------------------------------------------------------------------
# Reading the IR graphs into named weights.


def _consumers(graph: IRGraph, layer: IRLayer) -> List[IRLayer]:
    """Consumers of ``layer`` that compute with its values (not ``ShapeOf``, which reads its shape)."""
    return [c for c in graph.consumers(layer) if c.type != "ShapeOf"]


def _only(layers: List[IRLayer], what: str) -> IRLayer:
    if len(layers) != 1:
        raise IRError(f"expected one {what}, the IR graph has {len(layers)}: {[l.name for l in layers]}")
    return layers[0]


def _next(graph: IRGraph, layer: IRLayer, *types: str) -> IRLayer:
    nxt = _only(_consumers(graph, layer), f"consumer of {layer.name!r}")
    if types and nxt.type not in types:
        raise IRError(f"after {layer.type} {layer.name!r} the IR has {nxt.type} {nxt.name!r}, expected {types}")
    return nxt


def _other_input(graph: IRGraph, layer: IRLayer, known: IRLayer) -> Tuple[int, IRLayer]:
    for port, (src, _) in enumerate(layer.sources):
        if src != known.id:
            return port, graph.layers[src]
    raise IRError(f"{layer.name!r} has no second input")


def _is_const(layer: IRLayer) -> bool:
    return layer.type in ("Const", "Convert")


def _scalar(graph: IRGraph, layer: IRLayer, port: int) -> float:
    value = graph.const(layer, port)
    if value.size != 1:
        raise IRError(f"{layer.name!r}: expected a scalar at input {port}, found shape {value.shape}")
    return float(value.reshape(()))


def _mapping_weights(graph: IRGraph) -> Dict[str, np.ndarray]:
    """``fc{i}.weight`` [512, 512] and ``fc{i}.bias`` [512] of ``MappingNetwork.xml``, in graph order.

    Checks the pattern of each layer: MatMul (transpose_b), Add bias, PReLU 0.2, Multiply sqrt 2.
    """
    state: Dict[str, np.ndarray] = {}
    for idx, matmul in enumerate(graph.ops("MatMul")):
        if matmul.attrs.get("transpose_b") != "true":
            raise IRError(f"mapping {matmul.name!r}: expected transpose_b=true")
        add = _next(graph, matmul, "Add")
        _, bias = _other_input(graph, add, matmul)
        if bias.type == "Reshape":   # the bias as [1, C] built by Reshape(Const[C], shape)
            bias = graph.layers[bias.sources[0][0]]
        act = _next(graph, add, "PReLU")
        gain = _next(graph, act, "Multiply")
        if not (math.isclose(_scalar(graph, act, 1), 0.2, rel_tol=1e-6)
                and math.isclose(_scalar(graph, gain, 1), math.sqrt(2), rel_tol=1e-6)):
            raise IRError(f"mapping layer {idx}: expected lrelu 0.2 and gain sqrt 2")
        state[f"fc{idx}.weight"] = graph.const(matmul, 1)
        state[f"fc{idx}.bias"] = graph.const(bias).reshape(-1)
    return state


def _style_sites(graph: IRGraph) -> List[Tuple[IRLayer, IRLayer, Optional[float], IRLayer]]:
    """The 23 style affines: ``(matmul, bias add, scale or None, site)`` in the order the sites run.

    From each MatMul that reads the ``style`` input, follows Add (bias) -> Reshape [B, C, 1, 1] ->
    optional Multiply by a scalar (the modulation scale) -> the Multiply with a feature map (the
    *site* where the style modulates the network).
    """
    style = _only(graph.parameters(), "Parameter (the style input)")
    order = {layer_id: i for i, layer_id in enumerate(graph.layers)}
    sites = []
    for matmul in [c for c in graph.consumers(style) if c.type == "MatMul"]:
        add = _next(graph, matmul, "Add")
        reshape = _next(graph, add, "Reshape")
        scale = None
        layer = _next(graph, reshape, "Multiply")
        _, other = _other_input(graph, layer, reshape)
        if _is_const(other):
            scale = float(graph.const(other).reshape(()))
            layer = _next(graph, layer, "Multiply")
        sites.append((matmul, add, scale, layer))
    sites.sort(key=lambda s: order[s[3].id])
    return sites


def _styled_conv(graph: IRGraph, site: IRLayer) -> Tuple[Dict[str, np.ndarray], IRLayer]:
    """Weights after a modulation site: [GroupConvolution] -> Convolution -> Add noise -> Add bias -> PReLU."""
    state: Dict[str, np.ndarray] = {}
    conv = _next(graph, site, "Convolution", "GroupConvolution")
    if conv.type == "GroupConvolution":
        dw = graph.const(conv, 1)                                   # [C, 1, 1, k, k]
        state["conv.weight_dw"] = dw.reshape(dw.shape[0], 1, *dw.shape[3:])
        conv = _next(graph, conv, "Convolution")
        state["conv.weight_permute"] = graph.const(conv, 1)
    else:
        state["conv.weight"] = graph.const(conv, 1)
    noise = _next(graph, conv, "Add")
    state["noise.noise_const"] = graph.const(noise, 1)
    bias = _next(graph, noise, "Add")
    state["bias"] = graph.const(bias, 1).reshape(-1)
    act = _next(graph, bias, "PReLU")
    if not math.isclose(_scalar(graph, act, 1), 0.2, rel_tol=1e-6):
        raise IRError(f"{act.name!r}: expected a leaky ReLU of slope 0.2")
    return state, act


def _check_haar(graph: IRGraph) -> None:
    """Every IDWT filter of the graph must be Haar: g0 = (r, r), g1 = (r, -r), r = 1/sqrt 2."""
    r = HAAR_TAP
    for layer in graph.ops("GroupConvolutionBackpropData"):
        taps = graph.const(layer, 1).reshape(-1, 2)
        if not (np.allclose(taps, [r, r], atol=1e-6) or np.allclose(taps, [r, -r], atol=1e-6)):
            raise IRError(f"{layer.name!r}: expected Haar synthesis filters (±1/sqrt 2), found {np.unique(taps)}")


def _synthesis_weights(graph: IRGraph, net: SynthesisNetwork) -> Dict[str, np.ndarray]:
    """Named weights of ``SynthesisNetwork.xml`` for :class:`SynthesisNetwork` ``net``."""
    sites = _style_sites(graph)
    if len(sites) != net.num_ws:
        raise IRError(f"the synthesis IR has {len(sites)} style affines, MobileStyleGAN has {net.num_ws}")
    _check_haar(graph)
    names = ["conv1"] + [f"layers.{i}.{part}" for i in range(len(net.layers)) for part in ("up", "conv1", "conv2")]
    names.append("to_img")
    state: Dict[str, np.ndarray] = {}
    for name, (matmul, add, scale, site) in zip(names, sites):
        prefix = f"{name}.conv." if name.endswith(("conv1", "conv2")) else f"{name}."
        state[prefix + "modulation.weight"] = graph.const(matmul, 1)
        state[prefix + "modulation.bias"] = graph.const(add, 1).reshape(-1)
        module = net.get_submodule(prefix.rstrip("."))
        expected_scale = getattr(module, "modulation_scale", None)
        if (scale is None) != (expected_scale is None) or (
                scale is not None and not math.isclose(scale, expected_scale, rel_tol=1e-5)):
            raise IRError(f"{name}: the IR's modulation scale {scale} differs from 1/sqrt(fan_in) = {expected_scale}")
        nxt = _next(graph, site)
        if name.endswith(".up"):
            if nxt.type != "VariadicSplit":
                raise IRError(f"{name}: expected the IDWT's split after the modulation, found {nxt.type}")
        elif name == "to_img":
            conv = _next(graph, site, "Convolution")
            state["to_img.weight"] = graph.const(conv, 1)
            state["to_img.bias"] = graph.const(_next(graph, conv, "Add"), 1).reshape(-1)
        else:
            conv_state, _ = _styled_conv(graph, site)
            state.update({f"{name}.{k}": v for k, v in conv_state.items()})
    const = _only([c for c in graph.ops("Broadcast") if c.attrs.get("mode") == "bidirectional"],
                  "Expand of the constant input")
    state["input.input"] = graph.const(const, 0)
    return state
