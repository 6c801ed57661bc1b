"""Seeds: every random draw in the package is a function of an integer seed.

Floor: base. One place for the rules that make runs reproducible and
independent of batch sizes and process counts:

- :func:`derive_seed` mixes a tuple of integers (``(seed, step)``,
  ``(seed, chunk)``) into a well-spread 63-bit seed;
- :func:`batch_indices` is a training step's batch as epochs of seeded
  permutations, a function of the step alone (so a resumed run draws the same);
- :func:`latent_seed` / :func:`sample_z` give item ``k`` of a stream its own
  latent, independent of the batch it was drawn in (the corpus, the evaluation
  pairs);
- :func:`latents_for_seeds` is the seed -> W+ latent that the editor and the
  chapters show ("face 7" means the same face everywhere);
- :class:`BatchShard` draws a global batch's numbers and keeps one process's
  rows (see :mod:`~stylerig_lite.distributed`).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Iterable, Optional

import numpy as np
import torch

__all__ = ["BatchShard", "batch_indices", "derive_seed", "latent_seed", "latents_for_seeds", "sample_z"]


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (e.g. (seed, chunk) or (seed, step))."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, count: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, 2, epoch)))


def batch_indices(seed: int, step: int, batch: int, count: int) -> torch.Tensor:
    """Dataset indices ``[batch]`` of ``step``'s batch: epochs of seeded permutations, a function of the step alone."""
    out, position = [], step * batch
    while sum(len(o) for o in out) < batch:
        epoch, offset = divmod(position, count)
        take = min(batch - sum(len(o) for o in out), count - offset)
        out.append(_epoch_permutation(seed, epoch, count)[offset : offset + take])
        position += take
    return torch.cat(out)


def latent_seed(seed: int, index: int, stream: str = "corpus") -> int:
    """The seed of item ``index``'s latent: a hash, so seeds and streams never overlap.

    ``stream`` separates independent sets drawn with the same seed (the corpus,
    the evaluation pairs' ``w`` and ``v``).
    """
    digest = hashlib.sha256(f"{stream}:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_z(z_dim: int, seed: int, start: int, count: int, *, stream: str = "corpus") -> torch.Tensor:
    """Latents ``[count, z_dim]`` of items ``start .. start + count - 1``, one seeded generator each.

    One generator per item (not one per batch) is what makes item ``k``
    independent of the batch and shard sizes it was drawn in.
    """
    z = torch.empty(count, z_dim)
    for i in range(count):
        generator = torch.Generator().manual_seed(latent_seed(seed, start + i, stream))
        z[i] = torch.randn(z_dim, generator=generator)
    return z


def latents_for_seeds(generator, seeds: Iterable[int], truncation_psi: float = 1.0) -> torch.Tensor:
    """W+ latents ``[len(seeds), num_ws, w_dim]`` of the faces the book calls "seed s".

    ``z_s = randn(z_dim)`` from ``torch.Generator().manual_seed(s)``, mapped by
    ``generator.mapping(z, None, truncation_psi=...)`` on the generator's device.
    The editor's ``seed`` slider and the chapters' figures use this one rule.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("latents_for_seeds needs at least one seed")
    z = torch.stack([torch.randn(generator.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    device = next((p.device for p in generator.parameters()), torch.device("cpu")) \
        if isinstance(generator, torch.nn.Module) else torch.device("cpu")
    return generator.mapping(z.to(device), None, truncation_psi=truncation_psi)


class BatchShard:
    """Random draws for a global batch of which this process keeps ``rows``.

    Per-sample random numbers are drawn for all ``global_batch`` samples from ``generator`` (the same
    numbers, in the same order, as a single process draws) and only ``rows`` are returned, so every
    rank's generator stays in step and sample ``i`` gets the same numbers whatever the number of
    processes. ``rows=None`` keeps the whole batch: the draws are exactly ``torch.rand(batch, ...)``.
    Draws are made on the generator's device; move them with ``.to(device)``.
    """

    def __init__(self, generator: torch.Generator, global_batch: int, rows: Optional[torch.Tensor] = None):
        self.generator = generator
        self.global_batch = int(global_batch)
        self.rows = rows

    @classmethod
    def of(cls, generator: "torch.Generator | BatchShard", batch: int) -> "BatchShard":
        """``generator`` itself if it is a BatchShard for a local batch of ``batch``, else a whole-batch shard."""
        if isinstance(generator, BatchShard):
            if generator.local_batch != batch:
                raise ValueError(f"a BatchShard of {generator.local_batch} local rows used for a batch of {batch}")
            return generator
        return cls(generator, batch)

    @property
    def local_batch(self) -> int:
        return self.global_batch if self.rows is None else int(self.rows.numel())

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a ``[global_batch, ...]`` tensor."""
        if x.shape[0] != self.global_batch:
            raise ValueError(f"expected a global batch of {self.global_batch}, got {tuple(x.shape)}")
        return x if self.rows is None else x[self.rows.to(x.device)]

    def rand(self, *shape: int) -> torch.Tensor:
        return self.take(torch.rand([self.global_batch, *shape], generator=self.generator))

    def randn(self, *shape: int) -> torch.Tensor:
        return self.take(torch.randn([self.global_batch, *shape], generator=self.generator))

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        return self.take(torch.randint(low, high, (self.global_batch, *shape), generator=self.generator))

    def __repr__(self) -> str:
        return f"BatchShard({self.local_batch} of {self.global_batch} rows)"
