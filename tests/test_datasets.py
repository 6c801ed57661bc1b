"""FaceWorld data on disk (stylerig_lite.datasets): render_shards folders and F's shard cache (tiny sizes, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stylerig_lite import datasets, morphable
from stylerig_lite.datasets import FaceWorldShards, render_shards
from stylerig_lite.morphable import NUM_PARAMS
from stylerig_lite.world import FaceWorld


@pytest.fixture(scope="module")
def world() -> FaceWorld:
    return FaceWorld(morphable.load_face_model(progress=False))


# -- render_shards folders ----------------------------------------------------------


def test_shards_round_trip_resume_and_refuse_a_different_dataset(tmp_path, world):
    out = tmp_path / "data"
    render_shards(out, 10, seed=4, shard_size=4, world=world, batch=4, progress=False)
    files = sorted(out.glob("shard_*.npz"))
    assert [f.name for f in files] == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    data = FaceWorldShards(out)
    assert len(data) == 10
    image, params, landmarks = data[5]
    assert image.shape == (3, 64, 64) and params.shape == (196,) and landmarks.shape == (68, 2)
    # Shard 1 equals a direct render with its generator: the labels match the pixels.
    direct = world.sample(4, generator=torch.Generator().manual_seed(4 * 1_000_003 + 1))
    np.testing.assert_array_equal(data.images[4:8].numpy(), (direct.images * 255).round().byte().permute(0, 2, 3, 1).numpy())
    # Resume: delete a shard, rerun, identical content; other shards are not rewritten.
    before = files[0].stat().st_mtime_ns
    saved = np.load(files[1])["images"]
    files[1].unlink()
    with pytest.raises(FileNotFoundError, match="2 of 3 shards"):
        FaceWorldShards(out)
    render_shards(out, 10, seed=4, shard_size=4, world=world, batch=4, progress=False)
    np.testing.assert_array_equal(np.load(files[1])["images"], saved)
    assert files[0].stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="different FaceWorld dataset"):
        render_shards(out, 12, seed=4, shard_size=4, world=world, progress=False)
    assert json.loads((out / "manifest.json").read_text())["count"] == 10
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [f.name for f in files]  # no temporaries


def test_missing_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="render_shards"):
        FaceWorldShards(tmp_path)


def test_training_can_read_a_world_render_shards_folder(tmp_path):
    """Folders written by render_shards ([N, H, W, 3] uint8 shards + manifest) load as a FaceDataset."""
    g = np.random.default_rng(0)
    shards = [g.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(2)]
    params = [g.standard_normal((4, NUM_PARAMS)).astype(np.float32) for _ in range(2)]
    landmarks = [(64 * g.random((4, 68, 2))).astype(np.float32) for _ in range(2)]
    (tmp_path / "manifest.json").write_text(json.dumps({"count": 10, "seed": 0, "shard_size": 4, "image_size": 64, "world_hash": "x"}))
    for k in range(2):  # the third shard is "still rendering"
        np.savez(tmp_path / f"shard_{k:05d}.npz", images=shards[k], params=params[k], landmarks=landmarks[k])
    with pytest.warns(UserWarning, match="another FaceWorld version"):
        data = datasets.load_world_shards(tmp_path, 6)
    assert data.images.shape == (6, 3, 64, 64) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[5], torch.from_numpy(shards[1][1]).permute(2, 0, 1))
    assert torch.equal(data.params[4], torch.from_numpy(params[1][0])) and data.face_mask is None
    with pytest.raises(ValueError, match="holds 8 images so far"):
        datasets.load_world_shards(tmp_path, 9)


# -- F's cache ------------------------------------------------------------------------


def test_dataset_cache_is_deterministic_and_prefix_stable(world, small_chunks, cache_dir, tmp_path, dataset):
    # `dataset` rendered seed 0 into cache_dir; a fresh cache folder renders the same arrays.
    again = datasets.load_or_render_dataset(world, 6, 0, cache_dir=tmp_path, progress=False)
    first6 = dataset.subset(slice(0, 6))
    for name in ("images", "params", "landmarks", "face_mask"):
        assert torch.equal(getattr(again, name), getattr(first6, name)), name
    assert all(torch.equal(again.scene[k], first6.scene[k]) for k in first6.scene)
    assert again.images.dtype == torch.uint8 and again.face_mask.dtype == torch.bool
    # Reading back from the cache gives the same arrays; no temporary files remain.
    cached = datasets.load_or_render_dataset(world, 16, 0, cache_dir=cache_dir, progress=False)
    assert torch.equal(cached.images, dataset.images) and torch.equal(cached.params, dataset.params)
    assert not list(cache_dir.rglob(".*tmp*"))
    assert len(list(tmp_path.rglob("shard_*.npz"))) == 2  # 6 images -> two 4-image shards
    meta = json.loads(next(tmp_path.rglob("meta.json")).read_text())
    assert meta["seed"] == 0 and meta["chunk_size"] == 2 and meta["shard_size"] == 4
    # Another seed is another set.
    other = datasets.load_or_render_dataset(world, 2, 1, cache_dir=False, progress=False)
    assert not torch.equal(other.params, dataset.params[:2])
    # The labels describe the images: the mask is the face, the landmarks lie on it.
    assert dataset.face_mask.float().mean() > 0.05
    assert (dataset.landmarks > 0).all() and (dataset.landmarks < 64).all()


# -- the module's place ---------------------------------------------------------------


def test_old_import_paths_name_the_same_objects():
    from stylerig_lite import train_f

    for name in ("FaceDataset", "load_or_render_dataset", "load_world_shards", "world_fingerprint", "default_dataset_dir",
                 "render_chunk", "DATASET_VERSION"):
        assert getattr(train_f, name) is getattr(datasets, name), name


def test_datasets_does_not_load_models_or_training_loops():
    code = ("import sys, stylerig_lite.datasets; "
            "print(sorted(m for m in sys.modules if m.startswith('stylerig_lite.')))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    for module in ("train_f", "reconstruction", "train_rignet", "train_gan", "evaluate"):
        assert f"'stylerig_lite.{module}'" not in loaded, module
