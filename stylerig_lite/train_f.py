"""Training F on FaceWorld: a resumable training loop over a cached, sharded dataset.

Rendering FaceWorld costs tens of milliseconds per image on a laptop CPU,
while one training step of F on a batch of 64 costs about the same as
rendering a few images. So the images are rendered *once* into a cache of
``.npz`` shards (uint8 images, float parameters and landmarks, the face mask
and the scene context), and F trains for many epochs over them, with fresh
random augmentation every time an image is drawn. The cache (layout, set
identity, fingerprint) and the ``render_shards`` folders that ``--data-dir``
reads are :mod:`stylerig_lite.datasets`; their names are re-exported here.

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
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from . import distributed
from .devices import add_device_argument, configure_cuda, resolve_device
from .config import config_from_preset
from .evaluate import evaluate_estimator  # F's held-out score (re-exported)
from .morphable import FaceParams
from .reconstruction import (
    DEFAULT_LOSS_WEIGHTS,
    AugmentConfig,
    ReconstructionConfig,
    ReconstructionNet,
    augment,
    format_metrics,
    parameter_errors,
    estimate_all,
    parameter_statistics,
    reconstruction_loss,
    width_ladder,
)
from .io_utils import load_checkpoint_file, to_cpu
from .seeding import batch_indices, derive_seed  # batch_indices re-exported
# The FaceWorld data (F's shard cache, render_shards folders) lives in datasets; re-exported for old imports.
from .datasets import (  # noqa: F401  re-exported
    CHUNK_SIZE,
    DATASET_VERSION,
    SHARD_CHUNKS,
    FaceDataset,
    default_dataset_dir,
    load_or_render_dataset,
    load_world_shards,
    render_chunk,
    world_fingerprint,
)

__all__ = [
    "CHUNK_SIZE",  # re-exported
    "DATASET_VERSION",  # re-exported
    "SHARD_CHUNKS",  # re-exported
    "FaceDataset",  # re-exported
    "default_dataset_dir",  # re-exported
    "load_or_render_dataset",  # re-exported
    "load_world_shards",  # re-exported
    "render_chunk",  # re-exported
    "world_fingerprint",  # re-exported
    "batch_indices",  # re-exported
    "evaluate_estimator",  # re-exported
    "add_arguments",
    "defer_stats",
    "learning_rate",
    "load_train_state",
    "get_config",
    "make_config",
    "PRESETS",
    "quick_metrics",
    "run_from_args",
    "save_checkpoint",
    "train",
    "TrainConfig",
    "TrainState",
]


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
    data_dir: Optional[str] = None  # instead: read images from a folder made by datasets.render_shards (shared with the GAN)
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


def get_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """:data:`PRESETS` entry ``preset`` with ``overrides`` on top (``None`` values are ignored)."""
    return config_from_preset(TrainConfig, PRESETS, preset, overrides)


make_config = get_config  # the name older scripts use


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the peak at ``config.steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


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
        "optimizer": to_cpu(state.optimizer.state_dict()),  # CPU tensors (a CPU run's state is kept as it is)
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
    data = load_checkpoint_file(path, "train-f checkpoint", f"delete it, or pass --fresh to start over (it overwrites {path})")
    if not isinstance(data, dict) or "train" not in data:
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
            "train_f cache stores (not folders made by datasets.render_shards): drop --data-dir or the photometric term"
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
    parser.add_argument("--data-dir", help="train on a folder rendered by stylerig_lite.datasets.render_shards instead of the cache")
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
        config = get_config(args.preset, **overrides)
        state = train(config, fresh=args.fresh, progress=not args.quiet, device=device)
    except (ValueError, FileNotFoundError) as error:  # bad options or data: say what, without a traceback
        print(f"stylerig-lite train-f: error: {error}", file=sys.stderr)
        return 2
    if args.evaluate > 0 and distributed.is_main():
        from .world import FaceWorld

        metrics = evaluate_estimator(state.net, FaceWorld(), args.evaluate, 10_000, cache_dir=config.cache_dir)
        print(json.dumps(metrics, indent=1))
    return 0
