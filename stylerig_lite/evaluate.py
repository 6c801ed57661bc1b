"""Control metrics: how well does an editing method set one rig component and keep the rest?

StyleRig edits a latent ``w`` so that the face in ``G(ŵ)`` takes one component
(pose, expression or light) from target parameters and keeps
everything else. This module scores any such method the same way:

1. :class:`EvalSet`: a fixed, seeded set of latent pairs ``(w, v)`` from the
   generator, with F's estimates ``p_w = F(G(w))``, ``p_v = F(G(v))`` and the
   evaluation estimator's ``e_w = E(G(w))``, ``e_v = E(G(v))``.
2. An *editing method* is a callable ``method(w, p_target) -> ŵ`` on W+
   latents ``[B, num_ws, w_dim]`` and parameter vectors ``[B, 196]``. For a
   component ``c``, ``p_target`` is ``p_w`` with ``c`` replaced by ``p_v``'s
   (pose: yaw, pitch, roll; the translation stays ``p_w``'s).
3. Scores come from E, the *other* estimator: the target error
   ``|E(G(ŵ))_c - target_c|`` and the preservation of everything else,
   ``E(G(ŵ))`` against ``E(G(w))`` for the other components, plus the mean
   absolute pixel change of the image outside the face (outside the union of
   the rendered face masks of ``E(G(w))`` and ``E(G(ŵ))``).

Targets come from F (the estimator a method may see, as RigNet is trained
with it). Scores come from the independent judge (:mod:`~stylerig_lite.judge`:
MediaPipe landmarks read by geometry, calibrated on exact FaceWorld labels),
with E (a second F, trained on the same data) as a second opinion, and identity
from dlib's face descriptor (:mod:`~stylerig_lite.identity`). The judge's
*relative* error compares the change it reads with the change asked for, so the
biases of F and of the judge on a given face cancel. The two trivial references
make the scale clear: ``'none'`` (ŵ = w: perfect preservation, the target
error of doing nothing) and ``'donor'`` (ŵ = v, formerly ``'random'``: the
target component is exactly right *as F sees it*, but everything else changes).

The linear baseline (:class:`LinearBaseline`), in the spirit of InterFaceGAN
(Shen et al. 2020), regresses a component from w on a corpus and edits by
moving w along the regressed directions. :func:`generator_quality` measures
the GAN itself: a Fréchet distance to FaceWorld in F's feature space and the
spread of the head pose and jaw opening it generates.

Public API: :data:`COMPONENTS`, :func:`~stylerig_lite.params.rig_slice` (``component_slice``), :func:`target_params`,
:class:`EvalSet`, :func:`evaluate_method`, :func:`evaluate_methods`,
:class:`RenderedFaceMask`, :class:`LinearBaseline`, :data:`METHODS` /
:func:`register_method` / :class:`MethodContext`, :func:`frechet_distance`,
:func:`generator_quality`, :func:`faceworld_images`. Command line:
``stylerig-lite evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .checks import assert_finite, assert_shape, assert_value_range, positive_int
from .corpus import (CorpusDataset, CorpusError, device_of, estimate_images, module_sha256, quick_mode, sample_latents,
                     sample_pairs, sample_z, synthesize)
from .datasets import FaceWorldShards, load_or_render_dataset
from .devices import add_device_argument, configure_cuda, resolve_device
from .io_utils import sha256_file
from .baselines import DEFAULT_RIDGE, LinearBaseline  # noqa: F401  (LinearBaseline re-exported: a method of the table)
from .judge import READINGS, Judge, JudgeError, readings_of_params
from .identity import IdentityError, IdentityMeter
from .reconstruction import EstimatorLike, estimate_all, parameter_errors
from .params import (ANGLE_NAMES, NUM_PARAMS, FaceParams, RIG_COMPONENTS, RIG_SLICES, SLICES, expression_index, rig_component,  # noqa: F401
                     rig_slice, target_params)

__all__ = [
    "VALIDATION_SEED",
    "judge_scores",
    "JUDGE_EDITS",
    "evaluate_estimator",
    "ANGLE_NAMES",  # re-exported
    "DEFAULT_RIDGE",  # re-exported
    "LinearBaseline",  # re-exported
    "target_params",  # re-exported
    "add_arguments",
    "check_component",
    "component_slice",
    "target_distance",
    "worst_edits",
    "COMPONENTS",
    "DEFAULT_COUNT",
    "DEFAULT_FIT_COUNT",
    "DEFAULT_SEED",
    "DEFAULT_SWEEP_COUNT",
    "DEFAULT_SWEEP_YAWS",
    "EditMethod",
    "EvalSet",
    "evaluate_method",
    "evaluate_methods",
    "FACE_MASK_PARTS",
    "faceworld_images",
    "faceworld_oracle",
    "format_table",
    "frechet_distance",
    "gain_sweep",
    "generator_quality",
    "MethodContext",
    "MethodFactory",
    "METHODS",
    "preservation_errors",
    "QUICK_COUNT",
    "QUICK_FIT_COUNT",
    "REFERENCES",
    "register_method",
    "RenderedFaceMask",
    "reported_results",
    "rig_method",
    "photoreal_results",
    "shipped",
    "photoreal_markdown",
    "run_from_args",
    "scaled",
    "SUMMARY_COLUMNS",
    "summary_markdown",
    "TABLE_COLUMNS",
    "target_errors",
    "yaw_sweep",
    "ESTIMATOR_ROWS",
    "estimator_table",
]

#: The rig components a method can edit (the paper's three RigNets).
COMPONENTS: Tuple[str, ...] = RIG_COMPONENTS
_ANGLES = RIG_SLICES["pose"]
_TRANSLATION = slice(SLICES["pose"].start + 3, SLICES["pose"].stop)
_JAW_OPEN = SLICES["expression"].start + expression_index("jawOpen")

DEFAULT_SEED = 2020  # the evaluation pairs; their own seed stream, so never corpus items
#: The validation pairs: choices (layer masks, step counts, gains) are made on these, never on DEFAULT_SEED's.
VALIDATION_SEED = 2021
DEFAULT_COUNT = 500
QUICK_COUNT = 64
DEFAULT_FIT_COUNT = 5000  # latents for the linear baseline when no --corpus is given
QUICK_FIT_COUNT = 256

EditMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: The trivial references, recognised by name wherever a method is expected.
REFERENCES: Tuple[str, ...] = ("none", "donor")
#: Older names of the references ("random" was the donor: ŵ = v, the other face of the pair).
REFERENCE_ALIASES: Dict[str, str] = {"random": "donor"}


component_slice = rig_slice  # the entries of the 196-vector an edit of a component sets


def check_component(component: str) -> str:
    """The canonical rig component for ``component`` (``"illumination"`` -> ``"light"``), else ``ValueError``."""
    return rig_component(component)


# ----------------------------------------------------------------------------
# Errors between parameter sets, in each component's units.


def _abs_deg(a: torch.Tensor, b: torch.Tensor, i: int) -> torch.Tensor:
    return torch.rad2deg((a[:, _ANGLES.start + i] - b[:, _ANGLES.start + i]).abs()).double()  # [N]


def _rmse(a: torch.Tensor, b: torch.Tensor, index: slice) -> float:
    return float((a[:, index] - b[:, index]).double().pow(2).mean().sqrt())


def _mae(a: torch.Tensor, b: torch.Tensor, index: Union[slice, int]) -> float:
    return float((a[:, index] - b[:, index]).double().abs().mean())


def _angle_errors(a: torch.Tensor, b: torch.Tensor, medians: bool) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for i, name in enumerate(ANGLE_NAMES):
        error = _abs_deg(a, b, i)
        out[f"{name}_deg"] = float(error.mean())
        if medians:
            out[f"{name}_deg_median"] = float(error.median())
    return out


def target_errors(estimated: torch.Tensor, target: torch.Tensor, component: str) -> Dict[str, float]:
    """How far ``estimated`` is from ``target`` in the edited component (``[N, 196]`` each).

    pose: mean absolute yaw/pitch/roll error in degrees (``yaw_deg``, ...) and
    their medians (``yaw_deg_median``, ...); expression: mean absolute error of
    jawOpen (``jaw_open_mae``: the one weight F and E can read at 64 px; the other
    52 have a held-out R² below zero, so their error is not reported); light: RMSE
    over the 27 SH coefficients (``light_rmse``).
    """
    assert_shape(estimated, [None, NUM_PARAMS], "estimated parameters")
    assert_shape(target, [estimated.shape[0], NUM_PARAMS], "target parameters")
    component = check_component(component)
    if component == "pose":
        return _angle_errors(estimated, target, medians=True)
    if component == "expression":
        return {"jaw_open_mae": _mae(estimated, target, _JAW_OPEN)}
    return {"light_rmse": _rmse(estimated, target, SLICES["light"])}


def preservation_errors(edited: torch.Tensor, original: torch.Tensor, component: str) -> Dict[str, float]:
    """How much the components an edit of ``component`` must keep changed (``[N, 196]`` each).

    Always albedo RMSE (units of standard deviation) and the translation
    (``translation_cm``, mean absolute, cm); plus every other rig component in the
    units of :func:`target_errors` (degrees for the angles). Not the identity
    coefficients nor the 52 non-jaw expression weights: F and E cannot read them
    at 64 px (held-out R² 0.002 and below 0), so a change there would be noise.
    Identity is measured on the images instead (``identity_distance``, dlib's face
    descriptor, :mod:`~stylerig_lite.identity`).
    """
    assert_shape(edited, [None, NUM_PARAMS], "edited parameters")
    assert_shape(original, [edited.shape[0], NUM_PARAMS], "original parameters")
    component = check_component(component)
    out = {
        "albedo_rmse": _rmse(edited, original, SLICES["albedo"]),
        "translation_cm": _mae(edited, original, _TRANSLATION),
    }
    if component != "pose":
        out.update(_angle_errors(edited, original, medians=False))
    if component != "expression":
        out["jaw_open_mae"] = _mae(edited, original, _JAW_OPEN)
    if component != "light":
        out["light_rmse"] = _rmse(edited, original, SLICES["light"])
    return out


# ----------------------------------------------------------------------------
# The judge's scores (independent of F and E; see stylerig_lite.judge).

#: The judge readings each component's edit sets; the others are what it must keep.
JUDGE_EDITS: Dict[str, Tuple[str, ...]] = {"pose": ("yaw", "pitch", "roll"), "expression": ("jaw_open",),
                                           "light": ("light_x", "light_y")}


def _nanmedian(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.median()) if x.numel() else math.nan


def judge_scores(read_hat: Dict[str, torch.Tensor], read_w: Dict[str, torch.Tensor], target: torch.Tensor,
                 p_w: torch.Tensor, component: str) -> Dict[str, Any]:
    """What the judge reads of an edit, against what was asked (all ``[N]`` per reading).

    ``read_hat`` / ``read_w``: the judge on ``G(ŵ)`` and ``G(w)``; ``target`` / ``p_w``: the
    parameters asked for and F's reading of the source (``[N, 196]``). Returns, for the
    readings the component edits: ``target_error`` (median |judge(G(ŵ)) - target|),
    ``relative_error`` (median |judge change - asked change|: per-face biases of F and the
    judge cancel) and ``gain`` (least-squares slope of the judge's change on the asked one:
    1 is a full edit, 0 none); for the other readings, ``preservation`` (median |change|);
    and ``detected``, the fraction of edited images where the judge found a face.
    """
    component = check_component(component)
    asked, source = readings_of_params(target), readings_of_params(p_w)
    out: Dict[str, Any] = {"target_error": {}, "relative_error": {}, "gain": {}, "preservation": {}}
    for name in READINGS:
        change = read_hat[name] - read_w[name]
        if name in JUDGE_EDITS[component]:
            wanted = asked[name] - source[name]
            out["target_error"][f"{name}_median"] = _nanmedian((read_hat[name] - asked[name]).abs())
            out["relative_error"][f"{name}_median"] = _nanmedian((change - wanted).abs())
            ok = ~torch.isnan(change)
            denominator = float(wanted[ok].pow(2).sum())
            out["gain"][name] = float((change[ok] * wanted[ok]).sum()) / denominator if denominator > 0 else math.nan
        else:
            out["preservation"][f"{name}_change_median"] = _nanmedian(change.abs())
    out["detected"] = float((~torch.isnan(read_hat["yaw"])).double().mean())
    return out


# ----------------------------------------------------------------------------
# Face masks (what "outside the face" means).

#: The parts whose pixels count as "the face": the skin of the face and what shows through it.
#: The scalp, ears and neck (``head_neck``) count as outside, like hair and background.
FACE_MASK_PARTS: Tuple[str, ...] = ("face", "mouth_interior", "teeth", "eyes", "eyelashes")


class RenderedFaceMask:
    """``params [B, 196] -> [B, 1, H, W]`` bool: where the 3DMM face of ``params`` covers the image.

    Renders the whole head with :func:`~stylerig_lite.face_render.render_face`
    (so the head hides what it should) with the book's camera (FaceWorld's)
    and keeps the pixels of :data:`FACE_MASK_PARTS`. The face model is loaded
    on first use.
    """

    def __init__(self, image_size: int = 64, parts: Sequence[str] = FACE_MASK_PARTS, model: Any = None,
                 device: Any = None):
        self.image_size = int(image_size)
        self.parts = tuple(parts)
        self.model = model
        self.device = device  # where a face model loaded here renders (default: the CPU)

    @torch.no_grad()
    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        from .face_render import default_camera, render_face
        from .morphable import load_face_model

        assert_shape(params, [None, NUM_PARAMS], "params")
        if self.model is None:
            self.model = load_face_model(progress=False, device=self.device)
        device = self.model.neutral.device
        out = render_face(self.model, params.to(device), default_camera(self.image_size))
        return out.part_mask(list(self.parts)).cpu() > 0


# ----------------------------------------------------------------------------
# The evaluation set.


def _batches(count: int, batch: int):
    for start in range(0, count, batch):
        yield slice(start, min(start + batch, count))


def _default_scorers(judge: Any, identity: Any) -> Tuple[Any, Any]:
    """Build the judge and the identity meter for ``'default'`` (None, with a warning, when not installed)."""
    import warnings

    def build(given: Any, make: Callable[[], Any], missing: type, what: str) -> Any:
        if not isinstance(given, str):
            return given
        try:
            return make()
        except missing as error:
            warnings.warn(f"evaluating without {what}: {error}")
            return None

    return (build(judge, Judge, JudgeError, "the judge"),
            build(identity, IdentityMeter, IdentityError, "identity distances"))


def _cat_readings(parts: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Judge readings of consecutive batches, joined: ``{name: [N]}``."""
    return {name: torch.cat([p[name] for p in parts]) for name in READINGS}


def _judge_read(judge: Any, images: torch.Tensor, batch: int) -> Dict[str, torch.Tensor]:
    """The judge's readings of generator images ``[N, 3, H, W]`` in [-1, 1], batch by batch."""
    return _cat_readings([judge.read(images[index], value_range=(-1.0, 1.0)) for index in _batches(len(images), batch)])


@dataclasses.dataclass
class EvalSet:
    """A fixed set of latent pairs ``(w, v)`` and what F and E see in them.

    Build one with :meth:`build`; score a method with :meth:`score` (or
    :func:`evaluate_method`). Fields (N pairs):

    - ``w``, ``v``: W+ latents ``[N, num_ws, w_dim]`` (mapping outputs of seeded z)
    - ``p_w``, ``p_v``: F's estimates ``[N, 196]`` (targets are made of these)
    - ``e_w``, ``e_v``: E's estimates ``[N, 196]`` (scores are measured with E)
    - ``images_w``: ``G(w)`` ``[N, 3, H, W]`` in [-1, 1] (constant noise)
    - ``mask_w``: face mask of ``e_w`` ``[N, 1, H, W]`` bool, or None without a mask function
    - ``G``, ``F``, ``E``, ``face_mask``: the networks and mask function used
    """

    w: torch.Tensor
    v: torch.Tensor
    p_w: torch.Tensor
    p_v: torch.Tensor
    e_w: torch.Tensor
    e_v: torch.Tensor
    images_w: torch.Tensor
    mask_w: Optional[torch.Tensor]
    seed: int
    truncation: float
    G: Any = dataclasses.field(repr=False, default=None)
    F: Any = dataclasses.field(repr=False, default=None)
    E: Any = dataclasses.field(repr=False, default=None)
    face_mask: Optional[Callable[[torch.Tensor], torch.Tensor]] = dataclasses.field(repr=False, default=None)
    batch: int = 64
    judge: Any = dataclasses.field(repr=False, default=None)
    identity: Any = dataclasses.field(repr=False, default=None)
    j_w: Optional[Dict[str, torch.Tensor]] = dataclasses.field(repr=False, default=None)  # the judge on G(w)
    id_w: Optional[torch.Tensor] = dataclasses.field(repr=False, default=None)  # dlib descriptors of G(w) [N, 128]
    image_size: Optional[int] = None  # the resolution G is drawn at (None: its own)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        G: Any,
        F: Any,
        E: Any,
        count: int = DEFAULT_COUNT,
        seed: int = DEFAULT_SEED,
        *,
        truncation: float = 1.0,
        batch: int = 64,
        face_mask: Union[str, None, Callable[[torch.Tensor], torch.Tensor]] = "render",
        judge: Any = "default",
        identity: Any = "default",
        image_size: Optional[int] = None,
    ) -> "EvalSet":
        """Sample ``count`` pairs with ``seed`` and run G, F and E on them.

        The photoreal generator: ``F`` its latent F (targets ``F(w)``, :mod:`~stylerig_lite.latent_f`),
        ``E`` None (no second estimator exists for photographs: the judge and the identity meter score,
        and the face mask comes from F's reading), ``image_size`` 256 (what its editor shows).

        ``G``: a generator (``mapping``/``synthesis`` API of
        :mod:`stylerig_lite.stylegan2`); ``F``, ``E``: estimators with
        ``estimate(images, value_range=(-1, 1))``. ``face_mask``: ``'render'``
        (:class:`RenderedFaceMask` at G's resolution), any callable
        ``params [B, 196] -> [B, 1, H, W]``, or None to skip the outside-face
        pixel metric. ``judge`` (:class:`~stylerig_lite.judge.Judge`) and ``identity``
        (:class:`~stylerig_lite.identity.IdentityMeter`): ``'default'`` builds them (skipped
        with a warning when MediaPipe or dlib is missing), None leaves their scores out.
        ``w`` and ``v`` use their own seed streams
        (:func:`~stylerig_lite.corpus.latent_seed`), so no corpus item reappears here.
        """
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        if not 0.0 <= float(truncation) <= 1.0:
            raise ValueError(f"truncation psi must be in [0, 1], got {truncation}")
        for net in (G, F, E):
            if isinstance(net, torch.nn.Module):
                net.eval()
        if getattr(F, "reads_latents", False):
            F.check_generator(G)  # a latent F reads one generator's W+
        size = int(image_size or getattr(G, "img_resolution", 64))
        if isinstance(face_mask, str):
            if face_mask != "render":
                raise ValueError(f"face_mask must be 'render', a callable or None, got {face_mask!r}")
            face_mask = RenderedFaceMask(size, device=device_of(G))  # renders beside G
        device = device_of(G)
        out: Dict[str, List[torch.Tensor]] = {k: [] for k in ("w", "v", "p_w", "p_v", "e_w", "e_v", "images_w", "mask_w")}
        for name in ("w", "v"):
            z = sample_z(G.z_dim, seed, 0, count, stream=f"eval-{name}")
            for index in _batches(count, batch):
                ws = G.mapping(z[index].to(device), None, truncation_psi=truncation)
                images = synthesize(G, ws, image_size=size)
                p = _f_estimates(F, ws, images)
                e = p if E is None else estimate_images(E, images)[0]
                out[name].append(ws.float().cpu())
                out[f"p_{name}"].append(p)
                out[f"e_{name}"].append(e)
                if name == "w":
                    out["images_w"].append(images.float().cpu())
                    if face_mask is not None:
                        out["mask_w"].append(_check_mask(face_mask(e), images))
        data = {k: torch.cat(v) if v else None for k, v in out.items()}
        judge, identity = _default_scorers(judge, identity)
        j_w = _judge_read(judge, data["images_w"], batch) if judge is not None else None
        id_w = identity.descriptors(data["images_w"]) if identity is not None else None
        return cls(**data, seed=int(seed), truncation=float(truncation), G=G, F=F, E=E, face_mask=face_mask, batch=batch,
                   judge=judge, identity=identity, j_w=j_w, id_w=id_w, image_size=size)

    def __len__(self) -> int:
        return self.w.shape[0]

    def target(self, component: str) -> torch.Tensor:
        """``p_w`` with ``component`` from ``p_v``: the targets ``[N, 196]`` a method is given."""
        return target_params(self.p_w, self.p_v, component)

    def score(self, method: Union[str, EditMethod], component: str) -> Dict[str, Any]:
        """:func:`evaluate_method` on this set."""
        return evaluate_method(method, self, component)


def _f_estimates(F: Any, ws: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``[B, 196]``: a latent F's reading of ``ws`` (``reads_latents``), else an image F's of ``images``."""
    if getattr(F, "reads_latents", False):
        return F(ws.float().to(device_of(F))).float().cpu()
    return estimate_images(F, images)[0]


def _check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    assert_shape(mask, [images.shape[0], 1, images.shape[2], images.shape[3]], "face mask")
    return mask.cpu().bool()


@torch.no_grad()
def evaluate_method(method: Union[str, EditMethod], evalset: EvalSet, component: str) -> Dict[str, Any]:
    """Score ``method`` on ``evalset`` for ``component``.

    ``method``: a callable ``(w [B, num_ws, w_dim], p_target [B, 196]) -> ŵ``
    or a reference name, ``'none'`` (ŵ = w) or ``'donor'`` (ŵ = v; ``'random'`` is its old name).
    Returns ``{'target_error': {...}, 'preservation': {...}, 'judge': {...}, 'count': N}``:
    ``target_error`` and ``preservation`` are E's readings (:func:`target_errors`,
    :func:`preservation_errors`), a second opinion; ``judge`` is the independent judge's
    (:func:`judge_scores`; absent without a judge), which the book's claims rest on.
    preservation also holds ``outside_face_mae_255``, the mean absolute change
    of ``G(ŵ)`` against ``G(w)`` over the pixels outside both face masks, in
    0..255 levels (absent when the set has no mask function), and
    ``identity_distance``, the median dlib descriptor distance between ``G(ŵ)`` and
    ``G(w)`` (same person below 0.6; absent without an identity meter).
    """
    component = check_component(component)
    if isinstance(method, str):
        method = REFERENCE_ALIASES.get(method, method)
    if isinstance(method, str) and method not in REFERENCES:
        raise ValueError(f"unknown reference method {method!r}; expected one of {list(REFERENCES)} or a callable")
    if not isinstance(method, str) and not callable(method):
        raise TypeError(f"method must be a callable (w, p_target) -> w_hat or one of {list(REFERENCES)}, got {type(method).__name__}")
    G, E = evalset.G, evalset.E
    target = evalset.target(component)
    estimates, changed, outside = [], 0.0, 0.0
    judged: List[Dict[str, torch.Tensor]] = []
    identity: List[torch.Tensor] = []
    for index in _batches(len(evalset), evalset.batch):
        w = evalset.w[index]
        if method == "none":
            w_hat = w
        elif method == "donor":
            w_hat = evalset.v[index]
        else:
            w_hat = method(w.clone(), target[index].clone())
            name = getattr(method, "__name__", type(method).__name__)
            if not isinstance(w_hat, torch.Tensor):
                raise TypeError(f"method {name} returned {type(w_hat).__name__}; expected a tensor [B, num_ws, w_dim]")
            assert_shape(w_hat, list(w.shape), f"latents returned by method {name}")
            assert_finite(w_hat, f"latents returned by method {name}")
        images = synthesize(G, w_hat.to(w.dtype), image_size=evalset.image_size)
        # Without E (the photoreal generator) F's reading of the edit only places the face mask.
        e_hat = _f_estimates(evalset.F, w_hat, images) if E is None else estimate_images(E, images)[0]
        estimates.append(e_hat)
        if evalset.judge is not None and evalset.j_w is not None:
            judged.append(evalset.judge.read(images, value_range=(-1.0, 1.0)))
        if evalset.identity is not None and evalset.id_w is not None:
            identity.append((evalset.identity.descriptors(images) - evalset.id_w[index]).norm(dim=1))
        if evalset.face_mask is not None and evalset.mask_w is not None:
            c, n = _outside_face_change(images, evalset.images_w[index], evalset.mask_w[index],
                                        _check_mask(evalset.face_mask(e_hat), images))
            changed, outside = changed + c, outside + n
    e_hat = torch.cat(estimates)
    preservation = preservation_errors(e_hat, evalset.e_w, component) if E is not None else {}
    if evalset.face_mask is not None and evalset.mask_w is not None:
        # [-1, 1] image units -> 0..255 levels: x 127.5.
        preservation["outside_face_mae_255"] = 127.5 * changed / outside if outside else math.nan
    result = {"preservation": preservation, "count": len(evalset)}
    if E is not None:  # E's readings: a second opinion beside the judge (FaceWorld only)
        result = {"target_error": target_errors(e_hat, target, component), **result}
    if identity:
        preservation["identity_distance"] = _nanmedian(torch.cat(identity))
    if judged:
        result["judge"] = judge_scores(_cat_readings(judged), evalset.j_w, target, evalset.p_w, component)
    return result


DEFAULT_SWEEP_YAWS: Tuple[int, ...] = (-30, -20, -10, 0, 10, 20, 30)
DEFAULT_SWEEP_COUNT = 64


@torch.no_grad()
def yaw_sweep(method: Union[str, EditMethod], evalset: EvalSet, yaws_deg: Sequence[float] = DEFAULT_SWEEP_YAWS,
              count: Optional[int] = DEFAULT_SWEEP_COUNT) -> Dict[str, Any]:
    """Ask for fixed yaws (degrees) on the first ``count`` faces of ``evalset``; the judge reads what came out.

    The pose target of face ``i`` and yaw ``y`` is its own ``p_w`` with the yaw set to ``y``
    (pitch and roll kept), so this measures control over a fixed range (FaceWorld's ±30°) rather
    than toward the poses the generator happens to draw for ``v``. ``method``: as for
    :func:`evaluate_method` (``'none'`` shows the spread of the unedited faces).

    Returns ``{'yaws_deg': [...], 'median_abs_error_deg': [...] (per target yaw),
    'median_reached_deg': [...] (the median yaw read per target), 'median_deg': overall median
    |error|, 'count': faces, 'reader': 'judge' or 'E'}``: the judge reads when the set has one,
    else E.
    """
    if isinstance(method, str) and method != "none":
        raise ValueError(f"yaw_sweep takes a callable (w, p_target) -> w_hat or 'none', got {method!r}")
    n = len(evalset) if count is None else min(int(count), len(evalset))
    if n < 1 or not len(yaws_deg):
        raise ValueError(f"need at least one face and one yaw (got {n} faces, yaws {list(yaws_deg)})")
    w_all = evalset.w[:n]
    errors, reached = [], []
    for yaw in yaws_deg:
        target = evalset.p_w[:n].clone()
        target[:, _ANGLES.start] = math.radians(float(yaw))
        read = []
        for index in _batches(n, evalset.batch):
            w_hat = w_all[index] if method == "none" else method(w_all[index].clone(), target[index].clone())
            assert_shape(w_hat, list(w_all[index].shape), "latents returned by the method")
            images = synthesize(evalset.G, w_hat.to(w_all.dtype), image_size=evalset.image_size)
            if evalset.judge is not None:
                read.append(evalset.judge.read(images, value_range=(-1.0, 1.0))["yaw"])
            else:
                read.append(torch.rad2deg(estimate_images(evalset.E, images)[0][:, _ANGLES.start]).double())
        yaw_read = torch.cat(read)
        errors.append((yaw_read - float(yaw)).abs())
        reached.append(_nanmedian(yaw_read))
    return {"yaws_deg": [float(y) for y in yaws_deg], "median_abs_error_deg": [_nanmedian(e) for e in errors],
            "median_reached_deg": reached, "median_deg": _nanmedian(torch.cat(errors)), "count": n,
            "reader": "judge" if evalset.judge is not None else "E"}


def _outside_face_change(images: torch.Tensor, images_w: torch.Tensor, mask_hat: torch.Tensor,
                         mask_w: torch.Tensor) -> Tuple[float, float]:
    """(sum of |edited - original| over colour-averaged pixels outside both face masks, their count).

    Images in [-1, 1] ``[B, 3, H, W]``, masks bool ``[B, 1, H, W]``."""
    keep = ~(mask_w | mask_hat)  # [B, 1, H, W]
    diff = (images.cpu().float() - images_w.cpu().float()).abs().mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return float((diff * keep).double().sum()), float(keep.double().sum())


@torch.no_grad()
def faceworld_oracle(E: Any, component: str, count: int = 128, seed: int = DEFAULT_SEED, *, world: Any = None,
                     batch: int = 64, face_mask: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                     judge: Any = None, identity: Any = None) -> Dict[str, Any]:
    """What a *perfect* edit scores: FaceWorld scenes re-rendered with one component swapped.

    For ``count`` FaceWorld portraits (scene and parameters ``p_w``) and as many donors ``p_v``, the
    same scene is rendered again with ``component`` taken from ``p_v``: hair, clothes, background,
    identity and the other components stay exactly as they were. E reads both images; the result has
    the keys of :func:`evaluate_method` (targets: the exact ``p_w``/``p_v`` splice). Its target error
    is E's own error; its preservation numbers are the floor that any edit of this component pays
    in these metrics (a head that turns moves its hair; E's reading of the light drifts with the pose).
    ``world``: anything with ``sample(n, generator=)`` and ``render(params, scene)`` returning
    batches with ``params``, ``scene`` and ``images_pm1()`` (default: :class:`~stylerig_lite.world.FaceWorld`);
    ``face_mask``: as for :meth:`EvalSet.build` (default: :class:`RenderedFaceMask`). With a
    ``judge`` / ``identity`` meter the result also has their scores (the judge's floor on a perfect
    edit, with exact targets and sources).
    """
    component = check_component(component)
    if world is None:
        from .world import FaceWorld

        world = FaceWorld()
    mask_of = face_mask or RenderedFaceMask(world.config.image_size)
    g_w = torch.Generator().manual_seed(int(seed))
    g_v = torch.Generator().manual_seed(int(seed) + 1)
    e_hat, e_w, targets, sources, changed, outside = [], [], [], [], 0.0, 0.0
    judged_hat: List[Dict[str, torch.Tensor]] = []
    judged_w: List[Dict[str, torch.Tensor]] = []
    identity_distances: List[torch.Tensor] = []
    for index in _batches(count, batch):
        n = index.stop - index.start
        original = world.sample(n, generator=g_w)
        donor = world.sample(n, generator=g_v)
        target = target_params(original.params.to_vector(), donor.params.to_vector(), component)
        edited = world.render(type(original.params).from_vector(target), original.scene)
        images_w, images_hat = original.images_pm1(), edited.images_pm1()
        ew, _ = estimate_images(E, images_w)
        eh, _ = estimate_images(E, images_hat)
        c, k = _outside_face_change(images_hat, images_w, mask_of(eh), mask_of(ew))
        changed, outside = changed + c, outside + k
        e_hat.append(eh)
        e_w.append(ew)
        targets.append(target.cpu())
        sources.append(original.params.to_vector().cpu())
        if judge is not None:
            judged_hat.append(judge.read(images_hat.cpu(), value_range=(-1.0, 1.0)))
            judged_w.append(judge.read(images_w.cpu(), value_range=(-1.0, 1.0)))
        if identity is not None:
            identity_distances.append(identity.distance(images_hat.cpu(), images_w.cpu()))
    e_hat_all, e_w_all = torch.cat(e_hat), torch.cat(e_w)
    preservation = preservation_errors(e_hat_all, e_w_all, component)
    preservation["outside_face_mae_255"] = 127.5 * changed / outside if outside else math.nan
    result = {"target_error": target_errors(e_hat_all, torch.cat(targets), component), "preservation": preservation,
              "count": int(count)}
    if identity_distances:
        preservation["identity_distance"] = _nanmedian(torch.cat(identity_distances))
    if judged_hat:
        result["judge"] = judge_scores(_cat_readings(judged_hat), _cat_readings(judged_w), torch.cat(targets),
                                       torch.cat(sources), component)
    return result


def evaluate_methods(methods: Dict[str, Union[str, EditMethod]], evalset: EvalSet,
                     components: Sequence[str] = COMPONENTS) -> Dict[str, Dict[str, Any]]:
    """``{method name: {component: evaluate_method(...)}}`` for several methods (one method per
    name for every component; use :func:`evaluate_method` when a method is per component)."""
    return {name: {c: evaluate_method(m, evalset, c) for c in components} for name, m in methods.items()}


def scaled(method: EditMethod, gain: float) -> EditMethod:
    """``ŵ = w + gain · (method(w, p) − w)``: the same edit, shortened (gain < 1) or lengthened (gain > 1).

    Comparing methods "at equal preservation" needs one knob that trades target error for collateral
    change; the step length along a method's own edit is the knob every method has.
    """
    if not callable(method):
        raise TypeError(f"scaled() takes a callable (w, p_target) -> w_hat, got {type(method).__name__}")
    gain = float(gain)
    if not math.isfinite(gain):
        raise ValueError(f"gain must be a finite number, got {gain}")

    def scaled_method(w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        return w + gain * (method(w.clone(), p_target) - w)

    scaled_method.__name__ = f"{getattr(method, '__name__', type(method).__name__)} x{gain:g}"
    return scaled_method


def gain_sweep(method: EditMethod, evalset: EvalSet, component: str, gains: Sequence[float]) -> Dict[float, Dict[str, Any]]:
    """``{gain: evaluate_method(scaled(method, gain), ...)}``: the method's trade-off curve between
    target error and preservation. Gain 0 is ``'none'``; gain 1 is the method itself."""
    if not len(gains):
        raise ValueError("gain_sweep needs at least one gain")
    return {float(k): evaluate_method(scaled(method, k), evalset, component) for k in gains}


def target_distance(estimated: torch.Tensor, target: torch.Tensor, component: str) -> torch.Tensor:
    """Per-pair distance from ``target`` in the edited component, ``[N]`` (``[N, 196]`` each).

    pose: mean absolute yaw, pitch and roll error in degrees; expression: mean absolute error of
    the 53 blendshape weights; light: RMSE of the 27 SH coefficients.
    """
    assert_shape(estimated, [None, NUM_PARAMS], "estimated parameters")
    assert_shape(target, [estimated.shape[0], NUM_PARAMS], "target parameters")
    component = check_component(component)
    diff = estimated[:, component_slice(component)] - target[:, component_slice(component)]
    if component == "pose":
        return torch.rad2deg(diff.abs()).mean(1)
    if component == "expression":
        return diff.abs().mean(1)
    return diff.pow(2).mean(1).sqrt()


@torch.no_grad()
def worst_edits(method: EditMethod, evalset: EvalSet, component: str, count: int = 4) -> Dict[str, Any]:
    """The ``count`` pairs of ``evalset`` whose edit ended farthest from its target, as E reads it.

    Every pair is edited toward :meth:`EvalSet.target` by ``method(w, p_target) -> ŵ``, the edits
    are drawn with ``evalset.G`` and read with ``evalset.E``; the distance is
    :func:`target_distance`. Returns, for the worst pairs, worst first: ``index [count]`` (into the
    set), ``error [count]``, images ``source`` (``G(w)``), ``donor`` (``G(v)``) and ``edited``
    (``G(ŵ)``), each ``[count, 3, H, W]`` in [-1, 1], the parameters ``target`` and ``estimated``
    (E's reading of the edit), ``[count, 196]`` each, and ``component``.
    """
    component = check_component(component)
    if int(count) < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    count = min(int(count), len(evalset))
    G, E, target = evalset.G, evalset.E, evalset.target(component)
    edited = torch.cat([synthesize(G, method(w.clone(), t))
                        for w, t in zip(evalset.w.split(evalset.batch), target.split(evalset.batch))])
    estimated, _ = estimate_images(E, edited)
    error = target_distance(estimated, target, component)
    worst = error.argsort(descending=True)[:count]
    return {"component": component, "index": worst, "error": error[worst],
            "source": synthesize(G, evalset.w[worst]), "donor": synthesize(G, evalset.v[worst]),
            "edited": edited[worst], "target": target[worst], "estimated": estimated[worst]}


# ----------------------------------------------------------------------------
# F (or E) against exact FaceWorld labels.


@torch.no_grad()
def evaluate_estimator(
    estimator: EstimatorLike,
    world: Any,
    count: int = 512,
    seed: int = 10_000,
    *,
    batch_size: int = 64,
    photometric: bool = True,
    cache_dir: Union[str, os.PathLike, None, bool] = None,
    dataset: Any = None,
) -> Dict[str, float]:
    """Score an estimator on a fixed held-out FaceWorld set (``count`` images of ``seed``).

    Returns a flat dict: yaw/pitch/roll absolute error in degrees (median and
    mean), translation (cm), expression mean absolute weight error, light RMSE
    over the 27 SH coefficients, identity and albedo RMSE (units of std dev),
    landmark error in pixels (mean over all points; median over images), and
    the photometric error of re-rendering the estimate with the true scene
    context against the image on its face mask (mean absolute, 0..255 levels).
    ``*_mean_predictor`` entries give the same errors for a constant guess of
    the distribution mean, as a chance level.

    ``dataset``: a :class:`~stylerig_lite.datasets.FaceDataset` to use instead
    of rendering (it must be the ``(count, seed)`` set of this world); else the
    set comes from :func:`~stylerig_lite.datasets.load_or_render_dataset` with
    ``cache_dir`` (``None`` = the default cache, ``False`` = render in memory).
    """
    if dataset is None:
        dataset = load_or_render_dataset(world, count, seed, cache_dir=cache_dir, progress=False)
    images = dataset.float_images()  # [N, 3, H, W]
    params, landmarks = estimate_all(estimator, images, batch_size=batch_size)
    metrics = parameter_errors(params, dataset.params)
    distance = (landmarks - dataset.landmarks).norm(dim=-1)  # [N, 68] pixels
    metrics["landmarks_px_mean"] = float(distance.mean())
    metrics["landmarks_px_median"] = float(distance.mean(dim=1).median())

    mean = dataset.params.mean(0, keepdim=True).expand_as(dataset.params)
    chance = parameter_errors(mean, dataset.params)
    for key in ("yaw_deg_mean", "expression_mae", "jaw_open_mae", "light_rmse", "identity_rmse", "albedo_rmse"):
        metrics[f"{key}_mean_predictor"] = chance[key]

    if photometric and dataset.face_mask is not None and dataset.scene:
        total, pixels = 0.0, 0.0
        device = world.model.neutral.device
        for start in range(0, len(dataset), batch_size):
            index = slice(start, start + batch_size)
            scene = {k: v[index].to(device) for k, v in dataset.scene.items()}
            rendered = world.render(FaceParams.from_vector(params[index].to(device)), scene).images.cpu()
            mask = dataset.face_mask[index].float()[:, None]  # [b, 1, H, W]
            total += float(((rendered - images[index]).abs() * mask).sum()) / 3
            pixels += float(mask.sum())
        metrics["photometric_face_mae_255"] = 255.0 * total / max(pixels, 1.0)
    metrics["count"] = float(len(dataset))
    return metrics


# ----------------------------------------------------------------------------
# The method table (RigNet registers itself here).


@dataclasses.dataclass
class MethodContext:
    """What a method factory may use: the evaluation set (G and F, never E), and training data.

    ``training_pairs()`` gives ``(ws [N, num_ws, w_dim], params [N, 196])``:
    the corpus folder ``corpus`` when given (it must come from the same G), else
    ``fit_count`` pairs sampled in memory with ``fit_seed`` (the
    :func:`~stylerig_lite.corpus.make_corpus` items of that seed).
    """

    evalset: EvalSet
    corpus: Optional[Union[str, os.PathLike]] = None
    fit_count: int = DEFAULT_FIT_COUNT
    fit_seed: int = 0
    ridge: float = DEFAULT_RIDGE
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    _pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default=None, repr=False)

    def training_pairs(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._pairs is None:
            G, F = self.evalset.G, self.evalset.F
            if self.corpus is not None:
                data = CorpusDataset(self.corpus)
                if data.manifest["generator_sha256"] != module_sha256(G):
                    raise CorpusError(f"the corpus {self.corpus} was sampled from another generator than the one "
                                      f"evaluated; make one with `stylerig-lite make-corpus --generator ...`")
                if getattr(F, "reads_latents", False):  # the latent F reads the corpus's latents themselves
                    self._pairs = (data.w, _latent_estimates(F, data.w, self.evalset.batch))
                else:
                    if F is not None and data.manifest["estimator_sha256"] != module_sha256(F):
                        print(f"warning: the corpus {self.corpus} holds another estimator's parameters than F",
                              file=sys.stderr)
                    self._pairs = (data.w, data.params)
            elif getattr(F, "reads_latents", False):  # no images needed: the mapping network's latents
                ws = sample_latents(G, self.fit_count, seed=self.fit_seed, truncation=self.evalset.truncation)
                self._pairs = (ws, _latent_estimates(F, ws, self.evalset.batch))
            else:
                items = sample_pairs(G, F, self.fit_count, seed=self.fit_seed, truncation=self.evalset.truncation,
                                     batch=self.evalset.batch)
                self._pairs = (items["w"], items["params"])
        return self._pairs


@torch.no_grad()
def _latent_estimates(F: Any, ws: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([F(ws[i : i + batch].float()) for i in range(0, len(ws), batch)]) if len(ws) else ws.new_zeros(0, NUM_PARAMS)


MethodFactory = Callable[[MethodContext, str], Union[str, EditMethod]]


def _linear_factory(context: MethodContext, component: str) -> EditMethod:
    ws, params = context.training_pairs()
    return LinearBaseline.fit(ws, params, component, ridge=context.ridge)


def _rignet_factory(context: MethodContext, component: str) -> EditMethod:
    """The component's RigNet: ``<options['rignet_dir']>/rignet_<component>.pt`` if given, else the embedded one.

    A RigNet trained on another generator than the evaluated one is refused
    (:meth:`~stylerig_lite.rignet.RigNet.check_generator`; ``options['generator_file_sha256']``: the
    evaluated generator's file hash, when it came from a file).
    """
    from . import pretrained

    folder = context.options.get("rignet_dir")
    path = Path(folder) / f"rignet_{component}.pt" if folder else None
    net = pretrained.rignet(component, path, generator=context.options.get("generator_name") or "faceworld")
    net.check_generator(context.evalset.G, file_sha256=context.options.get("generator_file_sha256"))
    return rig_method(net, getattr(context.evalset, "F", None))


def rig_method(net: Any, F: Any) -> EditMethod:
    """``net.rig`` as an editing method; a calibrated RigNet (``request_gain`` set) gets its source from F.

    The calibration scales the change from the latent's own parameters, so the method reads them with
    the latent F (``F(w)``, the same reading the targets start from); an image F cannot (it would need
    the images), and a calibrated RigNet with one is an error.
    """
    if getattr(net, "request_gain", None) is None:
        return net.rig
    if not getattr(F, "reads_latents", False):
        raise ValueError("a calibrated RigNet (request_gain set) needs a latent F for its source parameters; "
                         "clear the calibration with net.set_request_gain(None) to score it without one")

    def calibrated_rig(w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        return net.rig(w, p_target, source=_latent_estimates(F, w, len(w)).to(p_target))

    calibrated_rig.__name__ = "rignet (calibrated)"
    return calibrated_rig


#: name -> factory(context, component) -> method (or a reference name). Extend with :func:`register_method`.
METHODS: Dict[str, MethodFactory] = {
    "none": lambda context, component: "none",
    "donor": lambda context, component: "donor",
    "linear": _linear_factory,
    "rignet": _rignet_factory,
}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make ``name`` available to ``stylerig-lite evaluate --methods``.

    ``factory(context, component)`` returns the editing method for one
    component (e.g. that component's trained RigNet).
    """
    METHODS[name] = factory


# ----------------------------------------------------------------------------
# Generator quality: Fréchet distance in F's feature space and pose coverage.


def frechet_distance(feats_a: Union[torch.Tensor, np.ndarray], feats_b: Union[torch.Tensor, np.ndarray]) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``.

    ``|μa - μb|² + tr(Σa + Σb - 2 (Σa^½ Σb Σa^½)^½)``, the FID formula
    (Heusel et al. 2017). The matrix square roots are taken by symmetric
    eigendecomposition (``Σa^½ Σb Σa^½`` is symmetric positive semi-definite,
    and its square root has the same trace as ``(Σa Σb)^½``), in float64, with
    round-off negative eigenvalues clipped to zero.
    """
    a = np.asarray(torch.as_tensor(feats_a).detach().cpu().double())
    b = np.asarray(torch.as_tensor(feats_b).detach().cpu().double())
    for name, f in (("feats_a", a), ("feats_b", b)):
        if f.ndim != 2:
            raise ValueError(f"{name} has shape {f.shape}; expected features [N, D]")
        if f.shape[0] < 2:
            raise ValueError(f"{name} has {f.shape[0]} rows; a covariance needs at least 2")
        if not np.isfinite(f).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: feats_a has {a.shape[1]} dims, feats_b {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)

    def psd_sqrt(m: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh((m + m.T) / 2)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_a = psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
    return max(distance, 0.0)


def faceworld_images(count: int, seed: int = 7, *, world: Any = None, folder: Optional[Union[str, os.PathLike]] = None,
                     batch: int = 64) -> torch.Tensor:
    """``count`` FaceWorld images ``[N, 3, 64, 64]`` in [0, 1]: rendered with ``seed`` or read from a
    :func:`~stylerig_lite.datasets.render_shards` ``folder`` (its first ``count``)."""
    if folder is not None:
        
        data = FaceWorldShards(folder)
        if len(data) < count:
            raise ValueError(f"{folder} holds {len(data)} images; asked for {count}")
        return data.images[:count].permute(0, 3, 1, 2).float() / 255.0
    from .world import FaceWorld

    world = world or FaceWorld()
    generator = torch.Generator().manual_seed(int(seed))
    return torch.cat([world.sample(s.stop - s.start, generator=generator).images.cpu()
                      for s in _batches(count, batch)])


def _quality_stats(F: Any, images: torch.Tensor, value_range: Tuple[float, float], batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """F's features ``[N, C]`` and (yaw°, pitch°, roll°, jawOpen) ``[N, 4]`` of images in ``value_range``."""
    import torch.nn.functional as nnf

    size = F.config.image_size
    feats, stats = [], []
    for index in _batches(images.shape[0], batch):
        x = images[index]
        if tuple(x.shape[-2:]) != (size, size):
            x = nnf.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(*value_range)
        feats.append(F.features(x, value_range=value_range).float().cpu())
        params, _ = F.estimate(x, value_range=value_range)
        p = params.to_vector().float().cpu()
        stats.append(torch.cat([torch.rad2deg(p[:, _ANGLES]), p[:, _JAW_OPEN : _JAW_OPEN + 1]], dim=1))
    return torch.cat(feats), torch.cat(stats)


@torch.no_grad()
def generator_quality(G: Any, F: Any, faceworld: torch.Tensor, count: Optional[int] = None, seed: int = 0, *,
                      truncation: float = 1.0, batch: int = 64, tolerance: float = 0.2) -> Dict[str, Any]:
    """How close the generator's images are to FaceWorld, seen through F.

    ``faceworld``: FaceWorld images ``[M, 3, H, W]`` in [0, 1] (see
    :func:`faceworld_images`), split into halves A and B. ``count`` generated
    images (default ``M // 2``, so both distances compare equal-sized sets:
    the Fréchet distance of finite samples is biased upward, more so for small
    ones) of latents with ``seed``.

    Returns ``fd`` (generated vs half B), ``fd_floor`` (half A vs half B: what
    sampling alone gives), ``fd_ratio`` = fd / fd_floor, and ``coverage``: for
    ``yaw``, ``pitch``, ``roll`` (F's estimates, degrees) and ``jaw_open``, the
    standard deviation over generated images, over all FaceWorld images, their
    ``ratio`` and ``pass`` (ratio within 1 ± ``tolerance``); ``pass`` overall
    when every ratio passes.
    """
    assert_shape(faceworld, [None, 3, None, None], "faceworld images")
    assert_finite(faceworld, "faceworld images")
    assert_value_range(faceworld, (0.0, 1.0), "faceworld images")
    if faceworld.shape[0] < 8:
        raise ValueError(f"need at least 8 FaceWorld images (two halves of >= 4), got {faceworld.shape[0]}")
    if not hasattr(F, "features"):
        raise TypeError("F needs a features(images) method (a stylerig_lite ReconstructionNet)")
    if isinstance(F, torch.nn.Module):
        F.eval()
    half = faceworld.shape[0] // 2
    count = half if count is None else int(count)
    if count < 2:
        raise ValueError(f"count must be >= 2, got {count}")
    fw_feats, fw_stats = _quality_stats(F, faceworld, (0.0, 1.0), batch)

    z = sample_z(G.z_dim, seed, 0, count, stream="quality")
    device = device_of(G)
    generated = torch.cat([synthesize(G, G.mapping(z[i].to(device), None, truncation_psi=truncation)).cpu()
                           for i in _batches(count, batch)])
    gen_feats, gen_stats = _quality_stats(F, generated, (-1.0, 1.0), batch)

    fd = frechet_distance(gen_feats, fw_feats[half:])
    floor = frechet_distance(fw_feats[:half], fw_feats[half:])
    coverage = {}
    for i, name in enumerate(("yaw", "pitch", "roll", "jaw_open")):
        std_gen, std_fw = float(gen_stats[:, i].std()), float(fw_stats[:, i].std())
        ratio = std_gen / std_fw if std_fw > 0 else math.nan
        coverage[name] = {"generated_std": std_gen, "faceworld_std": std_fw, "ratio": ratio,
                          "pass": bool(abs(ratio - 1) <= tolerance)}
    return {
        "fd": fd,
        "fd_floor": floor,
        "fd_ratio": fd / floor if floor > 0 else math.inf,
        "count": count,
        "faceworld_count": int(faceworld.shape[0]),
        "truncation": float(truncation),
        "coverage": coverage,
        "pass": all(c["pass"] for c in coverage.values()),
    }


# ----------------------------------------------------------------------------
# Command line (registered in stylerig_lite/cli.py as `evaluate`).


def _load_networks(args: argparse.Namespace) -> Tuple[Any, Any, Any]:
    from . import pretrained

    def load(loader: Callable, path: Optional[str], flag: str) -> Any:
        try:
            return loader(path)
        except pretrained.WeightsError as error:
            raise FileNotFoundError(f"{error}; or pass {flag} PATH") from None

    if args.generator == "ffhq":  # the photoreal generator: its latent F, no E (see EvalSet.build)
        return pretrained.photoreal_generator(), pretrained.latent_f("ffhq"), None
    generator = None if args.generator == "faceworld" else args.generator
    G = load(pretrained.generator, generator, "--generator")
    F = load(pretrained.face_estimator, args.face_estimator, "--face-estimator")
    E = load(pretrained.evaluation_estimator, args.evaluation_estimator, "--evaluation-estimator")
    return G, F, E


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--component", default="all", choices=COMPONENTS + ("illumination", "all"),
                        help="which rig component to edit (default all; 'illumination' is an alias of 'light')")
    parser.add_argument("--methods", default="none,donor,linear",
                        help="comma-separated methods (default none,donor,linear; random is the old name of donor); known: " + ", ".join(METHODS))
    parser.add_argument("--count", type=positive_int, help=f"evaluation pairs, >= 1 (default {DEFAULT_COUNT}; {QUICK_COUNT} with STYLERIG_LITE_QUICK=1)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"pair seed (default: {DEFAULT_SEED} for --split evaluation, {VALIDATION_SEED} for validation)")
    parser.add_argument("--split", choices=("evaluation", "validation"), default="evaluation",
                        help="evaluation: the reported numbers; validation: where choices (layer masks, steps) are made")
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the sampled latents (default 1)")
    parser.add_argument("--corpus", help="corpus folder (make-corpus) to fit the linear baseline on "
                                         "(default: sample --fit-count pairs in memory)")
    parser.add_argument("--fit-count", type=positive_int, help=f"in-memory fitting pairs without --corpus (default {DEFAULT_FIT_COUNT})")
    parser.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help=f"linear baseline ridge, relative (default {DEFAULT_RIDGE})")
    parser.add_argument("--rignet-dir", help="folder with rignet_<component>.pt for --methods rignet (default: the embedded RigNets)")
    parser.add_argument("--generator", help="'faceworld' (the embedded FaceWorld StyleGAN2, the default), 'ffhq' (the "
                                            "photoreal MobileStyleGAN: its latent F gives the targets, the judge and "
                                            "dlib's identity score; 256-px images) or a StyleGAN2 checkpoint")
    parser.add_argument("--face-estimator", help="F checkpoint, the estimator methods see (default: the embedded F)")
    parser.add_argument("--evaluation-estimator", help="E checkpoint, the judge (default: the embedded one)")
    parser.add_argument("--batch", type=positive_int, default=64, help="images per batch (default 64)")
    parser.add_argument("--quality", action="store_true",
                        help="instead: the generator's Fréchet distance to FaceWorld in F's features and its pose coverage")
    parser.add_argument("--faceworld", help="with --quality: a render_shards folder of FaceWorld images (default: render them)")
    parser.add_argument("--quality-count", type=positive_int, help="with --quality: FaceWorld images (default 2000; 256 quick)")
    parser.add_argument("--yaw-sweep", action="store_true",
                        help=f"with the pose component: also ask each method for the yaws {list(DEFAULT_SWEEP_YAWS)} "
                             f"on {DEFAULT_SWEEP_COUNT} faces (JSON: <method>.pose.yaw_sweep)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (method -> component -> metrics)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_device_argument(parser, tf32=False)  # evaluation keeps full float32 arithmetic on a GPU


#: Column order of the tables, whatever order a result's keys came in (the weights manifest sorts them).
TABLE_COLUMNS = ("albedo_rmse", "translation_cm", "yaw_deg", "pitch_deg", "roll_deg", "jaw_open_mae", "light_rmse",
                 "identity_distance", "outside_face_mae_255")


def _column_order(keys: Any) -> List[str]:
    # (sorted() is stable: keys not in TABLE_COLUMNS stay at the end in the order they came)
    return sorted(keys, key=lambda k: TABLE_COLUMNS.index(k) if k in TABLE_COLUMNS else len(TABLE_COLUMNS))


def format_table(results: Dict[str, Dict[str, Any]]) -> str:
    """The JSON result as one plain-text table per component."""
    lines = []
    components = list(dict.fromkeys(c for per in results.values() for c in per))
    for component in components:
        rows = [(name, per[component]) for name, per in results.items() if component in per]
        target_keys = _column_order(k for k in rows[0][1]["target_error"] if not k.endswith("_median"))
        keep_keys = _column_order(rows[0][1]["preservation"])
        lines.append(f"{component}: {rows[0][1]['count']} pairs; targets from F; E's reading (a second opinion; "
                     "errors, lower is better)")
        width = {k: max(len(k), 9) + 2 for k in target_keys + keep_keys}
        name_width = max(10, *(len(name) + 2 for name, _ in rows))
        target_width = sum(width[k] for k in target_keys)
        keep_width = sum(width[k] for k in keep_keys)
        lines.append(f"{'':<{name_width}}{'target error':>{target_width}}  |{'preservation':>{keep_width}}")
        lines.append(f"{'method':<{name_width}}" + "".join(f"{k:>{width[k]}}" for k in target_keys) + "  |"
                     + "".join(f"{k:>{width[k]}}" for k in keep_keys))
        for name, r in rows:
            lines.append(f"{name:<{name_width}}" + "".join(f"{r['target_error'][k]:>{width[k]}.4g}" for k in target_keys) + "  |"
                         + "".join(f"{r['preservation'][k]:>{width[k]}.4g}" for k in keep_keys))
        judged = [(name, r["judge"]) for name, r in rows if "judge" in r]
        if judged:
            keys = [("relative_error", k) for k in judged[0][1]["relative_error"]] + [("gain", k) for k in judged[0][1]["gain"]] \
                + [("preservation", k) for k in judged[0][1]["preservation"]]
            lines.append(f"{component}, read by the judge (relative error and gain of the edited readings | change of the others)")
            header = [f"{section[:3]}:{key.replace('_median', '')}" for section, key in keys]
            cell = max(12, *(len(h) + 2 for h in header))
            lines.append(f"{'method':<{name_width}}" + "".join(f"{h:>{cell}}" for h in header) + f"{'detected':>{cell}}")
            for name, j in judged:
                lines.append(f"{name:<{name_width}}" + "".join(f"{j[section][key]:>{cell}.4g}" for section, key in keys)
                             + f"{j['detected']:>{cell}.3g}")
        sweeps = [(name, r["yaw_sweep"]) for name, r in rows if "yaw_sweep" in r]
        if sweeps:
            yaws = sweeps[0][1]["yaws_deg"]
            reader = sweeps[0][1].get("reader", "E")
            lines.append(f"yaw sweep on {sweeps[0][1]['count']} faces: median yaw read by {reader} for each target (degrees)")
            lines.append(f"{'method':<{name_width}}" + "".join(f"{y:>7.0f}" for y in yaws) + "  | median |error|")
            for name, sweep in sweeps:
                lines.append(f"{name:<{name_width}}" + "".join(f"{v:>7.1f}" for v in sweep["median_reached_deg"])
                             + f"  | {sweep['median_deg']:.2f}")
        lines.append("")
    return "\n".join(lines)


#: The columns of :func:`summary_markdown`: (component, section, key, header, format).
SUMMARY_COLUMNS: Tuple[Tuple[str, str, str, str, str], ...] = (
    ("pose", "judge.relative_error", "yaw_median", "pose: yaw error (°, median, judge)", "{:.1f}"),
    ("pose", "yaw_sweep", "median_deg", "pose: ±30° sweep error (°, median)", "{:.1f}"),
    ("pose", "judge.gain", "yaw", "pose: yaw gain (judge)", "{:.2f}"),
    ("pose", "preservation", "identity_distance", "pose: identity distance (dlib, median)", "{:.2f}"),
    ("pose", "preservation", "outside_face_mae_255", "pose: change outside the face (0-255)", "{:.1f}"),
    ("expression", "judge.relative_error", "jaw_open_median", "expression: jaw error (judge)", "{:.3f}"),
    ("light", "judge.relative_error", "light_x_median", "light: left-right error (judge)", "{:.3f}"),
    ("light", "judge.preservation", "yaw_change_median", "light: yaw change (°, judge)", "{:.1f}"),
)


def reported_results() -> Dict[str, Dict[str, Any]]:
    """``{method: {component: result}}`` as recorded in the embedded RigNets' manifest entries
    (measured on the full evaluation set when they were exported; empty if none are embedded)."""
    from . import pretrained

    manifest = pretrained.read_manifest()
    results: Dict[str, Dict[str, Any]] = {}
    for component in COMPONENTS:
        for method, result in manifest.get(f"rignet_{component}", {}).get("metrics", {}).get("evaluate", {}).items():
            results.setdefault(method, {})[component] = result
    order = ("none", "donor", "linear", "rignet")  # the references first, then the methods (the manifest sorts keys)
    return dict(sorted(results.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def shipped(name: str) -> Dict[str, Any]:
    """A shipped evaluation ``stylerig_lite/data/<name>.json`` (written by the ``training/`` scripts).

    ``photoreal_results``: the photoreal RigNets and linear baseline (``training/export_photoreal_rignets.py``);
    ``faceworld_latent_rignet``: the FaceWorld pose RigNets trained through the latent F (``evaluate`` output).
    """
    import importlib.resources

    path = importlib.resources.files("stylerig_lite") / "data" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no shipped evaluation {name!r} ({path}); training/README.md says which script "
                                "writes it") from None


def photoreal_results() -> Dict[str, Any]:
    """The shipped evaluation of the photoreal generator's RigNets and linear baseline (500 pairs, seed 2020).

    ``{'methods': {method: {component: evaluate_method result (+ 'yaw_sweep' for pose)}}, 'count', 'seed', ...}``.
    """
    return shipped("photoreal_results")


def photoreal_equal_gain() -> Dict[str, Any]:
    """The photoreal pose RigNet and the linear baseline *at equal target accuracy* (500 pairs, seed 2020).

    The linear edit lengthened by the factor ``k`` (:func:`scaled`) whose judged yaw gain equals the
    RigNet's on the validation split (``training/photoreal_linear_equal_gain.py``). Returns the
    :func:`photoreal_results` structure with two methods, ``'rignet'`` and ``'linear x<k>'``, both
    for ``'pose'``, plus ``'factor'`` and ``'validation'`` (the factors tried and their gains).
    """
    study, results = shipped("photoreal_linear_equal_gain"), photoreal_results()
    k = study["evaluation"]["factor"]
    if (study["evaluation"]["seed"], study["evaluation"]["count"]) != (results["seed"], results["count"]):
        raise ValueError("the equal-gain study and photoreal_results were scored on different pairs; rerun "
                         "training/photoreal_linear_equal_gain.py")
    return {"methods": {"rignet": {"pose": results["methods"]["rignet"]["pose"]},
                        f"linear x{k:.2f}": {"pose": study["evaluation"]["linear_scaled"]}},
            "factor": k, "validation": study["validation"], "count": results["count"], "seed": results["seed"]}


def photoreal_markdown(results: Dict[str, Any]) -> str:
    """One markdown table of :func:`photoreal_results`: per method and component, the judge's relative error
    and gain on what was edited, what else changed (judge), identity distance and the change outside the face."""
    lines = ["| method | component | relative error (judge) | gain | other readings' change | identity distance | "
             "outside-face change (0-255) | judge found a face |", "|---|---|---|---|---|---|---|---|"]
    units = {"yaw": "°", "pitch": "°", "roll": "°", "jaw_open": "", "light_x": "", "light_y": ""}
    for method, per_component in results["methods"].items():
        for component, r in per_component.items():
            judge = r.get("judge", {})
            rel = ", ".join(f"{k.replace('_median', '')} {v:.2f}{units.get(k.replace('_median', ''), '')}"
                            for k, v in judge.get("relative_error", {}).items())
            gain = ", ".join(f"{k} {v:.2f}" for k, v in judge.get("gain", {}).items())
            other = ", ".join(f"{k.replace('_change_median', '')} {v:.2f}" for k, v in judge.get("preservation", {}).items())
            pres = r.get("preservation", {})
            identity, outside = pres.get("identity_distance", math.nan), pres.get("outside_face_mae_255", math.nan)
            lines.append(f"| {method} | {component} | {rel} | {gain} | {other} | {identity:.3f} | {outside:.1f} | "
                         f"{judge.get('detected', math.nan):.0%} |")
    return "\n".join(lines)


def summary_markdown(results: Dict[str, Dict[str, Any]]) -> str:
    """One markdown table, a row per method, of the headline numbers of each component (lower is
    better; a blank cell: not measured). The book's landing page shows it for :func:`reported_results`."""
    header = "| method | " + " | ".join(c[3] for c in SUMMARY_COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(SUMMARY_COLUMNS)]
    for method, per in results.items():
        cells = []
        for component, section, key, _, fmt in SUMMARY_COLUMNS:
            node = per.get(component, {})
            for part in section.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            value = node.get(key) if isinstance(node, dict) else None
            cells.append("" if value is None else fmt.format(value))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(getattr(args, "device", "auto"))
    except ValueError as error:
        raise SystemExit(f"stylerig-lite evaluate: error: {error}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_cuda(device, tf32=False)
    quick = quick_mode()
    if getattr(args, "seed", None) is None:
        args.seed = VALIDATION_SEED if getattr(args, "split", "evaluation") == "validation" else DEFAULT_SEED
    try:
        G, F, E = _load_networks(args)
        if device.type != "cpu":  # loaded on the CPU, then moved; the rest follows G's device (device_of)
            G, F, E = (net.to(device) if isinstance(net, torch.nn.Module) else net for net in (G, F, E))
        if args.quality:
            count = args.quality_count or (256 if quick else 2000)
            images = faceworld_images(count, folder=args.faceworld)
            result: Dict[str, Any] = generator_quality(G, F, images, seed=args.seed, truncation=args.truncation, batch=args.batch)
            if args.json:
                print(json.dumps(result, indent=1))
            else:
                print(f"Fréchet distance in F's features: {result['fd']:.4g} (FaceWorld vs FaceWorld floor "
                      f"{result['fd_floor']:.4g}; {result['count']} generated, {result['faceworld_count']} FaceWorld)")
                for name, c in result["coverage"].items():
                    print(f"  {name:<9} std generated {c['generated_std']:.3g}, FaceWorld {c['faceworld_std']:.3g}: "
                          f"ratio {c['ratio']:.2f} {'ok' if c['pass'] else 'OUTSIDE 0.8-1.2'}")
            return 0
        names = [REFERENCE_ALIASES.get(n.strip(), n.strip()) for n in args.methods.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
        components = list(COMPONENTS) if args.component == "all" else [check_component(args.component)]
        count = args.count if args.count is not None else (QUICK_COUNT if quick else DEFAULT_COUNT)
        print(f"evaluate: sampling {count} pairs (seed {args.seed}) ...", file=sys.stderr)
        photoreal = args.generator == "ffhq"
        evalset = EvalSet.build(G, F, E, count, args.seed, truncation=args.truncation,
                                batch=min(args.batch, 16) if photoreal else args.batch,
                                image_size=256 if photoreal else None)
        named = args.generator in (None, "faceworld", "ffhq")
        context = MethodContext(evalset, corpus=args.corpus, ridge=args.ridge,
                                fit_count=args.fit_count or (QUICK_FIT_COUNT if quick else DEFAULT_FIT_COUNT),
                                options={"rignet_dir": args.rignet_dir,
                                         "generator_name": "ffhq" if photoreal else "faceworld",
                                         "generator_file_sha256": None if named else sha256_file(args.generator)})
        results: Dict[str, Dict[str, Any]] = {}
        for name in names:
            results[name] = {}
            for component in components:
                print(f"evaluate: {name} / {component} ...", file=sys.stderr)
                method = METHODS[name](context, component)
                results[name][component] = evaluate_method(method, evalset, component)
                if component == "pose" and args.yaw_sweep and name != "donor":
                    results[name][component]["yaw_sweep"] = yaw_sweep("none" if name == "none" else method, evalset)
    except (ValueError, FileNotFoundError, TypeError) as error:  # bad options or data: say what, without a traceback
        print(f"stylerig-lite evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1) if args.json else format_table(results))
    return 0


# ----------------------------------------------------------------------------
# Chapter 4's tables (notebooks/04_face_reconstruction.ipynb): an image estimator scored on FaceWorld.

#: The rows of :func:`estimator_table`: (key of :func:`evaluate_estimator`'s dict, label, format).
ESTIMATOR_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("yaw_deg_median", "yaw error, median (°)", ".2f"),
    ("pitch_deg_median", "pitch error, median (°)", ".2f"),
    ("roll_deg_median", "roll error, median (°)", ".2f"),
    ("translation_cm_mean", "translation error, mean (cm)", ".2f"),
    ("landmarks_px_mean", "landmark error, mean (px)", ".2f"),
    ("light_rmse", "light RMSE (27 SH coefficients)", ".3f"),
    ("jaw_open_mae", "jawOpen MAE (weight)", ".3f"),
    ("expression_mae", "expression MAE (53 weights)", ".3f"),
    ("identity_rmse", "identity RMSE (std. dev.)", ".2f"),
    ("albedo_rmse", "albedo RMSE (std. dev.)", ".2f"),
    ("photometric_face_mae_255", "photometric error, face mask (0-255)", ".1f"),
)


def estimator_table(columns: Dict[str, Dict[str, float]], title: str = "", *, width: int = 10) -> str:
    """A plain-text table of estimator scores: one column per estimator, one row per :data:`ESTIMATOR_ROWS` entry.

    ``columns``: name -> a metrics dict (:func:`evaluate_estimator`'s, or
    :func:`~stylerig_lite.reconstruction.estimator_agreement`'s). A row is printed when the first column
    has its key; a value another column lacks prints as ``-``. ``title`` heads the label column, ``width``
    is each value column's width in characters. Returns the table (lines joined by newlines).
    """
    first = next(iter(columns.values()))
    rows = [row for row in ESTIMATOR_ROWS if row[0] in first]
    label_width = max(len(title), *(len(label) for _, label, _ in rows)) + 2
    lines = [f"{title:{label_width}s}" + "".join(f"{name:>{width}s}" for name in columns)]
    for key, label, fmt in rows:
        cells = (format(scores[key], fmt) if key in scores else "-" for scores in columns.values())
        lines.append(f"{label:{label_width}s}" + "".join(f"{cell:>{width}s}" for cell in cells))
    return "\n".join(lines)
