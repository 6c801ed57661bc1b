"""Training loop for the StyleGAN2 in :mod:`stylerig_lite.stylegan2` (CPU-first, resumable).

Follows the official StyleGAN2-ADA recipe (``training/loss.py`` / ``training_loop.py``):

* non-saturating logistic loss: G minimises softplus(-D(G(z))), D minimises softplus(D(G(z))) +
  softplus(-D(x));
* lazy R1 regularisation on reals every ``r1_interval`` (16) D steps, weighted by the interval,
  as its own optimizer step, with Adam's lr and betas adjusted by interval / (interval + 1);
* style mixing (probability 0.9): one random crossover layer per batch, later layers take the w of
  a second latent;
* an EMA copy of G (half-life ``ema_kimg`` thousand images, ramped up over the first images);
* Adam(betas=(0, 0.99), eps=1e-8), lr 0.0025 for both networks;
* optional path-length regularisation (off by default on the CPU preset: it costs an extra G
  forward and a double backward through G every ``pl_interval`` steps, and G is already the
  bottleneck on a CPU; it improves smoothness of the W -> image map, not sample quality);
* optional DiffAugment-style differentiable augmentation (colour, translation, cutout) applied to
  every image D sees, real and fake (Zhao et al. 2020).

Data parallel: under ``torchrun --nproc_per_node=N`` the same command trains on N processes
(:mod:`stylerig_lite.distributed`). Every rank draws the whole global batch's randomness (reals,
latents, mixing, noise inputs, augmentation) from the shared generator and computes its rows of it,
whole minibatch-stddev groups per rank; each loss is the rank's share of the global-batch mean and the
gradients are summed by an explicit all-reduce (G and D alternate and R1 needs a double backward,
which DistributedDataParallel does not fit); ``w_avg`` and the path-length mean follow the global
batch. So N processes take the single-process steps (up to float rounding), the checkpoint (rank 0
writes it) holds the plain networks and the generator state, and a run resumes with any N.

Devices: ``--device auto|cpu|cuda|cuda:N`` (:mod:`stylerig_lite.devices`; ``auto`` = CUDA when
available). On a CPU the code path is exactly the one of a CPU-only build. On a GPU the networks,
optimizer states and ``pl_mean`` live on the device, a FaceWorld dataset is kept there whole (uint8)
and each batch is gathered there, the logged values are read back every :data:`STATS_EVERY` steps
instead of after each one (no host sync per step), and TF32 / cuDNN autotuning are on (``--no-tf32``).
Random numbers are still drawn from the seeded CPU generator and moved to the device: they are a
few small tensors per step (indices, latents, noise maps, augmentation parameters), so the same
run draws the same numbers on any device. Checkpoints always hold CPU tensors. ``--minutes`` stops
a run (with a checkpoint) after a fixed time; ``--resume-batch`` resumes with another global batch.

All randomness (latents, real batches, mixing, augmentation, noise inputs) comes from one
``torch.Generator`` whose state is saved in the checkpoint, so a resumed run continues exactly where
the interrupted one stopped. Data come from any callable
``sample_real(batch_size, generator) -> [B, 3, H, W] in [-1, 1]`` (FaceWorld provides one;
:func:`make_blob_source` is a synthetic stand-in).

Speed of the ``cpu64`` preset (G 1.40 M parameters with w_dim 256, D 0.88 M; batch 32; one step =
G step + D step, lazy R1 excluded, which adds one D forward/double-backward every 16 steps),
measured on the shared 2-core development machine while other jobs kept it loaded (load average
4-7), so wall-clock numbers are lower bounds:

=============================  ======================  ==========================================
modulated conv                 CPU s / step, 1 thread  wall, 2 threads (OMP_WAIT_POLICY=PASSIVE)
=============================  ======================  ==========================================
non-fused + channels-last      1.39 (23 img/CPU-s)     3.29 s / step = 9.7 img/s (best of 3)
non-fused                      1.53
fused + channels-last          1.58
fused (official)               1.72                    4.53 s / step = 7.1 img/s (best of 3)
=============================  ======================  ==========================================

So the preset uses non-fused modulation with channels-last convolutions. The table predates the
fast demodulation (coefficients from ``styles^2 @ sum_kk w^2`` instead of a materialised
[B, O, I, 3, 3] weight tensor, which was most of the non-convolution time): that made a step
x1.2-1.3 faster in images per CPU-second (``python -m stylerig_lite.bench gan --reference DIR``
against the previous code, interleaved, on the loaded machine). On an idle machine DESIGN
section 5 measured about 20 images/s for a comparable prototype (~70k images an hour). With
2 threads on a machine shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE`` (or use one thread):
OpenMP threads spin-waiting for a descheduled partner made steps up to 20x slower here.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .checks import assert_finite, assert_shape
from .devices import add_device_argument, configure_cuda, resolve_device
from .distributed import BatchShard
from .io_utils import CheckpointError, default_file_mode, sha256_file
from .stylegan2 import (EMA_REFERENCE_KEY, Discriminator, Generator, StyleGAN2Config, get_config, load_checkpoint,
                        resolve_ema_reference, save_checkpoint, save_generator_only)

__all__ = [
    "TrainConfig",
    "GANTrainer",
    "PendingStats",
    "diff_augment",
    "make_blob_source",
    "save_image_grid",
    "snapshot_name",
    "train_gan",
    "add_arguments",
    "build_arg_parser",
    "run_from_args",
    "main",
]

SampleReal = Callable[[int, torch.Generator], torch.Tensor]


@dataclasses.dataclass
class TrainConfig:
    """Training options (the model's own options live in :class:`StyleGAN2Config`)."""

    batch_size: int = 32
    lr_G: float = 0.0025
    lr_D: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float | None = None       # None: the ADA 'auto' heuristic 0.0002 * res^2 / batch.
    r1_interval: int = 16               # Lazy R1 every N D steps (0 = never).
    style_mixing_prob: float = 0.9
    pl_weight: float = 0.0              # Path-length regularisation weight (official: 2); 0 = off.
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    ema_kimg: float | None = None       # EMA half-life in thousands of images; None: batch * 10 / 32.
    ema_rampup: float | None = 0.05     # Half-life at most ema_rampup * images seen (None = off).
    augment: str = ""                   # DiffAugment policy, e.g. 'color,translation,cutout' ('' = off).
    seed: int = 0
    checkpoint_every: int = 10_000      # Images between checkpoints (0 = only at the end).
    sample_every: int = 10_000          # Images between sample grids (0 = only at the end).
    snapshot_every: int = 0             # Images between kept G_ema snapshots (0 = none); see GANTrainer.train.
    grid_size: tuple[int, int] = (8, 4)  # Sample grid columns x rows.
    compact_checkpoint: bool = False    # fp16 weights / bf16 Adam moments: half the file size.

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.grid_size = tuple(int(g) for g in self.grid_size)  # type: ignore[assignment]
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {self.style_mixing_prob}")
        _parse_policy(self.augment)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        d["grid_size"] = list(d["grid_size"])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**dict(data))


# ----------------------------------------------------------------------------------------------
# Differentiable augmentation (our own DiffAugment-style implementation).

_POLICIES = ("color", "translation", "cutout")


def _parse_policy(policy: str) -> list[str]:
    parts = [p.strip() for p in policy.split(",") if p.strip()]
    bad = [p for p in parts if p not in _POLICIES]
    if bad:
        raise ValueError(f"unknown augmentation(s) {bad}; choose from {list(_POLICIES)}, comma separated")
    return parts


def _rand(shape: Sequence[int], generator: torch.Generator | BatchShard, device) -> torch.Tensor:
    if isinstance(generator, BatchShard):  # shape[0] is the local batch: draw for the global one, keep our rows
        if generator.local_batch != shape[0]:
            raise ValueError(f"augmenting {shape[0]} images with draws for {generator.local_batch} rows")
        return generator.rand(*shape[1:]).to(device)
    if generator.device != torch.device(device):  # a CPU generator feeding a GPU batch: draw, then move
        return torch.rand(list(shape), generator=generator, device=generator.device).to(device)
    return torch.rand(list(shape), generator=generator, device=device)


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | BatchShard,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> torch.Tensor:
    """Random colour / translation / cutout, differentiable in ``x`` ([B, C, H, W] in [-1, 1]).

    D sees only augmented images (real and fake alike), so it cannot memorise a small data set,
    and G's gradients pass through the augmentation, so G is not taught to produce augmented images.
    ``generator`` may be a :class:`~stylerig_lite.distributed.BatchShard`: the draws are then those of
    its global batch, of which ``x`` holds this process's rows.
    """
    assert_shape(x, [None, None, None, None], "images to augment")
    B, C, H, W = x.shape
    dev = x.device
    for op in _parse_policy(policy):
        if op == "color":
            x = x + (_rand([B, 1, 1, 1], generator, dev) - 0.5)  # brightness
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (_rand([B, 1, 1, 1], generator, dev) * 2) + mean  # saturation
            mean = x.mean(dim=[1, 2, 3], keepdim=True)
            x = (x - mean) * (_rand([B, 1, 1, 1], generator, dev) + 0.5) + mean  # contrast
        elif op == "translation":
            sy, sx = int(H * translation_ratio + 0.5), int(W * translation_ratio + 0.5)
            ty = (_rand([B], generator, dev) * (2 * sy + 1)).floor().long() - sy  # [B] in [-sy, sy]
            tx = (_rand([B], generator, dev) * (2 * sx + 1)).floor().long() - sx
            padded = F.pad(x, [sx, sx, sy, sy])  # zero padding
            rows = torch.arange(H, device=dev)[None] - ty[:, None] + sy  # [B, H]
            cols = torch.arange(W, device=dev)[None] - tx[:, None] + sx  # [B, W]
            b = torch.arange(B, device=dev)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        elif op == "cutout":
            ch, cw = int(H * cutout_ratio + 0.5), int(W * cutout_ratio + 0.5)
            cy = (_rand([B], generator, dev) * (H + 1 - ch % 2)).floor().long()  # cutout centres
            cx = (_rand([B], generator, dev) * (W + 1 - cw % 2)).floor().long()
            ys = torch.arange(H, device=dev)[None]
            xs = torch.arange(W, device=dev)[None]
            inside_y = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])  # [B, H]
            inside_x = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])  # [B, W]
            keep = ~(inside_y[:, :, None] & inside_x[:, None, :])  # [B, H, W]
            x = x * keep[:, None].to(x.dtype)
    return x


# ----------------------------------------------------------------------------------------------
# A synthetic data source for tests and demos.


def make_blob_source(resolution: int = 64, num_blobs: int = 3) -> SampleReal:
    """``sample_real(batch, generator)``: random coloured soft ellipses on gradient backgrounds."""

    def sample_real(batch_size: int, generator: torch.Generator) -> torch.Tensor:
        R = resolution
        g = generator
        t = (torch.arange(R, dtype=torch.float32) + 0.5) / R * 2 - 1  # pixel centres in [-1, 1]
        yy, xx = torch.meshgrid(t, t, indexing="ij")  # [R, R]
        c0 = torch.rand([batch_size, 3, 1, 1], generator=g) * 2 - 1
        c1 = torch.rand([batch_size, 3, 1, 1], generator=g) * 2 - 1
        angle = torch.rand([batch_size, 1, 1, 1], generator=g) * 2 * math.pi
        ramp = (xx * torch.cos(angle) + yy * torch.sin(angle)) * 0.5 + 0.5  # [B, 1, R, R]
        img = c0 + (c1 - c0) * ramp
        for _ in range(num_blobs):
            centre = torch.rand([batch_size, 2, 1, 1], generator=g) * 1.2 - 0.6
            radius = torch.rand([batch_size, 2, 1, 1], generator=g) * 0.35 + 0.15
            colour = torch.rand([batch_size, 3, 1, 1], generator=g) * 2 - 1
            d2 = ((xx - centre[:, :1]) / radius[:, :1]) ** 2 + ((yy - centre[:, 1:]) / radius[:, 1:]) ** 2
            alpha = torch.sigmoid((1 - d2) * 8)  # soft edge, [B, 1, R, R]
            img = img * (1 - alpha) + colour * alpha
        return img.clamp(-1, 1)

    return sample_real


# ----------------------------------------------------------------------------------------------
# Image grids.


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, grid_size: tuple[int, int]) -> Path:
    """Tile ``[N, 3, H, W]`` images in [-1, 1] into a ``cols x rows`` PNG, written atomically."""
    from PIL import Image

    cols, rows = grid_size
    assert_shape(images, [cols * rows, None, None, None], "grid images")
    N, C, H, W = images.shape
    img = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = img.reshape(rows, cols, C, H, W).permute(0, 3, 1, 4, 2).reshape(rows * H, cols * W, C).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(img[:, :, 0] if C == 1 else img).save(tmp, format="PNG")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ----------------------------------------------------------------------------------------------
# The trainer.


@dataclasses.dataclass
class PendingStats:
    """One step's logged values still on the device (see ``GANTrainer.train_step(sync=False)``)."""

    keys: tuple[str, ...]
    values: torch.Tensor  # [len(keys)] float64, global-batch means
    images_seen: int

#: Steps between reads of the logged values when training on a GPU (each read waits for the GPU).
STATS_EVERY = 50


class GANTrainer:
    """Owns G, D, G_ema, the optimizers, the RNG and the progress counters.

    >>> trainer = GANTrainer(get_config('tiny'), TrainConfig(batch_size=8), make_blob_source(16))
    >>> stats = trainer.train_step()        # one D step + one G step (+ regularisers when due)
    """

    def __init__(self, model_config: StyleGAN2Config | str, train_config: TrainConfig | None,
                 sample_real: SampleReal, out_dir: str | os.PathLike | None = None, device: Any = None):
        if isinstance(model_config, str):
            model_config = get_config(model_config)
        self.model_config = model_config
        self.cfg = train_config or TrainConfig()
        if not callable(sample_real):
            raise TypeError("sample_real must be a callable (batch_size, generator) -> images [B, 3, H, W]")
        self.sample_real = sample_real
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # None: the CPU (the library default; the CLI's --device defaults to auto).
        # A torch.device is taken as it is; a string is checked by resolve_device ('auto', 'cuda:1', ...).
        self.device = (torch.device("cpu") if device is None else
                       device if isinstance(device, torch.device) else resolve_device(device))
        cfg = self.cfg

        # Networks are initialised on the CPU (same weights on every device), then moved.
        self.G = Generator(model_config, seed=cfg.seed).train()
        self.D = Discriminator(model_config, seed=cfg.seed + 1).train()
        if self.device.type != "cpu":
            self.G.to(self.device)
            self.D.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        # Lazy regularisation: the regulariser runs as an extra optimizer step every `interval`
        # steps, so lr and betas are rescaled to keep the per-image dynamics unchanged.
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_G, betas=cfg.betas, eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_D, betas=cfg.betas, eps=1e-8)
        self._configure_optimizers()
        # All training randomness comes from this CPU generator on every device: draws are moved to
        # the device (small tensors), so a run draws the same numbers on a CPU and on a GPU.
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.pl_mean = torch.zeros([], device=self.device)
        self._reals_checked = False
        self.step = 0
        self.images_seen = 0
        self.history: list[dict[str, float]] = []

    # -- helpers -----------------------------------------------------------------------------

    @property
    def r1_gamma(self) -> float:
        if self.cfg.r1_gamma is not None:
            return float(self.cfg.r1_gamma)
        return 0.0002 * self.model_config.img_resolution ** 2 / self.cfg.batch_size

    def _configure_optimizers(self) -> None:
        cfg = self.cfg
        for opt, lr, interval in ((self.opt_G, cfg.lr_G, cfg.pl_interval if cfg.pl_weight > 0 else 0),
                                  (self.opt_D, cfg.lr_D, cfg.r1_interval if self.r1_gamma > 0 else 0)):
            ratio = interval / (interval + 1) if interval > 0 else 1.0
            for group in opt.param_groups:
                group["lr"] = lr * ratio
                group["betas"] = tuple(b ** ratio for b in cfg.betas)

    # -- data parallelism: every rank draws the same global batch and computes its rows of it ----

    def _mbstd_group(self, batch: int) -> int:
        """Samples D's minibatch-stddev layer mixes: they must stay together on one rank."""
        mc = self.model_config
        if mc.mbstd_num_channels <= 0:
            return 1
        return batch if mc.mbstd_group_size is None else min(mc.mbstd_group_size, batch)

    def _draws(self, batch: int, through_D: bool = True) -> BatchShard:
        """Per-sample random draws for a global batch of ``batch``, and which of its rows this process computes.

        A single process computes all rows (and draws exactly what it always drew). In a process group
        each rank draws the whole global batch's numbers from the shared generator and keeps its rows;
        batches that go through D keep D's minibatch-stddev groups whole (see ``shard_rows``).
        """
        if not distributed.is_distributed():
            return BatchShard(self.gen, batch)
        group = self._mbstd_group(batch) if through_D else 1
        return BatchShard(self.gen, batch, distributed.shard_rows(batch, group_size=group))

    def _backward(self, loss: torch.Tensor, fraction: float, module: torch.nn.Module) -> None:
        """Backward pass of this rank's share of the global-batch mean, gradients summed over ranks.

        Every loss here is a mean over its batch: rank r's mean over its rows, weighted by its
        fraction of the batch, sums over ranks to the global mean, and so do the gradients (an
        explicit all-reduce rather than DDP: G and D alternate, R1 needs a double backward).
        """
        if not distributed.is_distributed():
            loss.backward()
            return
        (loss * fraction).backward()
        distributed.all_reduce_gradients(module.parameters())

    def _global_stats(self, local: dict[str, tuple[torch.Tensor, float]],
                      sync: bool = True) -> "dict[str, float] | PendingStats":
        """Logged values as means over the global batch: one all-reduce of the weighted local means.

        ``sync=False`` (GPU training): the values stay on the device as a :class:`PendingStats`, so
        the step does not wait for the GPU; :meth:`resolve_stats` reads many steps' values at once.
        """
        if not sync:
            values = torch.stack([v.detach().double().reshape(()) * fraction for v, fraction in local.values()])
            if distributed.is_distributed():
                distributed.all_reduce_sum(values)
            return PendingStats(tuple(local), values, self.images_seen)
        if not distributed.is_distributed():
            return {k: float(v) for k, (v, _) in local.items()}
        values = torch.stack([v.detach().double().reshape(()) * fraction for v, fraction in local.values()])
        return dict(zip(local, distributed.all_reduce_sum(values).tolist()))

    def _update_w_avg(self, w: torch.Tensor, global_batch: int) -> None:
        """``MappingNetwork``'s w_avg update with the mean w of the global batch (``w``: this rank's rows)."""
        mapping = self.G.mapping
        if getattr(mapping, "w_avg_beta", None) is None or not hasattr(mapping, "w_avg"):
            return
        total = distributed.all_reduce_sum(w.detach().to(torch.float32).sum(dim=0))
        with torch.no_grad():
            mapping.w_avg.copy_((total / global_batch).lerp(mapping.w_avg, mapping.w_avg_beta))

    # -- batches -----------------------------------------------------------------------------

    def _real_batch(self, draws: BatchShard | None = None) -> torch.Tensor:
        B, R = self.cfg.batch_size, self.model_config.img_resolution
        real = self.sample_real(B, self.gen)
        assert_shape(real, [B, self.model_config.img_channels, R, R], "sample_real() output")
        # Value checks read the batch back: every batch on the CPU, only the first one from a source
        # that already delivers on the GPU (no host sync per step there).
        if real.device.type == "cpu" or not self._reals_checked:
            assert_finite(real, "sample_real() output")
            if real.min() < -1.001 or real.max() > 1.001:
                raise ValueError(f"sample_real() must return images in [-1, 1], got range "
                                 f"[{real.min():.3f}, {real.max():.3f}]")
            self._reals_checked = True
        real = real.to(torch.float32)
        if real.device != self.device:
            real = real.to(self.device, non_blocking=True)
        return draws.take(real) if draws is not None else real

    def _augment(self, img: torch.Tensor, draws: BatchShard | None = None) -> torch.Tensor:
        if not self.cfg.augment:
            return img
        return diff_augment(img, self.cfg.augment, draws if draws is not None else self.gen)

    def _mapping_with_mixing(self, z: torch.Tensor, update_emas: bool, draws: BatchShard | None = None) -> torch.Tensor:
        draws = BatchShard.of(draws if draws is not None else self.gen, z.shape[0])
        sync_w_avg = update_emas and distributed.is_distributed()
        ws = self.G.mapping(z, update_emas=update_emas and not sync_w_avg)  # [B, num_ws, w_dim]
        if sync_w_avg:
            self._update_w_avg(ws[:, 0], draws.global_batch)
        if self.cfg.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, [], generator=self.gen))
            if float(torch.rand([], generator=self.gen)) >= self.cfg.style_mixing_prob:
                cutoff = num_ws
            z2 = draws.randn(*z.shape[1:]).to(z.device)
            ws2 = self.G.mapping(z2)
            ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def _generate(self, batch: int, update_emas: bool = False,
                  draws: BatchShard | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, ws)`` of ``draws``' rows of a fresh global batch of ``batch`` (all rows by default)."""
        draws = draws if draws is not None else self._draws(batch)
        if draws.global_batch != batch:
            raise ValueError(f"draws for a batch of {draws.global_batch} used for {batch}")
        z = draws.randn(self.G.z_dim).to(self.device)
        ws = self._mapping_with_mixing(z, update_emas, draws)
        img = self.G.synthesis(ws, noise_mode="random", noise_generator=draws)
        return img, ws

    # -- one iteration -----------------------------------------------------------------------

    def train_step(self, sync: bool = True) -> "dict[str, float] | PendingStats":
        """One iteration: G main (+ path length), D main (+ R1), EMA update. Returns loss values.

        In a process group every rank runs this on its rows of the same global batch (see
        :meth:`_draws`); the returned values are global-batch means on every rank.
        ``sync=False`` returns them still on the device (a :class:`PendingStats`, not yet in
        ``history``; pass a list of them to :meth:`resolve_stats`), so a GPU step never waits.
        """
        cfg = self.cfg
        B = cfg.batch_size
        draws = self._draws(B)
        share = draws.local_batch / B
        local: dict[str, tuple[torch.Tensor, float]] = {}
        real = self._real_batch(draws)

        # G: non-saturating loss through a frozen D.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        fake, _ = self._generate(B, draws=draws)
        loss_G = F.softplus(-self.D(self._augment(fake, draws))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        self._backward(loss_G, share, self.G)
        self.opt_G.step()
        local["loss_G"] = (loss_G.detach(), share)

        if cfg.pl_weight > 0 and cfg.pl_interval > 0 and self.step % cfg.pl_interval == 0:
            local["pl_penalty"] = self._path_length_step()

        # D: logistic loss on fakes (G frozen, no graph through G) and reals.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake, _ = self._generate(B, update_emas=True, draws=draws)
        logits_fake = self.D(self._augment(fake, draws))
        logits_real = self.D(self._augment(real, draws))
        loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        self.opt_D.zero_grad(set_to_none=True)
        self._backward(loss_D, share, self.D)
        self.opt_D.step()
        local["loss_D"] = (loss_D.detach(), share)
        local["D_real"] = (logits_real.detach().mean(), share)
        local["D_fake"] = (logits_fake.detach().mean(), share)

        if self.r1_gamma > 0 and cfg.r1_interval > 0 and self.step % cfg.r1_interval == 0:
            local["r1_penalty"] = self._r1_step(real, draws)

        self._update_ema()
        self.step += 1
        self.images_seen += B
        self.G.requires_grad_(True)
        if not sync:
            return self._global_stats(local, sync=False)
        stats = self._global_stats(local)
        stats["images_seen"] = float(self.images_seen)
        self.history.append(stats)
        return stats

    def _r1_step(self, real: torch.Tensor, draws: BatchShard | None = None) -> tuple[torch.Tensor, float]:
        """Lazy R1: gamma/2 * E||grad_x D(x)||^2 on reals, scaled by the interval, own Adam step.

        Returns this rank's mean penalty and its share of the batch.
        """
        real = real.detach().requires_grad_(True)
        logits = self.D(self._augment(real, draws))
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3])  # [B]
        loss = (penalty * (self.r1_gamma / 2)).mean() * self.cfg.r1_interval
        self.opt_D.zero_grad(set_to_none=True)
        share = real.shape[0] / self.cfg.batch_size
        self._backward(loss, share, self.D)
        self.opt_D.step()
        return penalty.detach().mean(), share

    def _path_length_step(self) -> tuple[torch.Tensor, float]:
        """Path-length regulariser: keep |J^T y| constant for random image-space directions y.

        Returns this rank's mean penalty and its share of the (shrunk) batch.
        """
        cfg = self.cfg
        self.D.requires_grad_(False)
        batch = max(cfg.batch_size // cfg.pl_batch_shrink, 1)
        draws = self._draws(batch, through_D=False)
        share = draws.local_batch / batch
        img, ws = self._generate(batch, draws=draws)
        noise = draws.randn(*img.shape[1:]).to(img.device) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()  # [B]
        if distributed.is_distributed():  # the running mean follows the global batch's mean length
            mean_length = distributed.all_reduce_sum(lengths.detach().sum()) / batch
        else:
            mean_length = lengths.mean().detach()
        self.pl_mean = self.pl_mean.lerp(mean_length, cfg.pl_decay)
        penalty = (lengths - self.pl_mean).square()
        loss = (penalty * cfg.pl_weight).mean() * cfg.pl_interval + img[:, 0, 0, 0].sum() * 0
        self.opt_G.zero_grad(set_to_none=True)
        self._backward(loss, share, self.G)
        self.opt_G.step()
        return penalty.detach().mean(), share

    @torch.no_grad()
    def _update_ema(self) -> None:
        cfg = self.cfg
        ema_nimg = (cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch_size * 10 / 32) * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, (self.images_seen + cfg.batch_size) * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def resolve_stats(self, pending: Sequence["PendingStats"]) -> list[dict[str, float]]:
        """Read the values of ``train_step(sync=False)`` calls back (one host sync); appends them to ``history``."""
        if not pending:
            return []
        rows = torch.cat([p.values.reshape(-1) for p in pending]).tolist()
        out, offset = [], 0
        for p in pending:
            stats = dict(zip(p.keys, rows[offset : offset + len(p.keys)]))
            offset += len(p.keys)
            stats["images_seen"] = float(p.images_seen)
            self.history.append(stats)
            out.append(stats)
        return out

    # -- loop, samples, checkpoints -----------------------------------------------------------

    def grid_latents(self) -> torch.Tensor:
        """Fixed latents for sample grids (independent of the training RNG)."""
        cols, rows = self.cfg.grid_size
        g = torch.Generator().manual_seed(self.cfg.seed + 12345)
        return torch.randn([cols * rows, self.G.z_dim], generator=g)

    @torch.no_grad()
    def sample_grid(self, path: str | os.PathLike) -> Path:
        imgs = torch.cat([self.G_ema(z.to(self.device), noise_mode="const") for z in self.grid_latents().split(32)])
        return save_image_grid(imgs, path, self.cfg.grid_size)

    def save_snapshot(self, path: str | os.PathLike) -> Path:
        """Keep this moment's G_ema (a generator-only float16 file, like the official network-snapshot
        pickles): GAN statistics wander between checkpoints, so a run is judged on a series of them."""
        return save_generator_only(path, self.G_ema, step=self.step, images_seen=self.images_seen)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "train_config": self.cfg.to_dict(),
            "gen_state": self.gen.get_state(),
            "pl_mean": self.pl_mean.detach().cpu().clone(),
        }

    def save(self, path: str | os.PathLike, compact: bool | None = None) -> Path:
        """Atomic checkpoint of everything needed to resume (one file, overwritten each time)."""
        return save_checkpoint(path, self.G, self.D, self.G_ema, self.opt_G, self.opt_D, step=self.step,
                               images_seen=self.images_seen, extra=self.checkpoint_extra(),
                               compact=self.cfg.compact_checkpoint if compact is None else compact)

    @classmethod
    def resume(cls, path: str | os.PathLike, sample_real: SampleReal, out_dir: str | os.PathLike | None = None,
               train_overrides: Mapping[str, Any] | None = None, device: Any = None,
               ema_file: str | os.PathLike | None = None) -> "GANTrainer":
        """Rebuild a trainer from a checkpoint: weights, optimizer states, counters and RNG.

        The checkpoint is read onto the CPU and the trainer moved to ``device`` (default CPU), so a
        checkpoint written on a GPU resumes on a CPU and vice versa. Overriding ``batch_size`` keeps
        the checkpoint's effective R1 weight unless ``r1_gamma`` is overridden too. A slim
        checkpoint that stores its G_ema by reference (:func:`slim_resume_checkpoint`) finds it at
        ``ema_file``, beside ``path`` or among the embedded weights, checked by sha256.
        """
        payload = load_checkpoint(path, map_location="cpu")
        extra = payload.get("extra") or {}
        if "train_config" not in extra or payload.get("D") is None:
            raise CheckpointError(f"{path} is a generator-only checkpoint and cannot resume training")
        overrides = dict(train_overrides or {})
        stored = extra["train_config"]
        if ("batch_size" in overrides and overrides["batch_size"] != stored.get("batch_size")
                and "r1_gamma" not in overrides and stored.get("r1_gamma") is None):
            res = StyleGAN2Config.from_dict(payload["config"]).img_resolution
            overrides["r1_gamma"] = 0.0002 * res ** 2 / stored["batch_size"]  # the 'auto' value it trained with
        train_cfg = TrainConfig.from_dict({**stored, **overrides})
        trainer = cls(StyleGAN2Config.from_dict(payload["config"]), train_cfg, sample_real, out_dir, device=device)
        trainer.G.load_state_dict(payload["G"])
        trainer.D.load_state_dict(payload["D"])
        if payload.get("G_ema") is None:  # a slim checkpoint holding its G_ema by reference
            from .pretrained import WEIGHTS_DIR  # the embedded generator may be the referenced file

            payload["G_ema"] = resolve_ema_reference(payload, path, ema_file, search_dirs=[WEIGHTS_DIR])
        trainer.G_ema.load_state_dict(payload["G_ema"])
        if payload.get("opt_G") is not None and payload.get("opt_D") is not None:
            trainer.opt_G.load_state_dict(payload["opt_G"])
            trainer.opt_D.load_state_dict(payload["opt_D"])
        elif distributed.is_main():  # a slim checkpoint (see slim_resume_checkpoint): Adam restarts its moments
            print(f"{path}: no optimizer states; resuming with fresh Adam moments", file=sys.stderr)
        trainer._configure_optimizers()  # lr / betas follow the (possibly overridden) TrainConfig
        trainer.gen.set_state(extra["gen_state"])
        trainer.pl_mean = extra.get("pl_mean", torch.zeros([])).to(device=trainer.device, dtype=torch.float32)
        trainer.step = int(payload["step"])
        trainer.images_seen = int(payload["images_seen"])
        return trainer

    def check_ranks_agree(self) -> None:
        """In a process group: raise unless every rank holds the same weights, optimizer states, counters and RNG."""
        self._draws(self.cfg.batch_size)  # the global batch must split into whole minibatch-std groups
        if self.cfg.pl_weight > 0:
            self._draws(max(self.cfg.batch_size // self.cfg.pl_batch_shrink, 1), through_D=False)
        distributed.assert_same_on_all_ranks(
            "GAN training states", self.G.state_dict(), self.D.state_dict(), self.G_ema.state_dict(),
            self.opt_G.state_dict(), self.opt_D.state_dict(), self.gen.get_state(), self.pl_mean,
            self.step, self.images_seen, self.cfg.to_dict())

    def train(self, total_images: int, progress: bool = True, checkpoint_path: str | os.PathLike | None = None,
              log: bool = True, minutes: float | None = None) -> list[dict[str, float]]:
        """Train until ``images_seen >= total_images``; checkpoints and grids go to ``out_dir``.

        ``minutes``: also stop (with a sample grid and a checkpoint, as at the end) once this much
        wall-clock time has passed (rank 0's clock decides for every rank). On a GPU the logged
        values are read back every :data:`STATS_EVERY` steps and at each grid or checkpoint, not
        after every step.

        In a process group (``torchrun``) every rank calls this; rank 0 alone shows the progress
        bar and writes the sample grids, log and checkpoints, and the others wait for each
        checkpoint (a barrier), so the files are always complete when any rank moves on.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        out = self.out_dir
        main = distributed.is_main()
        self.check_ranks_agree()
        if out is not None:
            if main:
                out.mkdir(parents=True, exist_ok=True)
            if checkpoint_path is None:
                checkpoint_path = out / "checkpoint.pt"
            if main and not (out / "reals.png").exists():
                cols, rows = cfg.grid_size
                g = torch.Generator().manual_seed(cfg.seed + 54321)
                save_image_grid(self.sample_real(cols * rows, g), out / "reals.png", cfg.grid_size)
        next_ckpt = _next_multiple(self.images_seen, cfg.checkpoint_every)
        next_grid = _next_multiple(self.images_seen, cfg.sample_every)
        next_snapshot = _next_multiple(self.images_seen, cfg.snapshot_every)
        start_images = self.images_seen
        lazy = self.device.type != "cpu"  # GPU: no host sync per step for the logged values
        pending: list[PendingStats] = []
        deadline = None if minutes is None else float(minutes) * 60.0
        t0 = time.perf_counter()
        bar = tqdm(total=max(total_images - start_images, 0), disable=not (progress and main), unit="img",
                   desc="train-gan" if distributed.world_size() == 1 else f"train-gan x{distributed.world_size()}",
                   dynamic_ncols=True)
        results = []
        try:
            done = self.images_seen >= total_images
            while not done:
                if lazy:
                    pending.append(self.train_step(sync=False))
                else:
                    stats = self.train_step()
                    results.append(stats)
                    bar.set_postfix(G=f"{stats['loss_G']:.3f}", D=f"{stats['loss_D']:.3f}", refresh=False)
                bar.update(cfg.batch_size)
                done = self.images_seen >= total_images
                if deadline is not None and not done:
                    done = bool(distributed.broadcast_object(time.perf_counter() - t0 >= deadline))
                if lazy and pending and (done or len(pending) >= STATS_EVERY or self.images_seen >= next_grid
                                         or self.images_seen >= next_ckpt):
                    resolved = self.resolve_stats(pending)
                    pending = []
                    results.extend(resolved)
                    bar.set_postfix(G=f"{resolved[-1]['loss_G']:.3f}", D=f"{resolved[-1]['loss_D']:.3f}",
                                    refresh=False)
                if out is not None and (done or self.images_seen >= next_grid):
                    if main:
                        self.sample_grid(out / f"fakes{self.images_seen:09d}.png")
                    next_grid = _next_multiple(self.images_seen, cfg.sample_every)
                if out is not None and cfg.snapshot_every > 0 and (done or self.images_seen >= next_snapshot):
                    if main:
                        self.save_snapshot(out / snapshot_name(self.images_seen))
                    next_snapshot = _next_multiple(self.images_seen, cfg.snapshot_every)
                if checkpoint_path is not None and (done or self.images_seen >= next_ckpt):
                    if main:
                        self.save(checkpoint_path)
                    distributed.barrier()  # every rank decides alike (image counts): all wait for the file
                    next_ckpt = _next_multiple(self.images_seen, cfg.checkpoint_every)
                    if out is not None and log and main:
                        elapsed = time.perf_counter() - t0
                        _append_jsonl(out / "log.jsonl", {
                            "images_seen": self.images_seen, "step": self.step,
                            "images_per_s": (self.images_seen - start_images) / max(elapsed, 1e-9),
                            **{k: float(np.mean([r[k] for r in results if k in r]))
                               for k in ("loss_G", "loss_D", "D_real", "D_fake", "r1_penalty", "pl_penalty")
                               if any(k in r for r in results)},
                        })
                        results = []
        finally:
            bar.close()
        return self.history


def slim_resume_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                           ema_file: str | os.PathLike | None = None, write_ema: bool = False) -> Path:
    """Copy a training checkpoint without its optimizer states, weights in float16 (about 40% of the size).

    This is the file committed between working sessions: G, D and G_ema plus counters and RNG
    state. :meth:`GANTrainer.resume` accepts it and restarts Adam's moment estimates, which
    costs a few hundred steps of slightly noisier updates, not the training so far.

    ``ema_file``: a generator-only file exported from the same checkpoint (``pretrained.export``
    writes ``faceworld_stylegan2.pt``). Its G_ema must equal ``src``'s in float16; the slim file
    then stores only its name and sha256 instead of a second copy of the weights (a third smaller),
    and resuming finds it beside the checkpoint or among the embedded weights. ``write_ema=True``
    writes that file first (:func:`~stylerig_lite.stylegan2.save_generator_only`), for a run whose
    G_ema is not (yet) the embedded generator.
    """
    payload = load_checkpoint(src)
    if write_ema:
        if ema_file is None:
            raise ValueError("write_ema=True needs ema_file, the path to write the G_ema to")
        G_ema = Generator(StyleGAN2Config.from_dict(payload["config"]))
        G_ema.load_state_dict(payload["G_ema"])
        save_generator_only(ema_file, G_ema, step=payload["step"], images_seen=payload["images_seen"])
    G = Generator(StyleGAN2Config.from_dict(payload["config"]))
    G.load_state_dict(payload["G"])
    G_ema = Generator(G.config)
    G_ema.load_state_dict(payload["G_ema"])
    D = Discriminator(G.config)
    D.load_state_dict(payload["D"])
    extra = dict(payload.get("extra") or {})
    if ema_file is not None:
        referenced = load_checkpoint(ema_file)["G_ema"]
        if referenced is None or referenced.keys() != payload["G_ema"].keys() or not all(
                torch.equal(referenced[k], payload["G_ema"][k].half().float()) for k in referenced):
            raise ValueError(f"{ema_file} does not hold the G_ema of {src} (in float16); export it from this "
                             "checkpoint first (pretrained.export('generator', ...))")
        extra[EMA_REFERENCE_KEY] = {"name": Path(ema_file).name, "sha256": sha256_file(ema_file),
                                    "images_seen": int(payload["images_seen"])}
        G_ema = None
    return save_checkpoint(dst, G, D, G_ema, step=payload["step"], images_seen=payload["images_seen"],
                           extra=extra, compact=True)


def _next_multiple(value: int, every: int) -> float:
    if every <= 0:
        return math.inf
    return (value // every + 1) * every


def snapshot_name(images_seen: int) -> str:
    """File name of the G_ema snapshot kept at ``images_seen`` (``--snapshot-every``)."""
    return f"network-snapshot-{int(images_seen):09d}.pt"


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# Options that may change when a run is resumed (they do not alter the training dynamics).
RESUMABLE_OVERRIDES = ("checkpoint_every", "sample_every", "snapshot_every", "grid_size", "compact_checkpoint")


def train_gan(sample_real: SampleReal, out_dir: str | os.PathLike, total_images: int,
              model_config: StyleGAN2Config | str = "cpu64", train_config: TrainConfig | None = None,
              resume: bool = True, progress: bool = True, device: Any = None, minutes: float | None = None,
              resume_batch: int | None = None) -> GANTrainer:
    """Train (or resume, if ``out_dir/checkpoint.pt`` exists and ``resume``) up to ``total_images``.

    On resume, the stored model and training options win, except the bookkeeping options in
    ``RESUMABLE_OVERRIDES``, which are taken from ``train_config`` when it is given, and the global
    batch, which ``resume_batch`` changes (keeping the checkpoint's effective R1 weight; the EMA
    half-life in images follows the batch as in a fresh run). ``device``: where to compute (default
    CPU). ``minutes``: stop and checkpoint after this much wall-clock time.
    """
    ckpt = Path(out_dir) / "checkpoint.pt"
    say = distributed.is_main()
    # Every rank must decide alike (rank 0 may write the file while another rank is still looking).
    if distributed.broadcast_object(resume and ckpt.exists()):
        overrides = {}
        if train_config is not None:
            overrides = {k: getattr(train_config, k) for k in RESUMABLE_OVERRIDES}
        if resume_batch is not None:
            overrides["batch_size"] = int(resume_batch)
        try:
            trainer = GANTrainer.resume(ckpt, sample_real, out_dir, train_overrides=overrides, device=device)
        except CheckpointError as error:
            raise CheckpointError(f"cannot resume from {ckpt}: {error}. Pass --no-resume to start over "
                                  f"(it overwrites {ckpt})") from None
        if train_config is not None:
            ignored = [k for k, v in train_config.to_dict().items()
                       if k not in RESUMABLE_OVERRIDES and k not in overrides and trainer.cfg.to_dict()[k] != v]
            if ignored and say:
                print(f"resuming {ckpt}: keeping the checkpoint's {ignored} (pass --no-resume to start over)",
                      file=sys.stderr)
        wanted = get_config(model_config) if isinstance(model_config, str) else model_config
        if wanted != trainer.model_config and say:
            print(f"resuming {ckpt}: keeping the checkpoint's model config {trainer.model_config.name!r} "
                  f"(pass --no-resume to start over)", file=sys.stderr)
    else:
        trainer = GANTrainer(model_config, train_config, sample_real, out_dir, device=device)
    trainer.train(total_images, progress=progress, minutes=minutes)
    return trainer


# ----------------------------------------------------------------------------------------------
# Command line (wired into `stylerig-lite train-gan` by the CLI module).

DATA_SOURCES: dict[str, Callable[[int], SampleReal]] = {"blobs": make_blob_source}


def make_shards_source(root: str | os.PathLike, resolution: int, device: Any = None) -> SampleReal:
    """``sample_real`` drawing uniformly (with the trainer's generator) from a rendered FaceWorld dataset.

    ``device`` (default CPU): on a GPU the whole uint8 dataset is kept in GPU memory (32,768 images
    at 64 px: 400 MB) and each batch is gathered and converted there; the indices are still drawn
    on the CPU from the trainer's generator, so the batches are the same as on a CPU.
    """
    from .datasets import FaceWorldShards

    data = FaceWorldShards(root)
    images = data.images  # [N, H, W, 3] uint8, kept compact; converted per batch
    if images.shape[1] != resolution:
        raise ValueError(f"{root} holds {images.shape[1]}px images but the generator makes {resolution}px; "
                         "render the dataset at the generator's resolution")
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu":
        on_device = images.to(device)

        def sample_real_on_device(batch_size: int, generator: torch.Generator) -> torch.Tensor:
            index = torch.randint(len(on_device), (batch_size,), generator=generator)
            batch = on_device[index.to(device, non_blocking=True)]
            return batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0

        return sample_real_on_device

    def sample_real(batch_size: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(images), (batch_size,), generator=generator)
        return images[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0

    return sample_real


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-gan`` command's options (the shape of every command: ``add_arguments`` + ``run_from_args``)."""
    build_arg_parser(parser)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="stylerig-lite train-gan",
                                          description="Train (or resume) the StyleGAN2 on a data source.")
    p.add_argument("--out", required=True, help="output directory (checkpoint.pt, sample grids, log.jsonl)")
    p.add_argument("--data", default="blobs",
                   help=f"data source: {sorted(DATA_SOURCES)} or the folder of a rendered FaceWorld dataset "
                        "(stylerig_lite.datasets.render_shards)")
    p.add_argument("--preset", default="cpu64", help="model preset: tiny, cpu64, ffhq1024")
    p.add_argument("--images", type=int, default=100_000, help="train until this many images have been seen")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--r1-gamma", type=float, default=None, help="R1 weight (default: 0.0002 * res^2 / batch)")
    p.add_argument("--pl-weight", type=float, default=0.0, help="path-length weight (official 2; off on CPU)")
    p.add_argument("--augment", default="", help="DiffAugment policy, e.g. color,translation,cutout")
    p.add_argument("--checkpoint-every", type=int, default=10_000, help="images between checkpoints")
    p.add_argument("--sample-every", type=int, default=10_000, help="images between sample grids")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="images between kept G_ema snapshots (network-snapshot-<images>.pt, 2.8 MB each at "
                        "cpu64; 0 = none); score them with `stylerig-lite evaluate --quality --generator`")
    p.add_argument("--compact", action="store_true", help="fp16 checkpoint (half size)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_device_argument(p)
    p.add_argument("--minutes", type=float, default=None,
                   help="stop (with a checkpoint and a sample grid) after this many minutes; resume later")
    p.add_argument("--resume-batch", type=int, default=None,
                   help="when resuming, continue with this global batch instead of the checkpoint's (e.g. a larger "
                        "one on a GPU); the R1 weight keeps the checkpoint's value")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, sample_real: SampleReal | None = None) -> int:
    return run_from_args(build_arg_parser().parse_args(argv), sample_real)


def run_from_args(args: argparse.Namespace, sample_real: SampleReal | None = None) -> int:
    """The ``train-gan`` command; under ``torchrun`` every process runs it (see :mod:`stylerig_lite.distributed`)."""
    return distributed.launch_command("train-gan", getattr(args, "device", "auto"), lambda device: _run(args, sample_real, device))


def _run(args: argparse.Namespace, sample_real: SampleReal | None, device: torch.device | None = None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu") if device is None else device
    configure_cuda(device, tf32=getattr(args, "tf32", True))
    model_config = get_config(args.preset)
    if sample_real is None:
        if (Path(args.data) / "manifest.json").exists():
            sample_real = make_shards_source(args.data, model_config.img_resolution, device=device)
        elif args.data in DATA_SOURCES:
            sample_real = DATA_SOURCES[args.data](model_config.img_resolution)
        else:
            raise SystemExit(f"unknown data source {args.data!r}; expected one of {sorted(DATA_SOURCES)} "
                             "or a folder with a rendered FaceWorld dataset (manifest.json)")
    train_cfg = TrainConfig(batch_size=args.batch, seed=args.seed, r1_gamma=args.r1_gamma,
                            pl_weight=args.pl_weight, augment=args.augment,
                            checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
                            snapshot_every=args.snapshot_every,
                            compact_checkpoint=args.compact)
    try:
        trainer = train_gan(sample_real, args.out, args.images, model_config, train_cfg,
                            resume=not args.no_resume, progress=not args.no_progress, device=device,
                            minutes=getattr(args, "minutes", None), resume_batch=getattr(args, "resume_batch", None))
    except CheckpointError as error:  # an empty, truncated or foreign checkpoint.pt: say what, no traceback
        print(f"stylerig-lite train-gan: error: {error}", file=sys.stderr)
        return 2
    if distributed.is_main():
        print(f"trained to {trainer.images_seen} images ({trainer.step} steps) on {device}; checkpoint: "
              f"{Path(args.out) / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
