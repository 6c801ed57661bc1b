"""Training RigNet: the resumable loop behind ``stylerig-lite train-rignet``.

One RigNet per component (pose, expression, light), trained through
the frozen generator G and the frozen face estimator F with the siamese
StyleRig objective of :func:`stylerig_lite.rignet.rig_losses`::

    stylerig-lite train-rignet --component pose --out runs/rignet_pose.pt
    stylerig-lite train-rignet --component pose --out runs/rignet_pose.pt          # again: resumes
    stylerig-lite train-rignet --component pose --out runs/rignet_pose_no_rec.pt --ablate rec
    stylerig-lite train-rignet --component pose --out runs/rignet_pose_4.pt --edit-layers 4   # coarse layers only

Each step draws ``batch`` pairs ``(w, v)``:

* from a corpus (``--corpus DIR``, :class:`stylerig_lite.corpus.CorpusDataset`):
  stored latents and images; F's parameters and landmarks are re-estimated
  with the F being trained against (cheap, no gradient), because ``p̂`` comes
  from that F and the corpus may have been labelled by another;
* or on the fly: ``w = G.mapping(z)`` from ``z`` seeded by ``(seed, step)``,
  rendered by G and estimated by F.

Either way a step's batch is a function of ``(seed, step)`` alone, so an
interrupted and resumed run takes exactly the steps of an uninterrupted one
(tested). The checkpoint (one path, written atomically) carries the RigNet,
its config, the generator it belongs to (``generator_sha256``, the
:func:`~stylerig_lite.io_utils.module_sha256` of G, and ``generator_file_sha256`` when G came
from a file; see :meth:`~stylerig_lite.rignet.RigNet.check_generator`), the training config,
the optimizer state and the loss history; running the same command again resumes (with the
same generator only), ``--minutes`` stops and checkpoints. A ``--corpus`` made with another
generator is refused, and so is a corrupt ``--out`` (``--fresh`` starts over).
Loss curves go to ``<out stem>.log.jsonl`` beside the checkpoint.

Optimizer: Adam at 1e-3 by default; the paper's AdaDelta at 0.01 is
``--optimizer adadelta --lr 0.01``. Why we deviate (measured, pose RigNet,
batch 4, 80 steps, the interim FaceWorld GAN at 12k images and a trained F,
held-out loss / pose error on 32 edits; untrained 0.6848 / 0.0176 rad):
AdaDelta 0.01 -> 0.6743 / 0.0177, AdaDelta 1.0 -> 0.6567 / 0.0162, Adam 1e-3
-> 0.6551 / 0.0133; after 240 steps AdaDelta 0.01 -> 0.6653 / 0.0181, Adam
1e-3 -> 0.6453 / 0.0113 (only Adam lowered the pose error, by a third). These are
early numbers on an interim GAN; rerun with the final networks to confirm
(``--optimizer adadelta --lr 0.01``). PyTorch's AdaDelta starts with steps of about
``lr · sqrt(eps / (1 - rho))`` per parameter (≈ 3e-5 at lr 0.01), too small for the few
thousand steps a CPU hour affords; the paper trained much longer on a GPU.

Under ``torchrun --nproc_per_node=N`` the same command trains data-parallel
(DistributedDataParallel around the siamese objective, :mod:`stylerig_lite.distributed`):
every process draws the same ``batch`` pairs of a step and computes its share of
them, and rank 0 writes the checkpoint and the log, so the result does not depend
on N (up to float rounding) and a checkpoint resumes with any N.

Cost, measured on the 2-core development CPU with 1 thread (torch 2.11, while
two other training jobs shared the cores): one training step at batch 8
(8 pairs, 16 edits both ways) with the ``cpu64`` generator (10 ws x 256,
random weights) and the default F (widths 32/64/128/256) takes
**≈ 0.7-0.85 s** when latents are sampled on the fly and **≈ 0.65-0.8 s**
from a corpus (no no-grad G pass), for all three components: about 4,500
steps, i.e. 36k pairs, per CPU hour. Of a step, ≈ 0.12 s draws and
estimates the pairs (G + F without gradients), ≈ 0.28 s is the forward pass
(G and F on the 16 edited latents, two render losses) and ≈ 0.35 s the
backward pass. The ``cpu`` preset (4,000 steps) is about an hour per component.

Devices: ``--device auto|cpu|cuda|cuda:N`` as for ``train-gan`` (:mod:`stylerig_lite.devices`;
``auto`` = CUDA when available). G, F, the face model and the RigNet live on the device (the RigNet
is initialised on the CPU with the same seed, then moved); the pairs are drawn as on the CPU (seeded
CPU generator, corpus items read on the CPU) and moved there; the logged values are read back once
per log entry instead of once per step. The checkpoint always holds CPU tensors, so a run resumes on
any device. The device is not part of the training config: the same run may move between devices.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from . import distributed
from .devices import add_device_argument, configure_cuda, resolve_device
from .config import config_from_preset
from .rignet import (
    COMPONENTS,
    GeneratorMismatchError,
    LossWeights,
    RigNet,
    RigNetConfig,
    RigSample,
    describe,
    freeze,
    get_component,
    rig_losses,
)
from .io_utils import load_checkpoint_file, module_sha256, sha256_file, to_cpu
from .seeding import batch_indices, derive_seed

__all__ = [
    "ABLATIONS",
    "add_arguments",
    "defer_stats",
    "load_train_state",
    "log_path",
    "get_config",
    "make_config",
    "make_optimizer",
    "PairSource",
    "PRESETS",
    "run_from_args",
    "save_checkpoint",
    "SiameseObjective",
    "train",
    "TrainConfig",
    "TrainState",
]

ABLATIONS = ("rec", "edit", "consist")


# ----------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass
class TrainConfig:
    """Everything one RigNet training run depends on (stored in its checkpoint)."""

    out: str = "rignet.pt"
    component: str = "pose"
    seed: int = 0  # initialisation and the (w, v) pairs
    steps: int = 4000
    batch: int = 8  # pairs per step; both directions are trained, so 2*batch edits
    optimizer: str = "adam"  # "adadelta" with lr 0.01 is the paper's; Adam measured better (module docstring)
    lr: float = 1e-3
    latent_dim: int = 32
    edit_layers: Optional[int] = None  # layer mask: only the first this many W+ layers are edited (None: all)
    w_rec: float = 1.0
    w_edit: float = 1.0
    w_consist: float = 1.0
    ablate: List[str] = dataclasses.field(default_factory=list)  # terms dropped (weight 0): rec, edit, consist
    truncation_psi: float = 1.0  # on-the-fly sampling only
    corpus: Optional[str] = None  # folder of a stylerig_lite.corpus.CorpusDataset; None = sample w on the fly
    generator: Optional[str] = None  # None = the embedded FaceWorld generator; 'faceworld', 'ffhq' or a checkpoint
    f: str = "latent"  # "latent": the paper's F(ŵ) on a corpus, no G in the loop; "image": F(G(ŵ))
    estimator: Optional[str] = None  # the image F (f="image"); None = the embedded one
    latent_f: Optional[str] = None  # the latent F (f="latent"); None = the embedded one of the generator
    render_size: Optional[int] = None  # f="latent": render/compare size (None: 64 px)
    mesh_cell_cm: Optional[float] = 1.0  # f="latent": render a decimated face (losses.decimate_face_model); None: full
    log_every: int = 10
    checkpoint_seconds: float = 60.0
    minutes: float = 0.0  # stop (and checkpoint) after this long in this process; 0 = no limit
    threads: int = 0  # torch CPU threads; 0 = torch's default

    #: Fields that may differ between a checkpoint and the run that resumes it.
    RESUMABLE_CHANGES = ("out", "steps", "log_every", "checkpoint_seconds", "minutes", "threads")

    def __post_init__(self) -> None:
        self.component = get_component(self.component).name  # canonical ("illumination" -> "light")
        self.ablate = sorted(set(self.ablate))
        for name in self.ablate:
            if name not in ABLATIONS:
                raise ValueError(f"unknown --ablate {name!r}; expected one of {list(ABLATIONS)}")
        if self.f not in ("latent", "image"):
            raise ValueError(f"f must be 'latent' (the paper's F, reading W+) or 'image', got {self.f!r}")
        if self.optimizer not in ("adadelta", "adam"):
            raise ValueError(f"optimizer must be 'adadelta' or 'adam', got {self.optimizer!r}")
        if self.edit_layers is not None and not (isinstance(self.edit_layers, int) and self.edit_layers >= 1):
            raise ValueError(f"--edit-layers must be a positive number of W+ layers, got {self.edit_layers!r}")
        if self.batch < 1 or self.steps < 0 or not self.lr > 0:
            raise ValueError(f"need batch >= 1, steps >= 0 and lr > 0 (got {self.batch}, {self.steps}, {self.lr})")

    def loss_weights(self) -> LossWeights:
        weights = {"rec": self.w_rec, "edit": self.w_edit, "consist": self.w_consist}
        for name in self.ablate:
            weights[name] = 0.0
        if not any(weights.values()):
            raise ValueError("every loss term is ablated or has weight 0: nothing to train")
        return LossWeights(**weights)


#: Named starting points; explicit command-line options override them.
PRESETS: Dict[str, Dict[str, Any]] = {
    # Seconds: for tests and a first look at the loop (pair it with small G and F).
    "tiny": dict(steps=20, batch=2, log_every=5),
    # About an hour per component on one CPU core (≈ 0.7-0.85 s per step, see the module docstring).
    "cpu": dict(steps=4000, batch=8, log_every=10),
}


def get_config(preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """:data:`PRESETS` entry ``preset`` with ``overrides`` on top (``None`` values are ignored)."""
    return config_from_preset(TrainConfig, PRESETS, preset, overrides)


make_config = get_config  # the name chapter 5 and older scripts use


def log_path(out: Union[str, os.PathLike]) -> Path:
    """The jsonl loss log beside checkpoint ``out``: ``runs/rignet_pose.pt`` -> ``runs/rignet_pose.log.jsonl``."""
    out = Path(out)
    return out.with_name(out.stem + ".log.jsonl")


# ----------------------------------------------------------------------------
# Pairs.


class PairSource:
    """Step ``s``'s pairs ``(w, v)`` with F's view of them; a function of ``(seed, s)`` alone.

    A corpus whose manifest names another generator than ``G`` (its ``generator_sha256``, the
    :func:`~stylerig_lite.io_utils.module_sha256` of the generator that made it) is refused with
    :class:`~stylerig_lite.rignet.GeneratorMismatchError`: its latents are another W+ space.
    ``generator_sha256``: ``G``'s hash if the caller has it already.
    """

    def __init__(self, G: nn.Module, F: nn.Module, config: TrainConfig, corpus: Any = None, device: Any = None, *,
                 generator_sha256: Optional[str] = None):
        self.G, self.F, self.config = G, F, config
        # Where G and F compute (default: where G's parameters are); draws are made on the CPU and moved.
        self.device = torch.device(device) if device is not None else next(G.parameters()).device
        if corpus is None and config.corpus:
            from .corpus import CorpusDataset  # written alongside; imported only when asked for

            corpus = CorpusDataset(config.corpus)
        self.corpus = corpus
        if corpus is not None and len(corpus) < 2:
            raise ValueError(f"the corpus holds {len(corpus)} latents; pairs need at least 2")
        self.latent = bool(getattr(F, "reads_latents", False))
        if self.latent:
            if corpus is None:
                raise ValueError("the latent F trains RigNet on corpus images (no generator in the loop): pass a "
                                 "corpus (--corpus DIR, made with `stylerig-lite make-corpus`), or use --f image")
            # Pairs are drawn among the images where the detector found a face (their landmarks are targets).
            self.rows = torch.nonzero(torch.as_tensor(corpus.face_found).bool()).flatten()
            if len(self.rows) < 2:
                raise ValueError(f"the corpus has {len(self.rows)} images with a detected face; pairs need at least 2")
            stored = int(corpus.images.shape[1])
            self.render_size = int(config.render_size or min(stored, 64))
            if stored % self.render_size:
                raise ValueError(f"render_size {self.render_size} must divide the corpus's {stored} px")
        made_with = (getattr(corpus, "manifest", None) or {}).get("generator_sha256")
        if made_with is not None:
            generator_sha256 = generator_sha256 or module_sha256(G)
            if made_with != generator_sha256:
                file_sha = corpus.manifest.get("generator_file_sha256")
                where = getattr(corpus, "root", config.corpus)
                raise GeneratorMismatchError(
                    f"the corpus {where} was made with the generator with sha256 {made_with[:12]}..."
                    + (f" (file sha256 {file_sha[:12]}...)" if file_sha else "")
                    + f", but this RigNet trains with the generator with sha256 {generator_sha256[:12]}...: its latents "
                    "are another generator's W+. Make a corpus of this generator with `stylerig-lite make-corpus "
                    "--generator CHECKPOINT --out DIR`, or train with the corpus's generator (--generator)")

    @torch.no_grad()
    def __call__(self, step: int, rows: Optional[slice] = None) -> Tuple[RigSample, RigSample]:
        """The ``(w, v)`` halves of step ``step``'s ``batch`` pairs; ``rows``: only those pairs (a data-parallel rank's share)."""
        B = self.config.batch
        rows = slice(0, B) if rows is None else rows
        pick = torch.cat([torch.arange(B)[rows], B + torch.arange(B)[rows]])  # pair i is (item i, item B + i)
        b = len(pick) // 2
        if self.latent:
            index = self.rows[batch_indices(derive_seed(self.config.seed, 3), step, 2 * B, len(self.rows))[pick]]
            sample = self._latent_sample(index)
        elif self.corpus is not None:
            index = batch_indices(derive_seed(self.config.seed, 3), step, 2 * B, len(self.corpus))[pick]
            items = [self.corpus[int(i)] for i in index]
            w = torch.stack([torch.as_tensor(item["w"]) for item in items]).float()  # [2b, num_ws, w_dim]
            images = torch.stack([torch.as_tensor(item["image"]) for item in items]).float()  # [2b, 3, R, R] in [-1, 1]
            if self.device.type != "cpu":
                w, images = w.to(self.device), images.to(self.device)
            sample = describe(self.G, self.F, w, images)
        else:
            generator = torch.Generator().manual_seed(derive_seed(self.config.seed, 1, step))
            z = torch.randn(2 * B, self.G.z_dim, generator=generator)[pick]
            if self.device.type != "cpu":
                z = z.to(self.device)
            w = self.G.mapping(z, None, truncation_psi=self.config.truncation_psi)
            sample = describe(self.G, self.F, w)
        halves = [RigSample(*(getattr(sample, f.name)[k * b : (k + 1) * b] for f in dataclasses.fields(RigSample))) for k in (0, 1)]
        return halves[0], halves[1]

    def _latent_sample(self, index: torch.Tensor) -> RigSample:
        """Corpus rows as the latent F's losses see them: ``p_w = F(w)``, the image and its detected landmarks."""
        batch = self.corpus.render_batch(index, self.render_size)
        w, images, landmarks = batch["w"], batch["images"], batch["landmarks"]
        if self.device.type != "cpu":
            w, images, landmarks = w.to(self.device), images.to(self.device), landmarks.to(self.device)
        return RigSample(w, images, self.F(w), landmarks)


class SiameseObjective(nn.Module):
    """``rig_losses`` as one module call, so that DistributedDataParallel can wrap it.

    Only the RigNet is a registered submodule (DDP synchronises its gradients); the frozen G, F and
    the render loss are held outside the module tree.
    """

    def __init__(self, rignet: RigNet, G: nn.Module, F: nn.Module, render: Any, weights: LossWeights):
        super().__init__()
        self.rignet = rignet
        self._fixed = (G, F, render, weights)

    def forward(self, *tensors: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        G, F, render, weights = self._fixed
        sample_w, sample_v = RigSample(*tensors[:4]), RigSample(*tensors[4:])
        return rig_losses(self.rignet, G, F, render, sample_w, sample_v, weights)


# ----------------------------------------------------------------------------
# State and checkpoints.


@dataclasses.dataclass
class TrainState:
    rignet: RigNet
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed_s: float = 0.0
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    # Sums of the terms since the last log entry: checkpointed, so that a run stopped between
    # two entries logs the same averages as one that never stopped.
    running: Dict[str, float] = dataclasses.field(default_factory=dict)
    running_count: int = 0


def defer_stats(device: torch.device) -> bool:
    """Whether a single-process run keeps each step's logged values on ``device`` until the next log entry.

    True off the CPU (no host sync per step); the CPU reads them back at once, as it always has.
    The result is the same either way (tested by forcing it on the CPU).
    """
    return device.type != "cpu"


def make_optimizer(rignet: RigNet, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        # fused: one kernel over all 40 tensors instead of a dozen passes each (the same update to rounding):
        # 0.7 ms a step against 3.5 ms for the pose RigNet's 174,400 weights on the 2-core machine.
        return torch.optim.Adam(rignet.parameters(), lr=config.lr, fused=True)
    return torch.optim.Adadelta(rignet.parameters(), lr=config.lr)


def save_checkpoint(state: TrainState, config: TrainConfig, path: Union[str, os.PathLike]) -> Path:
    """One file: the RigNet (loadable by ``RigNet.load``) plus everything needed to resume."""
    train = {
        "config": dataclasses.asdict(config),
        "step": state.step,
        "elapsed_s": state.elapsed_s,
        "optimizer": to_cpu(state.optimizer.state_dict()),  # CPU tensors (a CPU run's state is kept as it is)
        "history": state.history,
        "running": state.running,
        "running_count": state.running_count,
    }
    rignet = state.rignet
    if next(rignet.parameters()).device.type != "cpu":
        rignet = copy.deepcopy(rignet).cpu()  # the file holds CPU tensors: it resumes on any device
    return rignet.save(path, extra={"train": train})


def load_train_state(path: Union[str, os.PathLike], config: TrainConfig, device: Any = None) -> TrainState:
    """Restore RigNet, optimizer, step and history from a checkpoint made with a compatible config.

    The file is read onto the CPU; ``device`` (default CPU): where the RigNet and its optimizer state go.
    """
    data = load_checkpoint_file(path, "train-rignet checkpoint", f"delete it, or pass --fresh to start over (it overwrites {path})")
    if not isinstance(data, dict) or "train" not in data:
        raise ValueError(f"{path} holds a RigNet without training state; it cannot be resumed (use --fresh to overwrite)")
    # Checkpoints from before the latent F trained with the image F (and had no latent-F settings).
    saved = {"f": "image", "latent_f": None, "render_size": None, "mesh_cell_cm": 1.0, **data["train"]["config"]}
    current = dataclasses.asdict(config)
    differences = [
        f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}"
        for k in current
        if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != current[k]
    ]
    if differences:
        raise ValueError(
            f"cannot resume {path}: its training config differs ({'; '.join(differences)}). "
            "Use the same options, another --out, or --fresh to start over"
        )
    rignet = RigNet.from_checkpoint(data)
    if device is not None and torch.device(device).type != "cpu":
        rignet.to(device)  # before the optimizer: load_state_dict moves its state to the parameters' device
    optimizer = make_optimizer(rignet, config)
    optimizer.load_state_dict(data["train"]["optimizer"])
    t = data["train"]
    return TrainState(rignet, optimizer, int(t["step"]), float(t["elapsed_s"]), list(t["history"]), dict(t["running"]), int(t["running_count"]))


def _write_log(path: Path, history: List[Dict[str, float]]) -> None:
    """Rewrite the jsonl log from the checkpoint's history (atomic), dropping entries past a crash."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(entry) + "\n" for entry in history))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# The loop.


def train(
    config: TrainConfig,
    *,
    G: Optional[nn.Module] = None,
    F: Optional[nn.Module] = None,
    corpus: Any = None,
    face_model: Any = None,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: Any = None,
) -> TrainState:
    """Train a RigNet (or resume ``config.out``) and return the final state; checkpoints as it goes.

    ``G`` and ``F`` default to ``config.generator`` / ``config.estimator`` (None: the embedded ones); they are frozen here
    (eval mode, no parameter gradients). ``corpus``: a dataset of dicts with
    ``'w'`` and ``'image'`` (default: ``CorpusDataset(config.corpus)`` when set).
    ``face_model`` defaults to :func:`~stylerig_lite.morphable.load_face_model`.
    ``device`` (default: the CPU; a ``--device`` string is resolved): where to train; G, F and the face
    model are moved there (in place), the checkpoint holds CPU tensors either way.
    """
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, G=G, F=F, corpus=corpus, face_model=face_model, fresh=fresh, progress=progress, log=log,
                      device=device)
    finally:
        torch.set_num_threads(threads_before)


def _train(config: TrainConfig, *, G, F, corpus, face_model, fresh: bool, progress: bool, log: Callable[[str], None],
           device: Any = None) -> TrainState:
    from .face_render import default_camera
    from .losses import RenderLoss
    from .morphable import load_face_model

    weights = config.loss_weights()
    generator_file_sha256: Optional[str] = None  # known when G is loaded here from a file
    if G is None or F is None:
        from . import pretrained

        name = config.generator if config.generator in pretrained.GENERATOR_NAMES else None
        if G is None:
            if name is not None:
                G = pretrained.generator_by_name(name)
                generator_file_sha256 = (G.generator_sha256 if name == "ffhq"
                                         else sha256_file(pretrained.embedded_path("generator")))
            else:
                G = pretrained.generator(config.generator)
                generator_file_sha256 = sha256_file(config.generator or pretrained.embedded_path("generator"))
        if F is None and config.f == "latent":
            if config.latent_f is None and config.generator is not None and name is None:
                raise ValueError("a generator from a checkpoint has no embedded latent F: train one with "
                                 "`stylerig-lite train-latent-f` and pass it with --latent-f PATH")
            F = pretrained.latent_f(name or "faceworld", config.latent_f)
        elif F is None:
            F = pretrained.face_estimator(config.estimator)
    if bool(getattr(F, "reads_latents", False)) != (config.f == "latent"):
        raise ValueError(f"config.f is {config.f!r} but the F passed is "
                         f"{'a latent' if getattr(F, 'reads_latents', False) else 'an image'} F; make them agree")
    if config.f == "latent":
        F.check_generator(G, file_sha256=generator_file_sha256)  # a latent F reads one generator's W+
    # The RigNet belongs to this generator: recorded in its checkpoint, checked on resume and against a corpus.
    generator_sha256 = module_sha256(G)
    device = (torch.device("cpu") if device is None else
              device if isinstance(device, torch.device) else resolve_device(device))
    on_cpu = device.type == "cpu"
    freeze(G)
    freeze(F)
    face_model = face_model or load_face_model(progress=False)
    if not on_cpu:  # built or loaded on the CPU, then moved
        G.to(device)
        F.to(device)
        face_model.to(device)
    pairs = PairSource(G, F, config, corpus, device=device, generator_sha256=generator_sha256)
    if pairs.latent:  # the latent F's own landmark weighting: the paper's 66, the contour lighter
        from .train_latent_f import landmark_term_weights

        render = RenderLoss(face_model, default_camera(pairs.render_size),
                            landmark_weights=landmark_term_weights(0.25).to(device), mesh_cell_cm=config.mesh_cell_cm)
    else:
        render = RenderLoss(face_model, default_camera(F.config.image_size))
    main = distributed.is_main()  # in a process group: rank 0 logs and writes the checkpoint and the log file
    if not main:
        progress, log = False, (lambda message: None)

    out = Path(config.out)
    # Every rank decides alike (rank 0 may write the file while another rank is still looking).
    if distributed.broadcast_object(out.exists() and not fresh):
        state = load_train_state(out, config, device=device)
        log(f"resuming {out} at step {state.step} ({state.elapsed_s / 60:.1f} min trained)")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, 0))
            rignet = RigNet(RigNetConfig.for_generator(
                G, config.component, latent_dim=config.latent_dim, edit_layers=config.edit_layers))
        if not on_cpu:
            rignet.to(device)  # same initial weights on every device
        state = TrainState(rignet, make_optimizer(rignet, config))
    rignet, optimizer = state.rignet, state.optimizer
    if rignet.generator_sha256 not in (None, generator_sha256):
        raise GeneratorMismatchError(
            f"cannot resume {out}: it was trained on the generator with sha256 {rignet.generator_sha256[:12]}..., "
            f"this run's generator has sha256 {generator_sha256[:12]}...; use that generator, another --out, "
            "or --fresh to start over")
    if rignet.generator_sha256 is None or generator_file_sha256 is not None:
        rignet.record_generator(generator_sha256, file_sha256=generator_file_sha256 or rignet.generator_file_sha256)
    if (rignet.config.num_ws, rignet.config.w_dim) != (G.num_ws, G.w_dim):
        raise ValueError(f"{out} rigs a {rignet.config.num_ws}x{rignet.config.w_dim} W+, the generator's is {G.num_ws}x{G.w_dim}")
    rignet.train()
    distributed.assert_same_on_all_ranks("RigNet training states", rignet.state_dict(), optimizer.state_dict(), state.step)
    logfile = log_path(out)
    if main:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        _write_log(logfile, state.history)
    # Data parallel: each rank computes its share of the step's pairs; DDP averages the gradients.
    objective = distributed.data_parallel(SiameseObjective(rignet, G, F, render, weights))
    world_size = distributed.world_size()
    rows = slice(*distributed.shard_range(config.batch))
    local_pairs = rows.stop - rows.start
    if local_pairs < 1:
        raise ValueError(f"{config.batch} pairs per step cannot be split over {world_size} processes: use a larger --batch")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=min(state.step, config.steps), unit="step", dynamic_ncols=True,
                   desc=f"train RigNet ({config.component}) -> {out.name}" + (f" (x{world_size})" if world_size > 1 else ""))
    process_start = started = last_save = time.monotonic()
    completed = False
    # Off the CPU (one process): each step's logged values stay on the device until the next log
    # entry or checkpoint, then are read back in one transfer (no host sync per step). The sums are
    # the same Python float additions in the same order as the per-step read-back of the CPU path.
    deferred: List[Tuple[List[str], torch.Tensor]] = []

    def flush() -> None:
        if deferred:
            rows_back = torch.stack([packed for _, packed in deferred]).tolist()
            for (keys, _), row in zip(deferred, rows_back):
                for k, v in zip(keys, row):
                    state.running[k] = state.running.get(k, 0.0) + v
            deferred.clear()

    try:
        while state.step < config.steps:
            sample_w, sample_v = pairs(state.step, rows if world_size > 1 else None)
            loss, parts = objective(*(getattr(sample, f.name) for sample in (sample_w, sample_v) for f in dataclasses.fields(RigSample)))
            optimizer.zero_grad(set_to_none=True)
            if world_size > 1:
                # Every term is a mean over this rank's pairs; DDP averages over ranks. Weighting by
                # local_pairs * N / batch makes the average the gradient of the mean over all pairs.
                (loss * (local_pairs * world_size / config.batch)).backward()
            else:
                loss.backward()
            optimizer.step()
            state.step += 1

            values = {k: v.detach().mean() for k, v in {"loss": loss, **parts}.items()}
            now = time.monotonic()
            save_due = now - last_save > config.checkpoint_seconds
            stop_due = config.minutes > 0 and now - process_start > 60 * config.minutes
            if world_size > 1:  # means over all pairs for the log; rank 0's clock decides saves and stops
                values, save_due, stop_due = distributed.reduce_step_log(values, local_pairs / config.batch, save_due, stop_due, main)
            if world_size > 1 or not defer_stats(device):  # all-reduced Python floats, or read back now
                for k, v in values.items():
                    state.running[k] = state.running.get(k, 0.0) + float(v)
            else:
                deferred.append((list(values), torch.stack([v.float() for v in values.values()])))
            state.running_count += 1
            if state.step % config.log_every == 0 or state.step == config.steps:
                flush()
                entry = {k: v / state.running_count for k, v in state.running.items()}
                entry.update(step=state.step, elapsed_s=round(state.elapsed_s + now - started, 2))
                state.history.append(entry)
                if main:
                    with open(logfile, "a") as handle:  # live curves; rewritten from the checkpoint on resume
                        handle.write(json.dumps(entry) + "\n")
                state.running, state.running_count = {}, 0
                if bar is not None:
                    bar.set_postfix(loss=f"{entry['loss']:.4g}")
            if bar is not None:
                bar.update(1)
            if save_due:
                flush()
                state.elapsed_s += now - started
                if main:
                    save_checkpoint(state, config, out)
                distributed.barrier()
                started = last_save = time.monotonic()
            if stop_due:
                log(f"stopping after {config.minutes} min at step {state.step}; run the same command to resume")
                break
        completed = True
    finally:
        if bar is not None:
            bar.close()
        flush()
        state.elapsed_s += time.monotonic() - started
        if main:
            save_checkpoint(state, config, out)
            _write_log(logfile, state.history)
        if completed:
            distributed.barrier()
    rignet.eval()
    return state


# ----------------------------------------------------------------------------
# Command line (registered in stylerig_lite/cli.py as `train-rignet`).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--component", required=True, choices=[*COMPONENTS, "illumination"],
                        help="what this RigNet controls ('illumination' is an alias of 'light')")
    parser.add_argument("--out", required=True, help="checkpoint path (overwritten atomically; an existing one is resumed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="starting values (tiny: a seconds-long smoke run)")
    parser.add_argument("--corpus", help="folder of (w, image) pairs (stylerig_lite.corpus); default: sample w = G.mapping(z) on the fly")
    parser.add_argument("--generator", help="'faceworld' (the embedded FaceWorld generator, the default), 'ffhq' (the "
                                            "photoreal MobileStyleGAN) or a StyleGAN2 checkpoint")
    parser.add_argument("--f", dest="f", choices=("latent", "image"),
                        help="latent (default): the paper's F(ŵ) on a --corpus, no generator in the loop; "
                             "image: F(G(ŵ)), the image F on generated images")
    parser.add_argument("--latent-f", dest="latent_f", help="latent-F checkpoint (default: the generator's embedded one)")
    parser.add_argument("--render-size", dest="render_size", type=int,
                        help="--f latent: render size in px (default 64)")
    parser.add_argument("--estimator", help="image-F checkpoint for --f image (default: the embedded F)")
    parser.add_argument("--ablate", action="append", choices=ABLATIONS, help="drop a loss term (repeatable), for the ablation table")
    parser.add_argument("--edit-layers", type=int, metavar="K",
                        help="layer mask: edit only the first K (coarsest) W+ layers; the others keep w (default: all)")
    parser.add_argument("--seed", type=int, help="initialisation and pair seed")
    parser.add_argument("--steps", type=int, help="optimizer steps in total (a resumed run continues to this many)")
    parser.add_argument("--batch", type=int, help="pairs (w, v) per step; both directions are trained")
    parser.add_argument("--optimizer", choices=("adadelta", "adam"), help="adam (default) or adadelta (the paper's, with --lr 0.01)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    parser.add_argument("--w-rec", type=float, help="weight of L_rec (default 1)")
    parser.add_argument("--w-edit", type=float, help="weight of L_edit (default 1)")
    parser.add_argument("--w-consist", type=float, help="weight of L_consist (default 1)")
    parser.add_argument("--truncation-psi", type=float, help="truncation of on-the-fly latents (default 1: none)")
    parser.add_argument("--log-every", type=int, help="steps averaged per log line")
    parser.add_argument("--minutes", type=float, help="stop and checkpoint after this many minutes (resume later)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--fresh", action="store_true", help="start over even if --out exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """The ``train-rignet`` command; under ``torchrun`` every process runs it (see :mod:`stylerig_lite.distributed`)."""
    return distributed.launch_command("train-rignet", getattr(args, "device", "auto"), lambda device: _run(args, device))


def _run(args: argparse.Namespace, device: Optional[torch.device] = None) -> int:
    from .pretrained import WeightsError

    device = torch.device("cpu") if device is None else device
    configure_cuda(device, tf32=getattr(args, "tf32", True))

    overrides = {
        name: getattr(args, name, None)
        for name in (
            "out", "component", "corpus", "generator", "f", "estimator", "latent_f", "render_size", "ablate", "seed",
            "steps", "batch", "optimizer", "lr",
            "edit_layers", "w_rec", "w_edit", "w_consist", "truncation_psi", "log_every", "minutes", "threads",
        )
    }
    try:
        config = get_config(args.preset, **overrides)
        state = train(config, fresh=args.fresh, progress=not args.quiet, device=device)
    except (ValueError, FileNotFoundError, KeyError, WeightsError) as error:  # bad options or inputs: say what, no traceback
        hint = " (on the command line: --generator PATH / --estimator PATH)" if isinstance(error, WeightsError) else ""
        print(f"stylerig-lite train-rignet: error: {error}{hint}", file=sys.stderr)
        return 2
    if state.history and distributed.is_main():
        last = state.history[-1]
        print(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "elapsed_s")))
    return 0
