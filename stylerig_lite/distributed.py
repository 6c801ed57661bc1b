"""Data-parallel training on ``torch.distributed``: what the training CLIs share to run under ``torchrun``.

``stylerig-lite train-gan``, ``train-f``, ``train-rignet`` and ``make-corpus`` run unchanged as one
process or as N processes started by ``torchrun --nproc_per_node=N`` (or a cluster launcher that sets
the same variables). Launched with ``WORLD_SIZE`` > 1, a command joins the process group from
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``),
trains, and leaves it again (:func:`launch`).

The rule that makes results independent of the number of processes: **every process draws the same
global batch and keeps its own rows of it.** Batch order, latents, noise and augmentation are drawn
for the whole global batch from the same seeded generators on every rank (:class:`BatchShard`), each
rank computes its rows (:func:`shard_rows`), and the loss is each rank's share of the global-batch
mean, so the summed gradient is the gradient of the single-process loss. Checkpoints hold
unwrapped module state and global counters, so a run resumes with any number of processes.

Backend: Gloo when the command computes on the CPU; when it computes on CUDA (``--device``, see
:mod:`stylerig_lite.devices`; each rank then uses ``cuda:$LOCAL_RANK``), ``cpu:gloo,cuda:nccl``: NCCL
for the CUDA tensors (gradients, statistics) and Gloo for the few CPU ones (state digests, pickled
objects). ``STYLERIG_LITE_DIST_BACKEND`` overrides the choice. Other pieces: the
process-group timeout (``STYLERIG_LITE_DIST_TIMEOUT`` seconds, default
:data:`DEFAULT_TIMEOUT_S`) turns a lost process into an error instead of a hang; rank-0-only
logging, progress bars and checkpoint writes (:func:`is_main`), barriers after writes
(:func:`barrier`); :class:`SyncBatchNorm2d`, BatchNorm with statistics of the global batch, which
``torch.nn.SyncBatchNorm`` does not offer on the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import sys
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .seeding import BatchShard  # re-exported: the draws of a global batch live with the other seeds

#: Seconds a collective waits for the other processes before it fails (env ``STYLERIG_LITE_DIST_TIMEOUT``).
TIMEOUT_ENV = "STYLERIG_LITE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
#: Overrides the process-group backend (``gloo``, ``nccl``, ``cpu:gloo,cuda:nccl``).
BACKEND_ENV = "STYLERIG_LITE_DIST_BACKEND"

__all__ = [
    "BACKEND_ENV",
    "BatchShard",
    "DEFAULT_TIMEOUT_S",
    "SyncBatchNorm2d",
    "TIMEOUT_ENV",
    "all_reduce_gradients",
    "all_reduce_sum",
    "reduce_step_log",
    "assert_same_on_all_ranks",
    "backend_for",
    "barrier",
    "broadcast_object",
    "convert_batchnorm",
    "data_parallel",
    "init_from_env",
    "is_communication_error",
    "is_distributed",
    "is_main",
    "launch",
    "main_process_first",
    "rank",
    "restore_batchnorm",
    "shard_range",
    "shard_rows",
    "teardown",
    "timeout_seconds",
    "world_size",
]


# ----------------------------------------------------------------------------
# The process group.


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs, shows progress bars and writes files."""
    return rank() == 0


def timeout_seconds(value: Optional[float] = None) -> float:
    """``value``, else ``$STYLERIG_LITE_DIST_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    if value is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        value = float(text) if text else DEFAULT_TIMEOUT_S
    if not value > 0:
        raise ValueError(f"the process-group timeout must be positive, got {value} ({TIMEOUT_ENV})")
    return float(value)


def backend_for(device: Any = "cpu") -> str:
    """The process-group backend for a command computing on ``device``.

    Gloo for the CPU. For CUDA, NCCL for CUDA tensors plus Gloo for CPU tensors
    (``"cpu:gloo,cuda:nccl"``): the trainers' collectives on gradients and statistics run on the
    GPU, while the state digests and object broadcasts stay on the CPU.
    """
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(timeout: Optional[float] = None, backend: Optional[str] = None, device: Any = "cpu") -> bool:
    """Join the process group that ``torchrun`` describes in the environment; True if this call joined it.

    Does nothing (returns False) for a single process (``WORLD_SIZE`` unset or 1) or when a group
    already exists (a caller that set one up itself, e.g. a test). ``backend``: default
    ``$STYLERIG_LITE_DIST_BACKEND``, else :func:`backend_for` ``device`` (the device the command
    computes on); an NCCL backend also selects GPU ``LOCAL_RANK``.
    """
    dist = _dist()
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} unset: start the processes with torchrun "
                           "(or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each)")
    backend = backend or os.environ.get(BACKEND_ENV, "").strip() or backend_for(device)
    if "nccl" in backend and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_seconds(timeout)))
    return True


def teardown() -> None:
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_COMMUNICATION_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "connection refused", "timed out",
                        "timeout", "broken pipe", "socket")


def is_communication_error(error: BaseException) -> bool:
    """Whether ``error`` came from the process group (a lost peer, a timeout), not from the training code."""
    dist = _dist()
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and any(word in str(error).lower() for word in _COMMUNICATION_WORDS)


def reduce_step_log(values: "dict", share: float, save_due: bool, stop_due: bool, main: bool):
    """One all-reduce per step for a trainer's log and its save/stop decisions.

    ``values``: this rank's logged scalars (tensors), each a mean over its ``share`` of the global
    batch; returns ``(global-batch means as floats, save_due, stop_due)``, where rank 0's clock
    decides both flags so that every rank saves and stops after the same step.
    """
    device = next(iter(values.values())).device  # NCCL reduces CUDA tensors: the flags go where the values are
    flags = [torch.tensor(float(main and due), dtype=torch.float64, device=device) for due in (save_due, stop_due)]
    packed = all_reduce_sum(torch.stack([v.double() * share for v in values.values()] + flags)).tolist()
    return dict(zip(values, packed[:-2])), packed[-2] > 0, packed[-1] > 0


def launch_command(command: str, device_name: str, run: Callable[[Any], int]) -> int:
    """A training CLI's entry: resolve ``--device`` (a bad one is a one-line ``SystemExit``), then
    :func:`launch` ``run(device)`` in the process group from the environment (if any)."""
    from .devices import resolve_device

    try:
        device = resolve_device(device_name)
    except ValueError as error:
        raise SystemExit(f"stylerig-lite {command}: error: {error}") from None
    return launch(command, lambda: run(device), device=device)


def launch(command: str, run: Callable[[], int], device: Any = "cpu") -> int:
    """Run a CLI command in the process group from the environment (if any); a lost peer is a clean error.

    ``device``: where the command computes (resolved ``--device``); it picks the backend.

    Returns ``run()``'s exit status. In a group, a collective that fails because another process died
    or stopped answering within the timeout prints one line naming this rank and exits with status 1
    (torchrun then stops the other processes); any other exception propagates with its traceback.
    """
    joined = init_from_env(device=device)
    failed = False
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a communication failure
        if not (joined or is_distributed()) or not is_communication_error(error):
            raise
        failed = True
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"stylerig-lite {command}: error: rank {rank()} of {world_size()} lost contact with the other processes "
              f"({first_line}). Another process stopped or did not answer within the process-group timeout "
              f"({timeout_seconds():g} s, {TIMEOUT_ENV}); see its log. The last checkpoint resumes with any number of processes.",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if joined:
            if failed:
                with contextlib.suppress(Exception):
                    teardown()
            else:
                teardown()


# ----------------------------------------------------------------------------
# Collectives (no-ops for a single process).


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns ``tensor``."""
    if is_distributed():
        _dist().all_reduce(tensor)
    return tensor


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``parameters`` over ranks, in one flat buffer per dtype and device.

    Parameters without a gradient (``None``) are left alone; every rank must have the same ones.
    Each rank's loss must be its share of the global loss (see :func:`shard_rows`), so the sum is the
    gradient of the global loss.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    groups: dict = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for group in groups.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        _dist().all_reduce(flat)
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _update_digest(digest: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            digest.update(f"K{k!r}".encode())
            _update_digest(digest, value[k])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for v in value:
            _update_digest(digest, v)
    else:
        digest.update(repr(value).encode())


def assert_same_on_all_ranks(what: str, *values: Any) -> None:
    """Raise on every rank if ``values`` (tensors, state dicts, numbers) differ between ranks.

    Every rank must start from the same weights, optimizer state, counters and RNG state; they do
    when they build the same seeded networks or read the same checkpoint. They do not when, say,
    nodes of a cluster read different copies of a checkpoint: then training would silently diverge.
    """
    if not is_distributed():
        return
    digest = hashlib.sha256()
    _update_digest(digest, values)
    mine = torch.tensor([int.from_bytes(digest.digest()[:7], "little")], dtype=torch.int64)
    low, high = mine.clone(), mine.clone()
    dist = _dist()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if int(low) != int(high):
        raise RuntimeError(f"the processes hold different {what}: every rank must start from the same state "
                           "(resume from one checkpoint on a filesystem all nodes share)")


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (say, renders a cache), then the others (which find it cached)."""
    if not is_distributed():
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# ----------------------------------------------------------------------------
# Sharding a global batch.


def shard_range(total: int, rank_: Optional[int] = None, world: Optional[int] = None) -> Tuple[int, int]:
    """``[start, stop)`` of rank ``rank_``'s share of ``total`` items: contiguous, sizes differ by at most one."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(int(total), int(world))
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def shard_rows(batch: int, rank_: Optional[int] = None, world: Optional[int] = None, group_size: int = 1) -> torch.Tensor:
    """Rows of a global batch of ``batch`` that rank ``rank_`` computes, as an index tensor.

    ``group_size`` > 1 keeps whole groups of a layer that mixes samples in groups on one rank, in
    the order that layer expects. StyleGAN2's minibatch-stddev layer reshapes a batch of ``N`` to
    ``[G, N // G, ...]``: group ``j`` is samples ``j, j + N/G, j + 2N/G, ...``. Rank ``r`` gets groups
    ``j`` in its :func:`shard_range` of the ``N // G`` groups, ordered member-major, so its local batch
    reshapes into the same groups. ``group_size=1``: a contiguous slice.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if batch % group_size:
        raise ValueError(f"batch {batch} is not a multiple of the group size {group_size}")
    groups = batch // group_size
    if groups < world:
        unit = f"groups of {group_size} samples" if group_size > 1 else "samples"
        raise ValueError(f"a global batch of {batch} holds {groups} {unit}, fewer than the {world} processes: "
                         "use a larger batch or fewer processes")
    start, stop = shard_range(groups, rank_, world)
    members = torch.arange(group_size)[:, None] * groups  # [G, 1]
    return (members + torch.arange(start, stop)[None, :]).reshape(-1)


# ----------------------------------------------------------------------------
# BatchNorm over the global batch.


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all processes.

    Outside a process group, or in eval mode, it is ``nn.BatchNorm2d``. In a group it all-reduces
    per-channel sums of ``x - s`` and ``(x - s)²`` in one call (float64 sums; the shift ``s`` is the
    running mean, identical on every rank, which keeps ``E[(x-s)²] - E[x-s]²`` accurate), with
    ``torch.distributed.nn.functional.all_reduce``, whose backward all-reduces the gradients: one
    collective forward and one backward per layer, and both passes equal a single process's on the
    whole batch up to float rounding. ``torch.nn.SyncBatchNorm`` does the same on GPUs only. Same
    parameters, buffers and state-dict keys as ``nn.BatchNorm2d``: :func:`convert_batchnorm` swaps
    the class in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, 2, 3]
        if self.track_running_stats and self.running_mean is not None:
            shift = self.running_mean.detach().to(x.dtype)
        else:
            shift = x.new_zeros(channels)
        shifted = x - shift[None, :, None, None]
        count = torch.tensor([x.numel() / channels], dtype=torch.float64, device=x.device)
        sums = all_reduce(torch.cat([shifted.sum(dims, dtype=torch.float64),
                                     shifted.square().sum(dims, dtype=torch.float64), count]))
        n = sums[-1].detach()
        offset = sums[:channels] / n
        var = (sums[channels : 2 * channels] / n - offset.square()).clamp_min(0).to(x.dtype)  # biased, as BatchNorm normalises
        mean = shift + offset.to(x.dtype)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * float(n / (n - 1).clamp_min(1)), factor)
        return y


def convert_batchnorm(module: nn.Module) -> List[nn.Module]:
    """Turn every ``nn.BatchNorm2d`` in ``module`` into a :class:`SyncBatchNorm2d` in place; returns them."""
    converted = [m for m in module.modules() if type(m) is nn.BatchNorm2d]
    for m in converted:
        m.__class__ = SyncBatchNorm2d
    return converted


def restore_batchnorm(modules: Sequence[nn.Module]) -> None:
    """Undo :func:`convert_batchnorm`."""
    for m in modules:
        if type(m) is SyncBatchNorm2d:
            m.__class__ = nn.BatchNorm2d


def data_parallel(module: nn.Module) -> nn.Module:
    """``DistributedDataParallel(module)`` in a process group, else ``module``.

    Buffers are not re-broadcast every step: the trainers keep them identical on every rank
    (global-batch BatchNorm statistics, identical initialisation or checkpoint).
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)
