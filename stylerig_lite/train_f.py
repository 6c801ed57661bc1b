"""Training F on FaceWorld: a cached, sharded dataset and a resumable training loop.

Rendering FaceWorld costs tens of milliseconds per image on a laptop CPU,
while one training step of F on a batch of 64 costs about the same as
rendering a few images. So the images are rendered *once* into a cache of
``.npz`` shards (uint8 images, float parameters and landmarks, the face mask
and the scene context), and F trains for many epochs over them, with fresh
random augmentation every time an image is drawn.

Cache layout (``$STYLERIG_LITE_CACHE/faceworld`` by default)::

    faceworld/<fingerprint>/seed<S>_chunk32_shard256/meta.json
    faceworld/<fingerprint>/seed<S>_chunk32_shard256/shard_00000.npz     images 0..255 of seed S
    faceworld/<fingerprint>/seed<S>_chunk32_shard256/shard_00001.npz     images 256..511
    ...

A set is identified by ``(seed, count, fingerprint)``: image ``i`` of seed
``S`` is always the same image, so a 20k set reuses the shards of a 10k set,
and an interrupted render resumes at the first missing shard. The
fingerprint hashes the world config *and a small probe render*, so any change
to the renderer, the face model or FaceWorld that changes pixels or labels
gives a new cache folder instead of silently stale labels.

Training (``stylerig-lite train-f``) writes one checkpoint path, overwritten
atomically, that carries the network config, the training config, the step,
the optimizer state and the RNG state; running the same command again
resumes. Batch order and augmentation are drawn from generators seeded by
``(seed, step)``, so an interrupted and resumed run takes the same steps as
an uninterrupted one.

Under ``torchrun --nproc_per_node=N`` the same command trains data-parallel
(DistributedDataParallel, :mod:`stylerig_lite.distributed`): every process
draws the same global batch and augmentation and computes its rows, BatchNorm
uses the statistics of the global batch (:class:`~stylerig_lite.distributed.SyncBatchNorm2d`),
and rank 0 writes the checkpoint, so the result does not depend on N (up to
float rounding) and a checkpoint resumes with any N.

Devices: ``--device auto|cpu|cuda|cuda:N`` as for ``train-gan`` (:mod:`stylerig_lite.devices`;
``auto`` = CUDA when available). The network is initialised on the CPU with the same seed, then
moved; the training set is kept on the device whole (uint8 images and labels); batch indices and
augmentation are drawn from the same seeded CPU generators as on the CPU and moved; the logged
values are read back once per log entry instead of once per step. The checkpoint always holds CPU
tensors, so a run resumes on any device (the device is not part of the training config).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from . import distributed
from .devices import add_device_argument, configure_cuda, resolve_device
from .io_utils import config_from_preset
from .morphable import NUM_PARAMS, FaceParams
from .reconstruction import (
    DEFAULT_LOSS_WEIGHTS,
    AugmentConfig,
    ReconstructionConfig,
    ReconstructionNet,
    atomic_torch_save,
    augment,
    evaluate_estimator,
    format_metrics,
    parameter_errors,
    estimate_all,
    parameter_statistics,
    reconstruction_loss,
    width_ladder,
)
from .stylegan2 import _to_cpu

DATASET_VERSION = 1
# Image i of a set is image i % CHUNK_SIZE of world.sample(CHUNK_SIZE) with a seed derived from
# (seed, i // CHUNK_SIZE): the chunk size is part of the set's definition (and of the cache folder name).
CHUNK_SIZE = 32
SHARD_CHUNKS = 8  # chunks per shard file -> 256 images per shard


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (e.g. (seed, chunk) or (seed, step))."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------
# The dataset.


@dataclasses.dataclass
class FaceDataset:
    """FaceWorld images with their labels, held in memory (images as uint8)."""

    images: torch.Tensor  # [N, 3, H, W] uint8
    params: torch.Tensor  # [N, 196] float32
    landmarks: torch.Tensor  # [N, 68, 2] float32 pixels
    face_mask: Optional[torch.Tensor]  # [N, H, W] bool (None for world.render_shards folders)
    scene: Dict[str, torch.Tensor]  # FaceWorld scene context, each [N, ...] (empty for world.render_shards folders)

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
    from .assets import default_cache_dir

    return default_cache_dir() / "faceworld"


def _atomic_write_bytes(path: Path, writer: Callable[[Path], None], suffix: str) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
        _atomic_write_bytes(meta, lambda p: p.write_text(json.dumps(info, indent=1, default=str)), ".json")

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
            _atomic_write_bytes(folder / f"shard_{k:05d}.npz", lambda p: np.savez(p, **shard.to_arrays()), ".npz")
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


def load_world_shards(root: Union[str, os.PathLike], count: int) -> FaceDataset:
    """The first ``count`` images of a folder written by :func:`stylerig_lite.world.render_shards`.

    Such folders (rendered once for the GAN) hold images, parameters and
    landmarks but no face masks or scene context, so they serve F's
    regression losses only. Shards are read in order, so a folder that is
    still being rendered can be used for the shards it already has.
    """
    import warnings

    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{root} is not a FaceWorld shard folder (no manifest.json); make one with stylerig_lite.world.render_shards")
    manifest = json.loads(manifest_path.read_text())
    try:
        from .world import WorldConfig, config_hash

        if manifest.get("world_hash") != config_hash(WorldConfig()):
            warnings.warn(
                f"{root} was rendered by another FaceWorld version (world_hash {manifest.get('world_hash')} != "
                f"{config_hash(WorldConfig())}); its labels may not match the current renderer"
            )
    except ImportError:
        pass
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
            "--images, or wait for world.render_shards to finish"
        )
    return FaceDataset.concatenate(parts).subset(slice(0, count))


# ----------------------------------------------------------------------------
# Training configuration.


@dataclasses.dataclass
class TrainConfig:
    """Everything one F training run depends on (stored in its checkpoint)."""

    out: str = "f_checkpoint.pt"
    seed: int = 0  # initialisation, batch order, augmentation
    width: int = 32  # first stage width; the stages are (w, 2w, 4w, 8w)
    blocks_per_stage: int = 1
    norm: str = "batch"
    images: int = 16384  # training images (rendered once, cached)
    data_seed: int = 0  # which FaceWorld set to train on (the evaluation estimator shares it)
    data_dir: Optional[str] = None  # instead: read images from a folder made by world.render_shards (shared with the GAN)
    steps: int = 12000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    augment: bool = True
    loss_weights: Dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    photometric_weight: float = 0.0  # > 0 adds a re-render loss on the face mask (slow: a render + backward per step)
    val_images: int = 256
    val_seed: int = 10_000
    eval_every: int = 1000  # steps between quick held-out evaluations (0 = only at the end)
    checkpoint_seconds: float = 60.0
    minutes: float = 0.0  # stop (and checkpoint) after this much training time in this process; 0 = no limit
    threads: int = 0  # torch CPU threads; 0 = torch's default
    cache_dir: Optional[str] = None

    #: Fields that may differ between a checkpoint and the run that resumes it.
    RESUMABLE_CHANGES = ("out", "steps", "eval_every", "checkpoint_seconds", "minutes", "threads", "cache_dir", "val_images", "val_seed")

    def network_config(self) -> ReconstructionConfig:
        return ReconstructionConfig(
            widths=width_ladder(self.width), blocks_per_stage=self.blocks_per_stage, norm=self.norm, head_hidden=8 * self.width
        )


#: Named starting points; explicit command-line options override them.
PRESETS: Dict[str, Dict[str, Any]] = {
    # Seconds on a laptop: for tests and a first look at the loop.
    "tiny": dict(width=8, images=256, steps=40, batch=16, warmup_steps=5, val_images=64, eval_every=0, lr=1e-2),
    # The embedded F: sized to train in about 30 CPU minutes on one thread (4.6 steps/s at width 16).
    "default": dict(width=16, images=32768, steps=8000, eval_every=500, val_images=512),
    # The evaluation estimator: same data, another seed and width.
    "eval": dict(seed=1, width=12, images=32768, steps=5000, eval_every=500, val_images=512),
}


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    return config_from_preset(TrainConfig, PRESETS, preset, overrides)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the peak at ``config.steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, count: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, 2, epoch)))


def batch_indices(seed: int, step: int, batch: int, count: int) -> torch.Tensor:
    """Dataset indices of ``step``'s batch: epochs of seeded permutations, a function of the step alone."""
    out, position = [], step * batch
    while sum(len(o) for o in out) < batch:
        epoch, offset = divmod(position, count)
        take = min(batch - sum(len(o) for o in out), count - offset)
        out.append(_epoch_permutation(seed, epoch, count)[offset : offset + take])
        position += take
    return torch.cat(out)


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainState:
    net: ReconstructionNet
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed_s: float = 0.0
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    evals: List[Dict[str, float]] = dataclasses.field(default_factory=list)


def defer_stats(device: torch.device) -> bool:
    """Whether a single-process run keeps each step's logged values on ``device`` until the next log entry.

    True off the CPU (no host sync per step); the CPU reads them back at once, as it always has.
    The result is the same either way (tested by forcing it on the CPU).
    """
    return device.type != "cpu"


def _make_optimizer(net: ReconstructionNet, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def save_checkpoint(state: TrainState, config: TrainConfig, path: Union[str, os.PathLike]) -> Path:
    """One file: the network (loadable by ``ReconstructionNet.load``) plus everything needed to resume."""
    train = {
        "config": dataclasses.asdict(config),
        "step": state.step,
        "elapsed_s": state.elapsed_s,
        "optimizer": _to_cpu(state.optimizer.state_dict()),  # CPU tensors (a CPU run's state is kept as it is)
        "torch_rng": torch.get_rng_state(),
        "history": state.history,
        "evals": state.evals,
    }
    net = state.net
    if net.param_mean.device.type != "cpu":
        net = copy.deepcopy(net).cpu()  # the file holds CPU tensors: it resumes on any device
    return net.save(path, extra={"train": train})


def _config_differences(saved: Dict[str, Any], config: TrainConfig) -> List[str]:
    current = dataclasses.asdict(config)
    return [
        f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}"
        for k in current
        if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != current[k]
    ]


def load_train_state(path: Union[str, os.PathLike], config: TrainConfig, device: Any = None) -> TrainState:
    """Restore network, optimizer, step and RNG from a training checkpoint made with a compatible config.

    The file is read onto the CPU; ``device`` (default CPU): where the network and its optimizer state go.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    if "train" not in data:
        raise ValueError(f"{path} holds an F network without training state; it cannot be resumed (use --fresh to overwrite)")
    differences = _config_differences(data["train"]["config"], config)
    if differences:
        raise ValueError(
            f"cannot resume {path}: its training config differs ({'; '.join(differences)}). "
            "Use the same options, another --out, or --fresh to start over"
        )
    net = ReconstructionNet.from_checkpoint(data)
    if device is not None and torch.device(device).type != "cpu":
        net.to(device)  # before the optimizer: load_state_dict moves its state to the parameters' device
    optimizer = _make_optimizer(net, config)
    optimizer.load_state_dict(data["train"]["optimizer"])
    torch.set_rng_state(data["train"]["torch_rng"])
    t = data["train"]
    return TrainState(net, optimizer, int(t["step"]), float(t["elapsed_s"]), list(t["history"]), list(t["evals"]))


@torch.no_grad()
def quick_metrics(net: ReconstructionNet, data: FaceDataset) -> Dict[str, float]:
    """Held-out parameter and landmark errors without the (slow) photometric re-render."""
    params, landmarks = estimate_all(net, data.float_images())
    metrics = parameter_errors(params, data.params)
    metrics["landmarks_px_mean"] = float((landmarks - data.landmarks).norm(dim=-1).mean())
    return metrics


def train(
    config: TrainConfig,
    *,
    world: Any = None,
    dataset: Optional[FaceDataset] = None,
    val: Optional[FaceDataset] = None,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: Any = None,
) -> TrainState:
    """Train F (or resume ``config.out``) and return the final state; the checkpoint is written as it goes.

    ``world`` defaults to a new :class:`~stylerig_lite.world.FaceWorld`; ``dataset`` and
    ``val`` default to the cached FaceWorld sets ``(config.images, config.data_seed)`` and
    ``(config.val_images, config.val_seed)``. ``device`` (default: the CPU; a ``--device`` string is
    resolved): where to train; with the photometric term ``world`` is moved there (in place).
    """
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, world=world, dataset=dataset, val=val, fresh=fresh, progress=progress, log=log,
                      device=device)
    finally:
        torch.set_num_threads(threads_before)


def _train(
    config: TrainConfig,
    *,
    world: Any,
    dataset: Optional[FaceDataset],
    val: Optional[FaceDataset],
    fresh: bool,
    progress: bool,
    log: Callable[[str], None],
    device: Any = None,
) -> TrainState:
    device = (torch.device("cpu") if device is None else
              device if isinstance(device, torch.device) else resolve_device(device))
    on_cpu = device.type == "cpu"
    main = distributed.is_main()  # in a process group: rank 0 logs, evaluates and writes the checkpoint
    if not main:
        progress, log = False, (lambda message: None)
    needs_val = val is None and config.val_images > 0 and main
    needs_rendering = (dataset is None and not config.data_dir) or needs_val
    if world is None and (needs_rendering or config.photometric_weight > 0):
        from .world import FaceWorld

        world = FaceWorld()
    cache: Union[str, None] = config.cache_dir
    if dataset is None and config.data_dir:
        dataset = load_world_shards(config.data_dir, config.images)
    if dataset is None:
        with distributed.main_process_first():  # rank 0 renders the cache, the others then read it
            dataset = load_or_render_dataset(world, config.images, config.data_seed, cache_dir=cache, progress=progress)
    if len(dataset) < config.images:
        raise ValueError(f"the dataset has {len(dataset)} images, the config asks for {config.images}")
    dataset = dataset.subset(slice(0, config.images))
    if needs_val:
        val = load_or_render_dataset(world, config.val_images, config.val_seed, cache_dir=cache, progress=progress)
    if not main:
        val = None
    if config.photometric_weight > 0 and (dataset.face_mask is None or not dataset.scene):
        raise ValueError(
            "photometric_weight > 0 needs the face masks and scene context of the training images, which only the "
            "train_f cache stores (not folders made by world.render_shards): drop --data-dir or the photometric term"
        )

    out = Path(config.out)
    # Every rank decides alike (rank 0 may write the file while another rank is still looking).
    if distributed.broadcast_object(out.exists() and not fresh):
        state = load_train_state(out, config, device=device)
        log(f"resuming {out} at step {state.step} ({state.elapsed_s / 60:.1f} min trained)")
    else:
        torch.manual_seed(derive_seed(config.seed, 0))
        distribution = world.config.params if world is not None else None
        mean, std = parameter_statistics(distribution) if distribution is not None else parameter_statistics()
        net = ReconstructionNet(config.network_config(), param_mean=mean, param_std=std)
        if not on_cpu:
            net.to(device)  # same initial weights on every device
        state = TrainState(net, _make_optimizer(net, config))

    net, optimizer = state.net, state.optimizer
    net.train()
    distributed.assert_same_on_all_ranks("F training states", net.state_dict(), optimizer.state_dict(), state.step)
    world_size = distributed.world_size()
    rows = slice(*distributed.shard_range(config.batch))
    local_batch = rows.stop - rows.start
    if local_batch < 1:
        raise ValueError(f"a batch of {config.batch} cannot be split over {world_size} processes: use a larger --batch")
    # Data parallel: global-batch BatchNorm statistics (so the result does not depend on the number of
    # processes), gradients averaged by DDP; the checkpoint keeps the plain network's state.
    sync_norms = distributed.convert_batchnorm(net) if world_size > 1 else []
    model = distributed.data_parallel(net)
    augment_config = AugmentConfig() if config.augment else AugmentConfig(0, 0.0, (0.0, 0.0), 0.0, 0.0, 0.0)
    cm_per_px = 1.0 / world.camera.focal_pixels if world is not None else None
    distance = float(world.camera.distance) if world is not None else 100.0
    if world is None:  # The default camera, so translation labels follow image shifts without a world object.
        from .camera import Camera

        cm_per_px, distance = 1.0 / Camera().focal_pixels, Camera().distance

    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = f"train F -> {out.name}" + (f" (x{world_size})" if world_size > 1 else "")
        bar = tqdm(total=config.steps, initial=min(state.step, config.steps), desc=desc, unit="step", dynamic_ncols=True)
    if not on_cpu:
        dataset = dataset.to(device)  # the whole (uint8) training set on the device: no copy per step
        if config.photometric_weight > 0:
            world.to(device)
    process_start = started = last_save = time.monotonic()
    running: Dict[str, float] = {}
    running_count = 0
    # Off the CPU (one process): each step's logged values stay on the device until the next log
    # entry, then are read back in one transfer (no host sync per step); the same float sums.
    deferred: List[Tuple[List[str], torch.Tensor]] = []
    log_every = max(1, min(50, config.steps // 20))
    completed = False
    try:
        while state.step < config.steps:
            step = state.step
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            # The global batch and its augmentation are a function of (seed, step): each rank takes its rows.
            index = batch_indices(config.seed, step, config.batch, len(dataset))[rows]
            if not on_cpu:
                index = index.to(device, non_blocking=True)
            generator = torch.Generator().manual_seed(derive_seed(config.seed, 1, step))
            draws = distributed.BatchShard(generator, config.batch, torch.arange(rows.start, rows.stop) if world_size > 1 else None)
            aug = augment(
                dataset.float_images(index), dataset.landmarks[index], dataset.params[index], draws, augment_config,
                cm_per_px=cm_per_px, camera_distance=distance,
                face_mask=dataset.face_mask[index][:, None].float() if dataset.face_mask is not None else None,
            )
            output = model(aug["images"])
            loss, parts = reconstruction_loss(net, output, aug["params"], aug["landmarks"], config.loss_weights)
            if config.photometric_weight > 0:
                scene = {k: v[index] for k, v in dataset.scene.items()}
                rendered = world.render(FaceParams.from_vector(output.params), scene).images
                mask = aug["face_mask"]
                if world_size > 1:  # a ratio over the batch: this rank's share of the global numerator and denominator
                    denominator = distributed.all_reduce_sum((3 * mask.sum()).detach().reshape(1))[0].clamp_min(1.0)
                    parts["photometric"] = ((rendered - aug["clean"]).abs() * mask).sum() / denominator * (config.batch / local_batch)
                else:
                    parts["photometric"] = ((rendered - aug["clean"]).abs() * mask).sum() / (3 * mask.sum().clamp_min(1.0))
                loss = loss + config.photometric_weight * parts["photometric"]
            optimizer.zero_grad(set_to_none=True)
            if world_size > 1:
                # Each term is a mean over this rank's rows; DDP averages over ranks. Weighting by
                # local_batch * N / batch makes the average the gradient of the global-batch mean.
                (loss * (local_batch * world_size / config.batch)).backward()
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            state.step += 1

            values = {k: v.detach() for k, v in {"loss": loss, **parts}.items()}
            now = time.monotonic()
            save_due = now - last_save > config.checkpoint_seconds
            stop_due = config.minutes > 0 and now - process_start > 60 * config.minutes
            if world_size > 1:  # global-batch means for the log; rank 0's clock decides saves and stops
                values, save_due, stop_due = distributed.reduce_step_log(values, local_batch / config.batch, save_due, stop_due, main)
            if world_size > 1 or not defer_stats(device):  # all-reduced Python floats, or read back now
                for k, v in values.items():
                    running[k] = running.get(k, 0.0) + float(v)
            else:
                deferred.append((list(values), torch.stack([v.float() for v in values.values()])))
            running_count += 1
            if running_count == log_every or state.step == config.steps:
                if deferred:
                    for (keys, _), row in zip(deferred, torch.stack([packed for _, packed in deferred]).tolist()):
                        for k, v in zip(keys, row):
                            running[k] = running.get(k, 0.0) + v
                    deferred.clear()
                entry = {k: v / running_count for k, v in running.items()}
                entry.update(step=state.step, elapsed_s=state.elapsed_s + now - started)
                state.history.append(entry)
                running, running_count = {}, 0
                if bar is not None:
                    bar.set_postfix(loss=f"{entry['loss']:.3g}", lr=f"{learning_rate(config, step):.2g}")
            if bar is not None:
                bar.update(1)
            if val is not None and config.eval_every > 0 and state.step % config.eval_every == 0 and state.step < config.steps:
                metrics = quick_metrics(net, val)  # rank 0 only (val is None elsewhere); eval mode, no collectives
                metrics.update(step=state.step, elapsed_s=state.elapsed_s + now - started)
                state.evals.append(metrics)
                log(f"step {state.step}: {format_metrics(metrics)}")
            if save_due:
                _save(state, config, out, started)
                started, last_save = time.monotonic(), time.monotonic()
            if stop_due:
                log(f"stopping after {config.minutes} min at step {state.step}; run the same command to resume")
                break
        completed = True
    finally:
        if bar is not None:
            bar.close()
        distributed.restore_batchnorm(sync_norms)
        _save(state, config, out, started, barrier=completed)
    if val is not None and state.step >= config.steps:
        metrics = quick_metrics(net, val)
        metrics.update(step=state.step, elapsed_s=state.elapsed_s)
        if not state.evals or state.evals[-1]["step"] != state.step:
            state.evals.append(metrics)
            save_checkpoint(state, config, out)
        log(f"step {state.step} (held-out, {len(val)} images): {format_metrics(metrics)}")
    distributed.barrier()
    net.eval()
    return state


def _save(state: TrainState, config: TrainConfig, out: Path, started: float, barrier: bool = True) -> None:
    """Checkpoint (rank 0 only in a process group; then every rank waits for the file unless ``barrier`` is False)."""
    state.elapsed_s += time.monotonic() - started
    if distributed.is_main():
        save_checkpoint(state, config, out)
    if barrier:
        distributed.barrier()


# ----------------------------------------------------------------------------
# Command line (registered in stylerig_lite/cli.py as `train-f`).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint path (overwritten atomically; an existing one is resumed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="starting values (tiny: a seconds-long smoke run)")
    parser.add_argument("--seed", type=int, help="initialisation, batch order and augmentation seed")
    parser.add_argument("--width", type=int, help="first-stage width; stages are (w, 2w, 4w, 8w)")
    parser.add_argument("--images", type=int, help="training images (rendered once into the cache)")
    parser.add_argument("--steps", type=int, help="optimizer steps in total (a resumed run continues to this many)")
    parser.add_argument("--batch", type=int, help="batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--data-seed", type=int, help="FaceWorld training set seed (keep it shared between F and the evaluation estimator)")
    parser.add_argument("--data-dir", help="train on a folder rendered by stylerig_lite.world.render_shards instead of the cache")
    parser.add_argument("--blocks-per-stage", type=int)
    parser.add_argument("--norm", choices=("batch", "group"))
    parser.add_argument("--no-augment", dest="augment", action="store_const", const=False, help="train on clean renders only")
    parser.add_argument(
        "--photometric-weight", type=float,
        help="add a re-render loss on the face mask (off by default: it renders and backpropagates a batch per step)",
    )
    parser.add_argument("--eval-every", type=int, help="steps between quick held-out evaluations")
    parser.add_argument("--val-images", type=int, help="held-out images for the quick evaluations")
    parser.add_argument("--minutes", type=float, help="stop and checkpoint after this many minutes (resume later)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--cache-dir", help="FaceWorld dataset cache (default: $STYLERIG_LITE_CACHE/faceworld)")
    parser.add_argument("--fresh", action="store_true", help="start over even if --out exists")
    parser.add_argument("--evaluate", type=int, default=0, metavar="N", help="after training, score on N held-out images (seed 10000) incl. photometric")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """The ``train-f`` command; under ``torchrun`` every process runs it (see :mod:`stylerig_lite.distributed`)."""
    return distributed.launch_command("train-f", getattr(args, "device", "auto"), lambda device: _run(args, device))


def _run(args: argparse.Namespace, device: Optional[torch.device] = None) -> int:
    device = torch.device("cpu") if device is None else device
    configure_cuda(device, tf32=getattr(args, "tf32", True))
    overrides = {
        name: getattr(args, name, None)
        for name in (
            "out", "seed", "width", "images", "steps", "batch", "lr", "data_seed", "data_dir", "blocks_per_stage", "norm", "augment",
            "photometric_weight", "eval_every", "val_images", "minutes", "threads", "cache_dir",
        )
    }
    try:
        config = make_config(args.preset, **overrides)
        state = train(config, fresh=args.fresh, progress=not args.quiet, device=device)
    except (ValueError, FileNotFoundError) as error:  # bad options or data: say what, without a traceback
        print(f"stylerig-lite train-f: error: {error}", file=sys.stderr)
        return 2
    if args.evaluate > 0 and distributed.is_main():
        from .world import FaceWorld

        metrics = evaluate_estimator(state.net, FaceWorld(), args.evaluate, 10_000, cache_dir=config.cache_dir)
        print(json.dumps(metrics, indent=1))
    return 0
