"""Shared pytest configuration: markers, the repository root and the ICT-FaceKit mirror.

Outside CI a test that needs something this machine lacks (the asset mirror) is
skipped with the reason; under CI (``CI=true``, set by ``.ci/run``) the same situation
is a failure, because a green CI run must mean that everything ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Every developer machine and CI has the shared assets next to the clone.
DEFAULT_ASSET_MIRROR = REPO_ROOT.parent / "shared" / "assets"
MIRROR_ENV = "STYLERIG_LITE_ASSET_MIRROR"

MARKERS = {
    "slow": "takes more than a few seconds (deselect with -m 'not slow')",
    "browser": "drives a real browser (Debian chromium via playwright) against a local server",
    "pytorch3d": "compares against PyTorch3D, the optional reference renderer",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip locally, fail in CI: a missing prerequisite must never pass CI silently."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required in CI, not skipped)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    # `pytest` run by hand should find the mirror the way `make test` does.
    if not os.environ.get(MIRROR_ENV) and DEFAULT_ASSET_MIRROR.is_dir():
        os.environ[MIRROR_ENV] = str(DEFAULT_ASSET_MIRROR)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def ict_mirror() -> Path:
    """The ICT-FaceKit folder of the asset mirror (it holds ``FaceXModel/*.obj.gz``)."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    base = Path(mirror) if mirror else DEFAULT_ASSET_MIRROR
    folder = base / "ict-facekit"
    if not (folder / "FaceXModel").is_dir():
        skip_or_fail(
            f"ICT-FaceKit mirror not found at {folder}: set {MIRROR_ENV} to the folder that "
            f"contains ict-facekit/FaceXModel (normally ../shared/assets next to the clone)"
        )
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    networks and single 64 px renders gain nothing from threads and lose much when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def face_shards(tmp_path_factory) -> Path:
    """A folder in datasets.render_shards' format (32 random images and labels) for train-f --data-dir."""
    import json

    import numpy as np

    from stylerig_lite.world import WorldConfig, config_hash

    folder = tmp_path_factory.mktemp("faces")
    g = np.random.default_rng(0)
    count, shard = 32, 16
    (folder / "manifest.json").write_text(json.dumps({"count": count, "seed": 0, "shard_size": shard, "image_size": 64,
                                                      "world_hash": config_hash(WorldConfig())}))
    for k in range(count // shard):
        np.savez(folder / f"shard_{k:05d}.npz", images=g.integers(0, 256, (shard, 64, 64, 3), dtype=np.uint8),
                 params=(0.3 * g.standard_normal((shard, 196))).astype(np.float32),
                 landmarks=(16 + 32 * g.random((shard, 68, 2))).astype(np.float32))
    return folder


# -- the FaceWorld shard cache (test_datasets, test_reconstruction) -------------------------------


@pytest.fixture(scope="module")
def small_chunks():
    """Tiny chunks and shards (2 images, 2 chunks a shard) so cache tests render a handful of images."""
    from stylerig_lite import datasets

    saved = datasets.CHUNK_SIZE, datasets.SHARD_CHUNKS
    datasets.CHUNK_SIZE, datasets.SHARD_CHUNKS = 2, 2
    yield
    datasets.CHUNK_SIZE, datasets.SHARD_CHUNKS = saved


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faceworld_cache")


@pytest.fixture(scope="module")
def dataset(world, small_chunks, cache_dir):
    """16 FaceWorld images (seed 0) in the cache; ``world`` comes from the test module."""
    from stylerig_lite import datasets

    return datasets.load_or_render_dataset(world, 16, 0, cache_dir=cache_dir, progress=False)

