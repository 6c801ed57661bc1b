"""How well the latent F explains its generator's images: landmarks, colours and (on FaceWorld) pose.

Floor: evaluation. The latent F (:mod:`stylerig_lite.latent_f`) is trained without labels,
against landmarks a detector found on ``I_w`` and the image's colours; this module scores
it the same way on pairs it never saw, and on FaceWorld, where the image F is calibrated
against ground truth, against that F's reading of the head's yaw::

    stylerig-lite evaluate-f --generator faceworld --json
    stylerig-lite evaluate-f --generator ffhq --json

Metrics (:func:`latent_f_metrics`), over the images where the detector found a face:

* ``landmark_nme_median``: per image, the mean distance between F(w)'s 66 projected
  landmarks (the paper's 66 of the 68 iBUG points) and the detector's, divided by the
  detector's inter-ocular distance (outer eye corners, points 36 and 45, the 300-W
  convention); the median over images. ``landmark_nme_inner_median``: the same without
  the 17 contour points, which a detector puts on the view-dependent silhouette.
* ``photometric_mae_255``: mean absolute colour difference between the rendering of F(w)
  and ``I_w`` on the rendered face mask, in 8-bit units, averaged over images.
* ``yaw_agreement_deg_median`` (FaceWorld only): median |yaw of F(w) - yaw the image F
  reads on I_w|, in degrees; ``image_f_landmark_nme_median``: the image F's landmarks (which
  are within a pixel of the truth on FaceWorld) scored by the same NME against the detector,
  the floor that the disagreement between dlib's annotation and ICT's landmark vertices sets.

Goals (issue 21): NME median <= 0.05 for both generators; yaw agreement <= 2.5 degrees.
Held-out pairs: :data:`EVAL_SEED` draws latents no training corpus of the book uses
(those have seed 0); ``--corpus DIR`` scores the first ``--count`` items of a corpus folder
instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Dict, Optional

import torch

from .checks import positive_int
from .landmarks import SPARSE_66
from .params import SLICES

__all__ = [
    "add_arguments",
    "EVAL_COUNT",
    "EVAL_SEED",
    "GOALS",
    "held_out_pairs",
    "interocular",
    "latent_f_metrics",
    "mixed_latent_agreement",
    "run_from_args",
    "training_log",
]

EVAL_SEED = 30_000  # the held-out pairs' latent seed (the corpora F trains on use seed 0)
EVAL_COUNT = 500
#: Issue 21's goals: the metric and the largest value that meets it.
GOALS = {"landmark_nme_median": 0.05, "yaw_agreement_deg_median": 2.5}
_INNER = [i for i in SPARSE_66 if i >= 17]  # the 66 without the contour
_YAW = SLICES["pose"].start  # yaw is the first pose entry (radians)


def training_log(generator: str) -> Dict[str, Any]:
    """The shipped log of the embedded latent F's training run (``stylerig_lite/data/latent_f_<generator>.json``).

    Written by ``training/export_latent_f.py``: the command, config, fitted framing, split, the validation
    curve, a thinned training-loss curve and the held-out metrics (``notebooks/04_face_reconstruction.ipynb`` plots them in every mode).
    """
    import importlib.resources

    if generator not in ("faceworld", "ffhq"):
        raise KeyError(f"unknown generator {generator!r}; expected 'faceworld' or 'ffhq'")
    path = importlib.resources.files("stylerig_lite") / "data" / f"latent_f_{generator}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no shipped latent-F log for {generator!r} ({path}); it is written by "
                                f"`python training/export_latent_f.py --generator {generator} --run RUN`") from None


def interocular(points: torch.Tensor) -> torch.Tensor:
    """``[B, 68, 2] -> [B]``: distance between the outer eye corners (iBUG points 36 and 45), pixels."""
    return (points[:, 36] - points[:, 45]).norm(dim=-1)


@torch.no_grad()
def held_out_pairs(generator: str = "faceworld", count: int = EVAL_COUNT, *, seed: int = EVAL_SEED,
                   G: Any = None, detector: Any = None, batch: int = 16) -> Dict[str, torch.Tensor]:
    """``count`` fresh pairs of a generator with detected landmarks (nothing written to disk).

    Returns ``{'w' [N, num_ws, w_dim], 'images' [N, 3, S, S] in [0, 1], 'detected_landmarks'
    [N, 68, 2] (NaN where no face), 'face_found' [N] bool}`` at the generator's corpus
    resolution (:data:`~stylerig_lite.corpus.DEFAULT_IMAGE_SIZE`).
    """
    from . import corpus, pretrained

    if G is None:
        G = pretrained.generator_by_name(generator)
    size = corpus.DEFAULT_IMAGE_SIZE.get(generator)
    items = corpus.sample_pairs(G, None, count, seed=seed, batch=batch, image_size=size)
    stored = corpus.to_uint8(items["images"])
    if detector is None:
        from .landmarks import LandmarkDetector

        detector = LandmarkDetector()
    found = corpus.detect_stored(detector, stored)
    return {"w": items["w"], "images": (corpus.from_uint8(stored) + 1) / 2,
            "detected_landmarks": torch.from_numpy(found["detected_landmarks"]),
            "face_found": torch.from_numpy(found["face_found"])}


@torch.no_grad()
def latent_f_metrics(F: Any, ws: torch.Tensor, images: torch.Tensor, detected: torch.Tensor, found: torch.Tensor, *,
                     model: Any = None, image_size: Optional[int] = None, image_f: Any = None,
                     batch: int = 32) -> Dict[str, Any]:
    """Score a latent F on pairs: see the module docstring for the metrics.

    Args:
        F: the latent F (``F(w) -> [B, 196]``).
        ws: ``[N, num_ws, w_dim]``; images: ``[N, 3, S, S]`` in [0, 1]; detected: ``[N, 68, 2]`` pixels of
            those images (NaN rows where no face); found: ``[N]`` bool.
        model: the face model (default: loaded). image_size: render resolution (default S; images and
            landmarks are area-resized to it, which is how F is trained on the photoreal corpus).
        image_f: the image F, for ``yaw_agreement_deg_median`` (FaceWorld); None skips it.
    """
    import torch.nn.functional as nnf

    from . import morphable
    from .face_render import default_camera, render_face
    from .losses import LOSS_PARTS, crop_face_model

    if model is None:
        model = morphable.load_face_model(progress=False)
    size = images.shape[-1]
    image_size = int(image_size or size)
    cropped = crop_face_model(model, LOSS_PARTS)
    camera = default_camera(image_size)
    keep = torch.nonzero(found.bool()).flatten()
    nme, nme_inner, mae, yaw_diff, image_f_nme = [], [], [], [], []
    for i in range(0, len(keep), batch):
        idx = keep[i : i + batch]
        params = F(ws[idx].float())
        target = images[idx].float()
        if image_size != size:
            target = nnf.interpolate(target, size=(image_size, image_size), mode="area")
        points = detected[idx].float() * (image_size / size)
        render = render_face(cropped, morphable.FaceParams.from_vector(params), camera, parts=LOSS_PARTS)
        dist = (render.landmarks - points).norm(dim=-1)  # [b, 68] pixels
        iod = interocular(points).clamp_min(1e-6)
        nme.append(dist[:, SPARSE_66].mean(1) / iod)
        nme_inner.append(dist[:, _INNER].mean(1) / iod)
        mask = render.mask  # [b, 1, S, S]
        err = ((render.image - target).abs() * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)).clamp_min(1))
        mae.append(err * 255)
        if image_f is not None:
            from .corpus import estimate_images

            est, est_landmarks = estimate_images(image_f, images[idx].float() * 2 - 1)
            yaw_diff.append((params[:, _YAW] - est[:, _YAW]).abs() * 180 / math.pi)
            # the image F's own landmarks against the detector's: the same NME for a reader calibrated on the truth
            est_points = est_landmarks * (image_size / image_f.config.image_size)
            image_f_nme.append((est_points - points).norm(dim=-1)[:, SPARSE_66].mean(1) / iod)
    result: Dict[str, Any] = {"pairs": int(len(found)), "faces_found": int(len(keep)), "render_size": image_size}
    if len(keep):
        result["landmark_nme_median"] = round(float(torch.cat(nme).median()), 5)
        result["landmark_nme_inner_median"] = round(float(torch.cat(nme_inner).median()), 5)
        result["photometric_mae_255"] = round(float(torch.cat(mae).mean()), 3)
        if yaw_diff:
            result["yaw_agreement_deg_median"] = round(float(torch.cat(yaw_diff).median()), 3)
            result["image_f_landmark_nme_median"] = round(float(torch.cat(image_f_nme).median()), 5)
    result["goals"] = {k: {"goal": v, "met": bool(result[k] <= v)} for k, v in GOALS.items() if k in result}
    return result


@torch.no_grad()
def mixed_latent_agreement(F: Any, G: Any, image_f: Any, *, count: int = 200, crossover: int = 4,
                           seed: int = EVAL_SEED + 1) -> Dict[str, float]:
    """How far the latent F's yaw drifts on W+ codes unlike its training corpus's (FaceWorld).

    The corpus's W+ rows are all equal; RigNet's edits are not. Here ``count`` pairs of mapped
    latents are style-mixed (rows ``< crossover`` from the first, the rest from the second) and the
    latent F's yaw on the mix is compared with the image F's reading of ``G(mix)``, beside the same
    comparison on the unmixed latents. Returns the two medians (degrees).
    """
    from .corpus import estimate_images, sample_pairs, synthesize

    a = sample_pairs(G, None, count, seed=seed)["w"]
    b = sample_pairs(G, None, count, seed=seed + 1)["w"]
    mixed = b.clone()
    mixed[:, :crossover] = a[:, :crossover]
    result = {}
    for name, ws in (("equal_rows", a), ("mixed_rows", mixed)):
        est, _ = estimate_images(image_f, synthesize(G, ws))
        result[f"yaw_agreement_deg_median_{name}"] = round(
            float(((F(ws)[:, _YAW] - est[:, _YAW]).abs() * 180 / math.pi).median()), 3)
    result.update(count=count, crossover=crossover)
    return result


# ----------------------------------------------------------------------------
# Command line (registered in stylerig_lite/cli.py as `evaluate-f`).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", default="faceworld", choices=("faceworld", "ffhq"),
                        help="whose latent F to score (default faceworld)")
    parser.add_argument("--latent-f", dest="latent_f", help="latent-F checkpoint (default: the embedded one)")
    parser.add_argument("--corpus", help="score the first --count items of this corpus folder instead of fresh "
                                         f"held-out pairs (seed {EVAL_SEED})")
    parser.add_argument("--count", type=positive_int, default=EVAL_COUNT, help=f"pairs (default {EVAL_COUNT})")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run_from_args(args: argparse.Namespace) -> int:
    from . import pretrained
    from .corpus import CorpusDataset
    from .io_utils import module_sha256
    from .latent_f import LatentF

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        F = LatentF.load(args.latent_f) if args.latent_f else pretrained.latent_f(args.generator)
        G = pretrained.generator_by_name(args.generator)
        F.check_generator(G)
        if args.corpus:
            data = CorpusDataset(args.corpus)
            if data.manifest["generator_sha256"] != module_sha256(G):
                raise ValueError(f"{args.corpus} is a corpus of another generator than {args.generator!r}")
            rows = torch.arange(min(args.count, len(data)))
            batch = data.render_batch(rows, int(data.images.shape[1]))
            pairs = {"w": batch["w"], "images": batch["images"], "detected_landmarks": batch["landmarks"],
                     "face_found": data.face_found[rows]}
        else:
            pairs = held_out_pairs(args.generator, args.count, G=G)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        print(f"stylerig-lite evaluate-f: error: {error}", file=sys.stderr)
        return 2
    image_f = pretrained.face_estimator() if args.generator == "faceworld" else None
    render_size = 64 if args.generator == "ffhq" else None  # the size its latent F trained at
    metrics = latent_f_metrics(F, pairs["w"], pairs["images"], pairs["detected_landmarks"], pairs["face_found"],
                               image_f=image_f, image_size=render_size)
    metrics = {"generator": args.generator, "source": args.corpus or f"held-out pairs, seed {EVAL_SEED}", **metrics}
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            print(f"{key:28s} {value}")
    return 0
