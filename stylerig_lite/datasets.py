"""FaceWorld data on disk: rendered once, read by every training job and chapter.

Floor: data. Imports :mod:`~stylerig_lite.world` (the sampler), :mod:`~stylerig_lite.io_utils`
and :mod:`~stylerig_lite.seeding`; nothing from the models or the training loops, which
import it. Used by chapter 2 (``notebooks/02_corpus_generation.ipynb``: the GAN was trained on
a :func:`render_shards` folder of seed 1, see ``training/gpu_run.sh``), chapter 4
(``notebooks/04_face_reconstruction.ipynb``: F's held-out set comes from
:func:`load_or_render_dataset`) and appendix A (``notebooks/A_faceworld.ipynb``:
:func:`render_shards` and :class:`FaceWorldShards`).

Rendering FaceWorld costs tens of milliseconds per image on a laptop CPU, so training jobs
(F, the GAN) read ``.npz`` shards rendered once. Two folder layouts share the idea (numbered
shards written atomically one at a time, so an interrupted render resumes at the first missing
shard and gives the same images as an uninterrupted one):

**Shard folders** (:func:`render_shards`; the GAN's data, and ``train-f --data-dir``)::

    <folder>/manifest.json       {"count", "seed", "shard_size", "image_size", "world_hash"}
    <folder>/shard_00000.npz     images 0 .. shard_size - 1
    <folder>/shard_00001.npz     ...

Each shard holds ``images`` (uint8 ``[N, H, W, 3]``), ``params`` (float32 ``[N, 196]``) and
``landmarks`` (float32 ``[N, 68, 2]`` pixels). Shard ``i`` is drawn from its own generator seeded
with ``seed * 1_000_003 + i``, so parallel workers can each render a share of the shards.
``world_hash`` is :func:`~stylerig_lite.world.config_hash`; a folder refuses to take a different
dataset's shards. Read whole by :class:`FaceWorldShards` (a ``torch`` dataset of
``(image, params, landmarks)``) or as a :class:`FaceDataset` prefix by :func:`load_world_shards`.

**F's cache** (:func:`load_or_render_dataset`; ``$STYLERIG_LITE_CACHE/faceworld`` by default,
:func:`default_dataset_dir`)::

    faceworld/<fingerprint>/seed<S>_chunk32_shard256/meta.json
    faceworld/<fingerprint>/seed<S>_chunk32_shard256/shard_00000.npz     images 0..255 of seed S
    faceworld/<fingerprint>/seed<S>_chunk32_shard256/shard_00001.npz     images 256..511
    ...

Each shard holds ``images`` (uint8 ``[N, 3, H, W]``), ``params``, ``landmarks``, the face mask
(``face_mask_bits``, ``face_mask_width``: bit-packed ``[N, H, W]``) and the scene context
(``scene__<name>``), as :meth:`FaceDataset.to_arrays` writes them. A set is identified by
``(seed, count, fingerprint)``: image ``i`` of seed ``S`` is image ``i % CHUNK_SIZE`` of
``world.sample(CHUNK_SIZE)`` with a seed derived from ``(DATASET_VERSION, S, i // CHUNK_SIZE)``,
so a 20k set reuses the shards of a 10k set. The fingerprint (:func:`world_fingerprint`) hashes
the world config *and a small probe render*, so any change to the renderer, the face model or
FaceWorld that changes pixels or labels gives a new cache folder instead of silently stale labels.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import world as _world
from .io_utils import atomic_write, atomic_write_json
from .seeding import derive_seed

__all__ = [
    "CHUNK_SIZE",
    "DATASET_VERSION",
    "SHARD_CHUNKS",
    "FaceDataset",
    "FaceWorldShards",
    "default_dataset_dir",
    "load_or_render_dataset",
    "load_world_shards",
    "render_chunk",
    "render_shards",
    "world_fingerprint",
]

DATASET_VERSION = 1
# Image i of a set is image i % CHUNK_SIZE of world.sample(CHUNK_SIZE) with a seed derived from
# (seed, i // CHUNK_SIZE): the chunk size is part of the set's definition (and of the cache folder name).
CHUNK_SIZE = 32
SHARD_CHUNKS = 8  # chunks per shard file -> 256 images per shard


# ----------------------------------------------------------------------------
# The in-memory dataset.


@dataclasses.dataclass
class FaceDataset:
    """FaceWorld images with their labels, held in memory (images as uint8)."""

    images: torch.Tensor  # [N, 3, H, W] uint8
    params: torch.Tensor  # [N, 196] float32
    landmarks: torch.Tensor  # [N, 68, 2] float32 pixels
    face_mask: Optional[torch.Tensor]  # [N, H, W] bool (None for render_shards folders)
    scene: Dict[str, torch.Tensor]  # FaceWorld scene context, each [N, ...] (empty for render_shards folders)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: Any) -> "FaceDataset":
        """The same dataset with every tensor on ``device`` (itself when they already are)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FaceDataset(move(self.images), move(self.params), move(self.landmarks), move(self.face_mask),
                           {k: move(v) for k, v in self.scene.items()})

    def float_images(self, index: Any = slice(None)) -> torch.Tensor:
        return self.images[index].float() / 255.0

    def subset(self, index: Any) -> "FaceDataset":
        return FaceDataset(
            self.images[index], self.params[index], self.landmarks[index],
            self.face_mask[index] if self.face_mask is not None else None, {k: v[index] for k, v in self.scene.items()},
        )

    @staticmethod
    def concatenate(parts: List["FaceDataset"]) -> "FaceDataset":
        return FaceDataset(
            torch.cat([p.images for p in parts]),
            torch.cat([p.params for p in parts]),
            torch.cat([p.landmarks for p in parts]),
            torch.cat([p.face_mask for p in parts]) if all(p.face_mask is not None for p in parts) else None,
            {k: torch.cat([p.scene[k] for p in parts]) for k in parts[0].scene},
        )

    @classmethod
    def from_world_batch(cls, batch: Any) -> "FaceDataset":
        images = (batch.images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        return cls(
            images,
            batch.params.to_vector().detach().cpu().float(),
            batch.landmarks.detach().cpu().float(),
            batch.face_mask.detach().cpu()[:, 0] > 0.5,
            {k: v.detach().cpu().float() for k, v in batch.scene.items()},
        )

    # -- npz shards -----------------------------------------------------------
    def to_arrays(self) -> Dict[str, np.ndarray]:
        arrays = {
            "images": self.images.numpy(),
            "params": self.params.numpy(),
            "landmarks": self.landmarks.numpy(),
            "face_mask_bits": np.packbits(self.face_mask.numpy(), axis=-1),
            "face_mask_width": np.asarray(self.face_mask.shape[-1]),
        }
        arrays.update({f"scene__{k}": v.numpy() for k, v in self.scene.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray]) -> "FaceDataset":
        width = int(arrays["face_mask_width"])
        mask = np.unpackbits(arrays["face_mask_bits"], axis=-1, count=width).astype(bool)
        scene = {k[len("scene__") :]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("scene__")}
        return cls(
            torch.from_numpy(np.array(arrays["images"])),
            torch.from_numpy(np.array(arrays["params"])),
            torch.from_numpy(np.array(arrays["landmarks"])),
            torch.from_numpy(mask),
            scene,
        )


# ----------------------------------------------------------------------------
# F's cache: <root>/<fingerprint>/seed<S>_chunk<C>_shard<N>/shard_XXXXX.npz.


def render_chunk(world: Any, seed: int, chunk: int) -> FaceDataset:
    """Images ``chunk * CHUNK_SIZE`` to ``(chunk + 1) * CHUNK_SIZE - 1`` of the FaceWorld set with ``seed``."""
    generator = torch.Generator().manual_seed(derive_seed(DATASET_VERSION, seed, chunk))
    return FaceDataset.from_world_batch(world.sample(CHUNK_SIZE, generator=generator))


@functools.lru_cache(maxsize=8)
def _fingerprint_cached(world_id: int, config_json: str, probe: str) -> str:
    del world_id
    return hashlib.sha256(f"{DATASET_VERSION}|{config_json}|{probe}".encode()).hexdigest()[:16]


def world_fingerprint(world: Any) -> str:
    """Hash of the world's config and of a 4-image probe render (pixels and labels).

    The probe makes the cache key follow *behaviour*: editing the renderer,
    the face model or FaceWorld in a way that changes any image or label
    changes the key. (A float difference that flips one uint8 on another
    machine only costs a re-render.)
    """
    cached = getattr(world, "_stylerig_f_fingerprint", None)
    if cached is not None:
        return cached
    config_json = json.dumps(dataclasses.asdict(world.config), sort_keys=True, default=str)
    with torch.no_grad():
        probe = world.sample(4, generator=torch.Generator().manual_seed(derive_seed(DATASET_VERSION, -1)))
    digest = hashlib.sha256()
    digest.update(FaceDataset.from_world_batch(probe).images.numpy().tobytes())
    digest.update(np.round(probe.landmarks.cpu().numpy().astype(np.float64), 2).tobytes())
    digest.update(np.round(probe.params.to_vector().cpu().numpy().astype(np.float64), 4).tobytes())
    fingerprint = _fingerprint_cached(id(world), config_json, digest.hexdigest())
    try:
        world._stylerig_f_fingerprint = fingerprint
    except AttributeError:
        pass
    return fingerprint


def default_dataset_dir() -> Path:
    """``$STYLERIG_LITE_CACHE/faceworld`` (see :func:`~stylerig_lite.assets.default_cache_dir`)."""
    from .assets import default_cache_dir

    return default_cache_dir() / "faceworld"


def _load_shard(path: Path, expected: int) -> Optional[FaceDataset]:
    try:
        with np.load(path, allow_pickle=False) as data:
            shard = FaceDataset.from_arrays({k: data[k] for k in data.files})
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # corrupt or foreign: re-rendered by the caller
    return shard if len(shard) == expected else None


def load_or_render_dataset(
    world: Any,
    count: int,
    seed: int,
    *,
    cache_dir: Union[str, os.PathLike, None, bool] = None,
    progress: bool = True,
) -> FaceDataset:
    """The first ``count`` images of FaceWorld set ``seed``, from the shard cache or rendered (and cached).

    ``cache_dir``: folder of the cache (``None`` = ``$STYLERIG_LITE_CACHE/faceworld``);
    ``False`` renders in memory without touching the disk. Shards are written
    atomically, one at a time, so an interrupted render keeps what it finished.
    """
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    shard_size = CHUNK_SIZE * SHARD_CHUNKS
    shards = math.ceil(count / shard_size)
    if cache_dir is False:
        chunks = math.ceil(count / CHUNK_SIZE)
        parts = [render_chunk(world, seed, c) for c in _progress(range(chunks), progress, "rendering FaceWorld", CHUNK_SIZE)]
        return FaceDataset.concatenate(parts).subset(slice(0, count))

    root = Path(cache_dir) if cache_dir not in (None, True) else default_dataset_dir()
    folder = root / world_fingerprint(world) / f"seed{int(seed)}_chunk{CHUNK_SIZE}_shard{shard_size}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "meta.json"
    if not meta.exists():
        info = {
            "dataset_version": DATASET_VERSION, "seed": int(seed), "shard_size": shard_size, "chunk_size": CHUNK_SIZE,
            "world_config": dataclasses.asdict(world.config),
        }
        atomic_write_json(meta, info)

    parts: List[Optional[FaceDataset]] = [_load_shard(folder / f"shard_{k:05d}.npz", shard_size) for k in range(shards)]
    missing = [k for k, part in enumerate(parts) if part is None]
    if missing:
        bar = _progress_bar(len(missing) * shard_size, progress, f"rendering FaceWorld seed {seed} -> {folder}")
        for k in missing:
            chunks = []
            for c in range(k * SHARD_CHUNKS, (k + 1) * SHARD_CHUNKS):
                chunks.append(render_chunk(world, seed, c))
                if bar is not None:
                    bar.update(CHUNK_SIZE)
            shard = FaceDataset.concatenate(chunks)
            atomic_write(folder / f"shard_{k:05d}.npz", lambda f: np.savez(f, **shard.to_arrays()))
            parts[k] = shard
        if bar is not None:
            bar.close()
    return FaceDataset.concatenate([p for p in parts if p is not None]).subset(slice(0, count))


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def _progress(iterable, enabled: bool, desc: str, per_item: int):
    bar = _progress_bar(len(iterable) * per_item, enabled, desc)
    for item in iterable:
        yield item
        if bar is not None:
            bar.update(per_item)
    if bar is not None:
        bar.close()


# ----------------------------------------------------------------------------
# Shard folders: <folder>/manifest.json + shard_XXXXX.npz (the GAN's data).


def render_shards(
    out_dir: Union[str, os.PathLike],
    count: int,
    *,
    seed: int = 0,
    shard_size: int = 512,
    world: Optional["_world.FaceWorld"] = None,
    batch: int = 64,
    progress: bool = True,
    shards: Optional[Sequence[int]] = None,
) -> Path:
    """Render ``count`` FaceWorld images into ``out_dir/shard_XXXXX.npz`` (resumable).

    Shard ``i`` is drawn from its own generator seeded with ``seed * 1_000_003 + i``,
    so an interrupted run resumes by skipping the shards that exist, and the
    result does not depend on how often it was interrupted. Each shard holds
    ``images`` (uint8 ``[N, H, W, 3]``), ``params`` (float32 ``[N, 196]``) and
    ``landmarks`` (float32 ``[N, 68, 2]``) and is written atomically.
    ``shards``: render only these shard indices (parallel workers each take their share, after one
    call with ``shards=[]`` has written the manifest); the images do not depend on the split.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = world or _world.FaceWorld()
    manifest = {
        "count": int(count),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "image_size": world.config.image_size,
        "world_hash": _world.config_hash(world.config),
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if existing != manifest:
            raise ValueError(
                f"{out} already holds a different FaceWorld dataset ({existing}); asked for {manifest}. "
                "Use another folder or delete this one."
            )
    else:
        atomic_write_json(manifest_path, manifest, indent=2)
    total_shards = (count + shard_size - 1) // shard_size
    iterator = range(total_shards) if shards is None else sorted({int(i) for i in shards if 0 <= int(i) < total_shards})
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"rendering FaceWorld into {out.name}", unit="shard")
    for i in iterator:
        path = out / f"shard_{i:05d}.npz"
        if path.exists():
            continue
        n = min(shard_size, count - i * shard_size)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
        images, params, landmarks = [], [], []
        for start in range(0, n, batch):
            b = world.sample(min(batch, n - start), generator=generator)
            images.append((b.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
            params.append(b.params.to_vector().float().cpu().numpy())
            landmarks.append(b.landmarks.float().cpu().numpy())
        arrays = {"images": np.concatenate(images), "params": np.concatenate(params), "landmarks": np.concatenate(landmarks)}
        atomic_write(path, lambda f: np.savez(f, **arrays))
    return out


class FaceWorldShards(torch.utils.data.Dataset):
    """A rendered FaceWorld dataset as a PyTorch dataset: ``(image [3,H,W] float in [0,1], params [196], landmarks [68,2])``."""

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.root} is not a FaceWorld dataset (no manifest.json); create it with render_shards()")
        self.manifest = json.loads(manifest_path.read_text())
        shards = sorted(self.root.glob("shard_*[0-9].npz"))
        expected = (self.manifest["count"] + self.manifest["shard_size"] - 1) // self.manifest["shard_size"]
        if len(shards) != expected:
            raise FileNotFoundError(
                f"{self.root} has {len(shards)} of {expected} shards; rerun render_shards() with the same arguments to finish it"
            )
        arrays = [np.load(p) for p in shards]
        self.images = torch.from_numpy(np.concatenate([a["images"] for a in arrays]))  # [N, H, W, 3] uint8
        self.params = torch.from_numpy(np.concatenate([a["params"] for a in arrays]))  # [N, 196]
        self.landmarks = torch.from_numpy(np.concatenate([a["landmarks"] for a in arrays]))  # [N, 68, 2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        image = self.images[index].permute(2, 0, 1).float() / 255.0
        return image, self.params[index], self.landmarks[index]


def load_world_shards(root: Union[str, os.PathLike], count: int) -> FaceDataset:
    """The first ``count`` images of a folder written by :func:`render_shards`.

    Such folders (rendered once for the GAN) hold images, parameters and
    landmarks but no face masks or scene context, so they serve F's
    regression losses only. Shards are read in order, so a folder that is
    still being rendered can be used for the shards it already has.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{root} is not a FaceWorld shard folder (no manifest.json); make one with stylerig_lite.datasets.render_shards")
    manifest = json.loads(manifest_path.read_text())
    current = _world.config_hash(_world.WorldConfig())
    if manifest.get("world_hash") != current:
        warnings.warn(
            f"{root} was rendered by another FaceWorld version (world_hash {manifest.get('world_hash')} != "
            f"{current}); its labels may not match the current renderer"
        )
    parts, have = [], 0
    for k in range(math.ceil(manifest["count"] / manifest["shard_size"])):
        path = root / f"shard_{k:05d}.npz"
        if have >= count or not path.exists():
            break
        with np.load(path, allow_pickle=False) as data:
            images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()  # [n, 3, H, W] uint8
            parts.append(FaceDataset(images, torch.from_numpy(data["params"]).float(), torch.from_numpy(data["landmarks"]).float(), None, {}))
        have += len(parts[-1])
    if have < count:
        raise ValueError(
            f"{root} holds {have} images so far (of {manifest['count']}); asked for {count}. Ask for fewer with "
            "--images, or wait for datasets.render_shards to finish"
        )
    return FaceDataset.concatenate(parts).subset(slice(0, count))
