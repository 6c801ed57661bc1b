"""seeding: every random draw is a function of an integer seed."""

from __future__ import annotations

import pytest
import torch

from stylerig_lite import seeding


def test_derive_seed_is_deterministic_and_spreads():
    assert seeding.derive_seed(1, 2) == seeding.derive_seed(1, 2)
    assert len({seeding.derive_seed(0, i) for i in range(1000)}) == 1000
    assert 0 <= seeding.derive_seed(-1, 2**70) < 2**63


def test_batch_indices_are_epochs_of_permutations():
    seen = torch.cat([seeding.batch_indices(0, step, 6, 20) for step in range(10)])  # 60 draws = 3 epochs
    for epoch in range(3):
        assert sorted(seen[20 * epoch : 20 * (epoch + 1)].tolist()) == list(range(20))
    assert torch.equal(seeding.batch_indices(0, 4, 6, 20), seeding.batch_indices(0, 4, 6, 20))


def test_item_latents_do_not_depend_on_the_batch_they_are_drawn_in():
    whole = seeding.sample_z(8, seed=3, start=0, count=10)
    parts = torch.cat([seeding.sample_z(8, seed=3, start=s, count=5) for s in (0, 5)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, seeding.sample_z(8, seed=3, start=0, count=10, stream="eval-w"))


class _Mapping(torch.nn.Module):
    z_dim, num_ws = 4, 3

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 5))

    def mapping(self, z, c, truncation_psi=1.0):
        return (truncation_psi * z @ self.weight)[:, None].expand(-1, self.num_ws, -1)


def test_latents_for_seeds_is_the_books_seed_rule():
    G = _Mapping()
    ws = seeding.latents_for_seeds(G, [7, 11], truncation_psi=0.5)
    assert ws.shape == (2, 3, 5)
    z7 = torch.randn(1, 4, generator=torch.Generator().manual_seed(7))  # the rule, written out
    assert torch.allclose(ws[:1], G.mapping(z7, None, truncation_psi=0.5))
    assert torch.allclose(seeding.latents_for_seeds(G, [11])[0], ws[1] / 0.5)  # a face does not depend on its neighbours
    with pytest.raises(ValueError, match="at least one seed"):
        seeding.latents_for_seeds(G, [])


def test_batch_shard_keeps_its_rows_of_the_global_draws():
    whole = seeding.BatchShard(torch.Generator().manual_seed(3), 6).rand(2)
    part = seeding.BatchShard(torch.Generator().manual_seed(3), 6, torch.tensor([1, 4])).rand(2)
    assert torch.equal(part, whole[[1, 4]])
    from stylerig_lite import distributed

    assert distributed.BatchShard is seeding.BatchShard  # one class, re-exported where torchrun code looks
