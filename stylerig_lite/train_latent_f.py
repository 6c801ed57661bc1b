"""Training the latent F, self-supervised: the loop behind ``stylerig-lite train-latent-f``.

Floor: training. The paper trains its F (W+ -> 3DMM parameters, :mod:`stylerig_lite.latent_f`)
without labels, on the corpus of ``(w, I_w)`` pairs: render ``F(w)`` with the differentiable
renderer and compare with ``I_w`` (photometric term on the rendered face mask) and with the
landmarks a detector found on ``I_w`` (sparse-landmark term), plus statistical regularisers
on identity, expression and albedo (as MoFA does)::

    L(w) = w_photo * L_photo(I_w, F(w)) + w_land * L_land(l_w, F(w)) + L_reg(F(w))

    stylerig-lite make-corpus --generator faceworld --out runs/corpus
    stylerig-lite train-latent-f --generator faceworld --corpus runs/corpus --out runs/latent_f_faceworld.pt
    stylerig-lite make-corpus --generator ffhq --out runs/corpus_ffhq           # 256-px images
    stylerig-lite train-latent-f --generator ffhq --corpus runs/corpus_ffhq --out runs/latent_f_ffhq.pt

Data (:func:`training_split`): items whose detector found no face are skipped (counted in the
log, never fitted); the first :attr:`TrainConfig.validation_items` items of the corpus are the
validation split (the loss and NME curves, and any choice made), the rest train.
:mod:`stylerig_lite.evaluate_f` scores on fresh pairs of another seed. Images are rendered and
compared at :attr:`TrainConfig.image_size` (64 px for both: the photoreal corpus's 256-px
images are area-averaged to it; the landmark term is in continuous pixel units, so the points
lose nothing), landmarks scaled with them. The photoreal preset renders a decimated face
(:func:`~stylerig_lite.losses.decimate_face_model`, ``mesh_cell_cm=1``: 2,047 of 9,409 vertices,
landmarks identical, a step 4x cheaper at 64 px); the FaceWorld run used the full face region. Landmark weights: the paper's 66 points (iBUG 60 and 64, which repeat the
mouth corners, get 0) with the 17 contour points at :attr:`TrainConfig.contour_weight`, since
the detector puts them on the view-dependent silhouette while the model's are fixed vertices.

Framing (:func:`fit_framing`): the generator's crop is *fitted*, not assumed. Before training,
the head translation that puts the mean face's projected landmarks on the median detected
landmarks of the training split is found (3 numbers, least squares through the renderer's
projection); it becomes the latent F's starting translation (``param_mean``). On FaceWorld,
rendered with the book's camera, it measures how far dlib's points sit from ICT's vertices;
on the photoreal generator it is FFHQ's crop in our camera.

Warm start (``--warm-start-steps``, FaceWorld only): before the self-supervised steps, F
regresses the image F's estimates stored in the corpus (``params``), normalised by the
output scale. It is documented and measured (chapter 4,
``notebooks/04_face_reconstruction.ipynb``): a start inside the right basin,
not labels (the image F's estimates are not the truth either).

The checkpoint (one path, written atomically every ``save_every`` steps and at the end)
holds the latent F, the config, the optimizer state, the fitted framing, the corpus's
identity (generator sha256, seed, count) and the history; the same command resumes it, and
a corpus of another generator is refused. The batch of a step is a function of
``(seed, step)``, so a resumed run takes the steps an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from . import morphable
from .checks import positive_int
from .config import config_from_preset
from .corpus import CorpusDataset, CorpusError
from .evaluate_f import latent_f_metrics
from .face_render import default_camera, render_face
from .io_utils import GeneratorMismatchError, atomic_torch_save, load_checkpoint_file, module_sha256
from .latent_f import LatentF, LatentFConfig, output_statistics
from .losses import (LOSS_PARTS, DEFAULT_REGULARISATION, RenderLoss, crop_face_model, landmark_weights,
                     parameter_regulariser)
from .params import SLICES
from .seeding import batch_indices, derive_seed

__all__ = [
    "add_arguments",
    "CHECKPOINT_FORMAT",
    "fit_framing",
    "get_config",
    "landmark_term_weights",
    "PRESETS",
    "run_from_args",
    "train",
    "TrainConfig",
    "training_split",
]

CHECKPOINT_FORMAT = "stylerig_lite.train_latent_f/1"
_INIT_STREAM = 21  # derive_seed(seed, 21): the latent F's initial weights (issue 21)
_TRANSLATION = slice(SLICES["pose"].start + 3, SLICES["pose"].stop)


@dataclasses.dataclass
class TrainConfig:
    """Settings of one latent-F run (:data:`PRESETS` holds the book's)."""

    generator: str = "faceworld"  # 'faceworld' or 'ffhq': the preset of the network and the framing
    image_size: int = 64  # render/compare resolution (corpus images are area-averaged to it)
    mesh_cell_cm: Optional[float] = None  # render a decimated face (losses.decimate_face_model); None: full
    hidden: int = 512
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3  # Adam; cosine decay to lr/10 over the steps
    w_photo: float = 1.0
    w_land: float = 100.0  # losses.DEFAULT_W_LAND: a 1-px RMS error at 64 px costs 0.024
    contour_weight: float = 0.25
    reg_identity: float = DEFAULT_REGULARISATION["identity"]
    reg_expression: float = DEFAULT_REGULARISATION["expression"]
    reg_albedo: float = DEFAULT_REGULARISATION["albedo"]
    warm_start_steps: int = 0  # regression to the corpus's image-F estimates first (FaceWorld only)
    validation_items: int = 500  # the corpus's first items: validation, never trained on
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: Dict[str, Dict[str, Any]] = {
    "faceworld": {"generator": "faceworld", "image_size": 64, "steps": 3000, "batch": 32, "warm_start_steps": 300},
    "ffhq": {"generator": "ffhq", "image_size": 64, "mesh_cell_cm": 1.0, "steps": 4000, "batch": 32},
    "tiny": {"hidden": 16, "steps": 4, "batch": 4, "validation_items": 4, "eval_every": 2, "save_every": 2},
}


def get_config(name: str = "faceworld", **overrides: Any) -> TrainConfig:
    """A preset of :data:`PRESETS` with ``overrides`` (None values ignored); unknown names are a ``ValueError``."""
    return config_from_preset(TrainConfig, PRESETS, name, overrides, what="train-latent-f")


def landmark_term_weights(contour_weight: float) -> torch.Tensor:
    """``[68]`` weights of the landmark term: the paper's 66 (60 and 64 get 0), the contour at ``contour_weight``."""
    weights = landmark_weights(jaw=contour_weight)
    weights[[60, 64]] = 0.0
    return weights


def training_split(data: CorpusDataset, validation_items: int) -> Dict[str, Any]:
    """``{'train': LongTensor, 'validation': LongTensor, 'skipped': int}``: row indices with a detected face.

    Validation: rows with corpus index < ``validation_items``; train: the others. Rows without a
    face (``face_found`` False) are in neither and counted in ``skipped``.
    """
    found = data.face_found.bool()
    rows = torch.arange(len(data))
    validation = (data.index < validation_items)
    train_rows = rows[found & ~validation]
    if len(train_rows) == 0:
        raise CorpusError(f"{data.root}: no training items with a detected face ({len(data)} items, "
                          f"{validation_items} for validation); make a larger corpus")
    return {"train": train_rows, "validation": rows[found & validation], "skipped": int((~found).sum())}


def fit_framing(model: Any, landmarks: torch.Tensor, image_size: int, *, steps: int = 300) -> Dict[str, Any]:
    """The head translation (cm) that frames the mean face like ``landmarks`` ``[N, 68, 2]`` (pixels at ``image_size``).

    Least squares between the mean face's projected landmarks (the 66 weighted as in training,
    contour at a quarter) and the per-point median of the detected ones; the angles stay 0.
    Returns ``{'translation_cm': [x, y, z], 'rms_px': residual}``.
    """
    target = landmarks.nanmedian(dim=0).values  # [68, 2]
    weights = landmark_term_weights(0.25)
    cropped = crop_face_model(model, LOSS_PARTS)
    camera = default_camera(image_size)
    mean, _ = output_statistics()
    translation = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([translation], lr=0.5)
    for _ in range(steps):
        params = mean.clone()[None]
        params[0, _TRANSLATION] = translation
        params[0, SLICES["pose"].start : SLICES["pose"].start + 3] = 0.0
        points = render_face(cropped, morphable.FaceParams.from_vector(params), camera, parts=LOSS_PARTS).landmarks[0]
        loss = (((points - target) ** 2).sum(-1) * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"translation_cm": [round(float(t), 4) for t in translation.detach()],
            "rms_px": round(float(loss.detach().sqrt()), 4), "image_size": int(image_size)}


def _lr(config: TrainConfig, step: int) -> float:
    progress = min(step / max(config.steps, 1), 1.0)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _corpus_identity(data: CorpusDataset) -> Dict[str, Any]:
    m = data.manifest
    return {k: m.get(k) for k in ("generator_sha256", "generator_file_sha256", "seed", "count", "image_size",
                                  "landmarks_detector")}


def train(corpus: Union[str, os.PathLike, CorpusDataset], out: Union[str, os.PathLike], config: TrainConfig, *,
          model: Any = None, G: Any = None, minutes: Optional[float] = None, progress: bool = True,
          fresh: bool = False) -> Dict[str, Any]:
    """Train (or resume) a latent F on a corpus; returns the final checkpoint dict (also written to ``out``).

    ``G``: the generator, checked against the corpus's ``generator_sha256`` when given (the CLI passes
    it). ``minutes``: stop and checkpoint after this long (resume by calling again).
    """
    data = corpus if isinstance(corpus, CorpusDataset) else CorpusDataset(corpus)
    identity = _corpus_identity(data)
    if G is not None:
        if module_sha256(G) != identity["generator_sha256"]:
            raise GeneratorMismatchError(f"{data.root} is a corpus of another generator than the one passed "
                                         f"({config.generator!r}); make its corpus with `stylerig-lite make-corpus "
                                         f"--generator {config.generator} --out DIR`")
    if config.warm_start_steps and not bool(torch.isfinite(data.params).all()):
        raise ValueError("warm_start_steps needs the image F's estimates, and this corpus has none (NaN params: "
                         "made without an estimator); use --warm-start-steps 0")
    if model is None:
        model = morphable.load_face_model(progress=False)
    out = Path(out)
    split = training_split(data, config.validation_items)
    state = None if fresh or not out.exists() else load_checkpoint_file(out, "latent-F training checkpoint")
    if state is not None:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{out} is not a latent-F training checkpoint; pass --fresh to start over")
        if state["corpus"]["generator_sha256"] != identity["generator_sha256"]:
            raise GeneratorMismatchError(f"{out} was trained on a corpus of another generator; pass --fresh or "
                                         "another --out")
        saved = {k: v for k, v in state["config"].items() if k != "steps"}
        wanted = {k: v for k, v in config.to_dict().items() if k != "steps"}
        if saved != wanted:
            differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise ValueError(f"{out} was trained with other settings ({', '.join(differ)}); pass the same ones, "
                             "or --fresh to start over")
        net = LatentF.from_checkpoint(state["latent_f"])
        framing = state["framing"]
        history: List[Dict[str, Any]] = state["history"]
        step = int(state["step"])
    else:
        size = data.images.shape[1]
        framing = fit_framing(model, data.detected_landmarks[split["train"]] * (config.image_size / size),
                              config.image_size)
        mean, scale = output_statistics()
        mean[_TRANSLATION] = torch.tensor(framing["translation_cm"])
        torch.manual_seed(derive_seed(config.seed, _INIT_STREAM))
        net = LatentF(LatentFConfig(num_ws=data.w.shape[1], w_dim=data.w.shape[2], hidden=config.hidden),
                      param_mean=mean, param_scale=scale)
        net.set_input_statistics(data.w[split["train"]])
        history, step = [], 0
    net.record_generator(identity["generator_sha256"], file_sha256=identity["generator_file_sha256"])
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    loss_fn = RenderLoss(model, default_camera(config.image_size), w_photo=config.w_photo, w_land=config.w_land,
                         landmark_weights=landmark_term_weights(config.contour_weight), mesh_cell_cm=config.mesh_cell_cm)
    reg = {"identity": config.reg_identity, "expression": config.reg_expression, "albedo": config.reg_albedo}
    started = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=f"latent F ({config.generator})", unit="step")

    def checkpoint() -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "latent_f": net.checkpoint(), "optimizer": optimizer.state_dict(),
                "config": config.to_dict(), "step": step, "framing": framing, "corpus": identity,
                "split": {"train": int(len(split["train"])), "validation": int(len(split["validation"])),
                          "skipped_no_face": split["skipped"]}, "history": history}

    def validate() -> Dict[str, Any]:
        net.eval()
        rows = split["validation"]
        batch = data.render_batch(rows, config.image_size)
        metrics = latent_f_metrics(net, batch["w"], batch["images"], batch["landmarks"],
                                   torch.ones(len(rows), dtype=torch.bool), model=model)
        net.train()
        return {k: metrics[k] for k in ("landmark_nme_median", "landmark_nme_inner_median", "photometric_mae_255")
                if k in metrics}

    try:
        while step < config.steps:
            rows = split["train"][batch_indices(config.seed, step, config.batch, len(split["train"]))]
            batch = data.render_batch(rows, config.image_size)
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, step)
            params = net(batch["w"])
            record: Dict[str, Any] = {"step": step + 1}
            if step < config.warm_start_steps:
                loss = (((params - batch["params"]) / net.param_scale) ** 2).mean()
                record["warm_start"] = round(float(loss), 6)
            else:
                terms = loss_fn(params, batch["images"], batch["landmarks"])
                regulariser = parameter_regulariser(params, reg)
                loss = (terms.total + regulariser).mean()
                record.update({k: round(v, 6) for k, v in terms.as_floats().items()})
                record["regulariser"] = round(float(regulariser.detach().mean()), 6)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % config.eval_every == 0 or step == config.steps:
                record["validation"] = validate()
            history.append(record)
            if bar is not None:
                bar.update(1)
            if step % config.save_every == 0 or step == config.steps:
                atomic_torch_save(checkpoint(), out)
            if minutes is not None and time.time() - started > 60 * minutes:
                break
    finally:
        if bar is not None:
            bar.close()
    final = checkpoint()
    atomic_torch_save(final, out)
    return final


# ----------------------------------------------------------------------------
# Command line (registered in stylerig_lite/cli.py as `train-latent-f`).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", default="faceworld", choices=("faceworld", "ffhq"),
                        help="the generator whose corpus it reads (and the preset; default faceworld)")
    parser.add_argument("--corpus", required=True, help="corpus folder of that generator (stylerig-lite make-corpus)")
    parser.add_argument("--out", required=True, help="checkpoint path (an existing one is resumed)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="starting values (default: the generator's)")
    parser.add_argument("--steps", type=positive_int, help="optimizer steps in total")
    parser.add_argument("--batch", type=positive_int, help="pairs per step")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--warm-start-steps", dest="warm_start_steps", type=int,
                        help="steps regressing the corpus's image-F estimates first (FaceWorld; default 300)")
    parser.add_argument("--seed", type=int, help="initialisation and batch seed")
    parser.add_argument("--minutes", type=float, help="stop and checkpoint after this many minutes (resume later)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--fresh", action="store_true", help="start over even if --out exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    from . import pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = get_config(args.preset or args.generator, steps=args.steps, batch=args.batch, lr=args.lr,
                            warm_start_steps=args.warm_start_steps, seed=args.seed)
        config.generator = args.generator
        G = pretrained.generator_by_name(args.generator)
        result = train(args.corpus, args.out, config, G=G, minutes=args.minutes, progress=not args.quiet,
                       fresh=args.fresh)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"stylerig-lite train-latent-f: error: {error}", file=sys.stderr)
        return 2
    last = next((h["validation"] for h in reversed(result["history"]) if "validation" in h), {})
    print(json.dumps({"out": str(args.out), "step": result["step"], "framing": result["framing"],
                      "validation": last}, indent=2))
    return 0
