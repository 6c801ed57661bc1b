"""Analysis by synthesis: fit 3DMM parameters to an image by gradient descent through the renderer.

``fit(model, image, landmarks)`` starts from the mean face (or ``init``) and
minimises, per image,

    L(p) = w_photo · L_photo(I, p) + w_land · L_land(I, p) + R(p)

with Adam, where ``L_photo`` and ``L_land`` are :func:`stylerig_lite.losses.render_loss`
(the same ``L_render`` RigNet trains with) and ``R`` is
:func:`stylerig_lite.losses.parameter_regulariser` (a Gaussian prior on identity
and albedo, a pull toward the neutral expression).

Schedule (coarse to fine, as classic 3DMM fitting does):

1. *coarse* (the first ``coarse_fraction`` of the steps): only pose and light
   move. The landmarks place the head; the light explains the overall colour.
   Moving identity or expression before the head is in place would let them
   absorb pose error.
2. *fine*: every component in ``components`` moves.

Each stage uses its own Adam with a cosine decay of the learning rates to
:data:`FINAL_LR_FRACTION` (10 %) of their start. Learning rates are per
component (:data:`LEARNING_RATES`), because the units differ: radians,
centimetres, standard deviations, blendshape weights. They were tuned on
rendered faces at 64 px: doubling the first guesses (0.05 std, 0.01 rad, 0.1
cm) halved the worst rotation error after 200 steps (2.3° -> 1.4° over 12
faces); a shorter coarse stage (15 % of the steps) made it worse.
Expression weights are projected onto [0, 1] after every step (the ICT
blendshapes are defined for that range).

Images in a batch are fitted independently: the losses are per image and
Adam's update is element-wise, so fitting a batch of B images equals B
separate fits, for the price of one batched render per step.

:func:`parameter_errors` scores a fit against known parameters (pose in
degrees, landmark error in pixels, expression and light errors), as the tests
and chapter 4 (``notebooks/04_face_reconstruction.ipynb``) do.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .camera import Camera
from .checks import assert_finite, assert_shape
from .face_render import default_camera
from .losses import (
    DEFAULT_REGULARISATION,
    DEFAULT_W_LAND,
    DEFAULT_W_PHOTO,
    LOSS_PARTS,
    RenderLossTerms,
    parameter_regulariser,
    render_loss,
)
from .morphable import COMPONENTS, FaceModel, FaceParams, euler_to_matrix, expression_index, sample_params
from .shading import NUM_SH, dominant_light_direction, sh_basis

light_direction = dominant_light_direction  # an older name, kept for scripts and tests/test_fitting.py

#: Adam learning rate per optimised block (the pose is split into rotation and translation).
LEARNING_RATES: Dict[str, float] = {
    "identity": 0.1,  # standard deviations
    "expression": 0.03,  # blendshape weights in [0, 1]
    "albedo": 0.05,  # standard deviations
    "light": 0.03,  # SH coefficients (white ambient light of 1 has γ0 = 3.5)
    "rotation": 0.02,  # radians (1.15°)
    "translation": 0.2,  # cm
}

#: Each stage's learning rates decay (cosine) to this fraction of their start.
FINAL_LR_FRACTION = 0.1

#: The blocks moved in the coarse stage.
COARSE_BLOCKS = ("rotation", "translation", "light")


@dataclasses.dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Attributes:
        params: fitted :class:`FaceParams` (detached), one row per image.
        history: per-step batch means: ``total``, ``photometric``, ``landmark``,
            ``regulariser``, and ``stage`` (0 coarse, 1 fine).
        final: per-image ``[B]`` tensors of the final ``total``, ``photometric``,
            ``landmark`` and ``regulariser`` terms.
        steps: number of optimisation steps taken.
        seconds: wall-clock time of the fit.
    """

    params: FaceParams
    history: Dict[str, List[float]]
    final: Dict[str, torch.Tensor]
    steps: int
    seconds: float


def _blocks(params: FaceParams) -> Dict[str, torch.Tensor]:
    return {
        "identity": params.identity,
        "expression": params.expression,
        "albedo": params.albedo,
        "light": params.light,
        "rotation": params.pose[:, :3],
        "translation": params.pose[:, 3:],
    }


def _params_from_blocks(blocks: Mapping[str, torch.Tensor]) -> FaceParams:
    pose = torch.cat([blocks["rotation"], blocks["translation"]], dim=1)
    return FaceParams(blocks["identity"], blocks["expression"], blocks["albedo"], blocks["light"], pose)


def _component_blocks(components: Sequence[str]) -> List[str]:
    if isinstance(components, str):  # fit(..., components="pose") means one component, not five letters
        components = (components,)
    blocks = []
    for name in components:
        if name not in COMPONENTS:
            raise KeyError(f"unknown parameter component {name!r}; expected some of {list(COMPONENTS)}")
        blocks += ["rotation", "translation"] if name == "pose" else [name]
    return blocks


def fit(
    model: FaceModel,
    target_image: torch.Tensor,
    target_landmarks: Optional[torch.Tensor] = None,
    camera: Optional[Camera] = None,
    *,
    steps: int = 200,
    lr: float = 1.0,
    init: Union[None, str, FaceParams, torch.Tensor] = None,
    components: Sequence[str] = COMPONENTS,
    regularisation: Optional[Mapping[str, float]] = None,
    w_photo: float = DEFAULT_W_PHOTO,
    w_land: float = DEFAULT_W_LAND,
    landmark_weights: Optional[torch.Tensor] = None,
    coarse_fraction: float = 0.3,
    parts: Sequence[str] = LOSS_PARTS,
    squared: bool = False,
    seed: int = 0,
    callback: Optional[Callable[[int, FaceParams, RenderLossTerms], None]] = None,
) -> FitResult:
    """Fit parameters to ``target_image`` by analysis by synthesis.

    Args:
        model: the face model.
        target_image: ``[B, 3, H, W]`` in [0, 1].
        target_landmarks: ``[B, 68, 2]`` pixel coordinates (from a detector, or the
            renderer for synthetic targets); None fits on colour alone, which needs a
            good ``init`` because the photometric term has no gradient through
            visibility.
        camera: default ``default_camera(W)``.
        steps: optimisation steps in total (both stages).
        lr: multiplier on every entry of :data:`LEARNING_RATES`.
        init: None or ``"neutral"`` (mean face, frontal, ambient light), ``"random"``
            (a :func:`~stylerig_lite.morphable.sample_params` draw from ``seed``, with
            frontal pose), or parameters ``[B, 196]`` / :class:`FaceParams` to start from.
        components: the components that may move (others stay at ``init``).
        regularisation: weights for :func:`~stylerig_lite.losses.parameter_regulariser`
            (default :data:`~stylerig_lite.losses.DEFAULT_REGULARISATION`).
        w_photo, w_land, landmark_weights, parts, squared: passed to
            :func:`~stylerig_lite.losses.render_loss` (``squared=True``: mean squared photometric error).
        coarse_fraction: share of ``steps`` spent on pose and light only (0 disables).
        seed: seeds ``init="random"`` (the fit itself is deterministic).
        callback: called as ``callback(step, params, terms)`` after each loss evaluation.
    """
    assert_shape(target_image, [None, 3, None, None], "target_image")
    assert_finite(target_image, "target_image")
    batch, _, height, width = target_image.shape
    camera = camera or default_camera(width)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= coarse_fraction < 1.0:
        raise ValueError(f"coarse_fraction must be in [0, 1), got {coarse_fraction}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    device = model.neutral.device
    target_image = target_image.to(device)
    if target_landmarks is not None:
        assert_shape(target_landmarks, [batch, 68, 2], "target_landmarks")
        target_landmarks = target_landmarks.to(device)

    start = _initial_params(init, batch, seed, device)
    moving = _component_blocks(components)
    blocks = {name: value.detach().clone().requires_grad_(name in moving) for name, value in _blocks(start).items()}
    regularisation = {**DEFAULT_REGULARISATION, **(regularisation or {})}

    coarse_steps = int(round(coarse_fraction * steps))
    coarse = [b for b in COARSE_BLOCKS if b in moving]
    if not coarse:
        coarse_steps = 0
    stages = [(coarse, coarse_steps), (moving, steps - coarse_steps)]

    def evaluate(params: FaceParams):
        terms = render_loss(
            model, params, target_image, target_landmarks, camera,
            w_photo=w_photo, w_land=w_land, landmark_weights=landmark_weights, parts=parts, squared=squared,
        )
        return terms, parameter_regulariser(params, regularisation)

    history: Dict[str, List[float]] = {"total": [], "photometric": [], "landmark": [], "regulariser": [], "stage": []}
    began = time.perf_counter()
    step = 0
    for stage, (names, count) in enumerate(stages):
        if count == 0 or not names:
            continue
        optimiser = torch.optim.Adam([{"params": [blocks[n]], "lr": lr * LEARNING_RATES[n]} for n in names])
        base = [group["lr"] for group in optimiser.param_groups]
        for k in range(count):
            # Cosine decay: large steps to travel, small ones to settle.
            floor = FINAL_LR_FRACTION
            scale = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * k / max(count - 1, 1)))
            for group, rate in zip(optimiser.param_groups, base):
                group["lr"] = rate * scale
            params = _params_from_blocks(blocks)
            terms, regulariser = evaluate(params)
            loss = (terms.total + regulariser).sum()  # sum: each image keeps its own gradient scale
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if "expression" in names:
                with torch.no_grad():  # projected gradient: blendshape weights live in [0, 1]
                    blocks["expression"].clamp_(0.0, 1.0)
            _log(history, terms, regulariser, stage)
            if callback is not None:
                callback(step, params.detach(), terms)
            step += 1

    with torch.no_grad():
        params = _params_from_blocks(blocks).detach()
        terms, regulariser = evaluate(params)
    final = {
        "total": terms.total + regulariser,
        "photometric": terms.photometric,
        "landmark": terms.landmark,
        "regulariser": regulariser,
    }
    return FitResult(params=params, history=history, final=final, steps=step, seconds=time.perf_counter() - began)


def _initial_params(init, batch: int, seed: int, device) -> FaceParams:
    if init is None or (isinstance(init, str) and init == "neutral"):
        return FaceParams.neutral(batch, device=device)
    if isinstance(init, str) and init == "random":
        drawn = sample_params(batch, seed=seed)
        return drawn.replace(pose=torch.zeros_like(drawn.pose)).to(device)
    if isinstance(init, str):
        raise ValueError(f"init must be None, 'neutral', 'random', FaceParams or a [B, 196] tensor; got {init!r}")
    if isinstance(init, torch.Tensor):
        init = FaceParams.from_vector(init)
    if not isinstance(init, FaceParams):
        raise TypeError(f"init must be None, 'neutral', 'random', FaceParams or a tensor, got {type(init).__name__}")
    if init.batch_size != batch:
        raise ValueError(f"init has batch size {init.batch_size} but target_image has {batch}")
    return init.detach().to(device)


def _log(history: Dict[str, List[float]], terms: RenderLossTerms, regulariser: torch.Tensor, stage: int) -> None:
    values = terms.as_floats()
    history["total"].append(values["total"] + float(regulariser.detach().mean()))
    history["photometric"].append(values["photometric"])
    history["landmark"].append(values["landmark"])
    history["regulariser"].append(float(regulariser.detach().mean()))
    history["stage"].append(stage)


# ----------------------------------------------------------------------------- scoring
def rotation_error_deg(pred_pose: torch.Tensor, true_pose: torch.Tensor) -> torch.Tensor:
    """Geodesic angle ``[B]`` in degrees between two head rotations (pose ``[B, 6]`` or angles ``[B, 3]``)."""
    rel = euler_to_matrix(pred_pose[:, :3]).transpose(1, 2) @ euler_to_matrix(true_pose[:, :3])
    cosine = ((rel.diagonal(dim1=1, dim2=2).sum(dim=1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


def shading_on_sphere(light: torch.Tensor, resolution: int = 24, front_only: bool = True) -> torch.Tensor:
    """RGB shading ``[B, N, 3]`` of SH lights ``[B, 27]`` on a grid of unit normals.

    ``front_only`` keeps normals facing the camera (z > 0), the only ones a face shows.
    """
    assert_shape(light, [None, 27], "light")
    theta = torch.linspace(0.0, math.pi, resolution, dtype=light.dtype, device=light.device)
    phi = torch.linspace(-math.pi, math.pi, 2 * resolution, dtype=light.dtype, device=light.device)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    normals = torch.stack([torch.sin(t) * torch.sin(p), torch.cos(t), torch.sin(t) * torch.cos(p)], dim=-1)
    normals = normals.reshape(-1, 3)  # [N, 3] unit vectors, y up
    if front_only:
        normals = normals[normals[:, 2] > 0]
    basis = sh_basis(normals)  # [N, 9]
    return torch.einsum("nk,bck->bnc", basis, light.view(-1, 3, NUM_SH))


def parameter_errors(
    model: FaceModel, pred: FaceParams, true: FaceParams, camera: Optional[Camera] = None
) -> Dict[str, torch.Tensor]:
    """Per-image ``[B]`` errors of fitted parameters against known ones.

    Keys: ``rotation_deg`` (geodesic), ``yaw_deg``, ``pitch_deg``, ``roll_deg``
    (absolute), ``translation_xy_cm`` (in the image plane), ``depth_cm`` (along
    the camera axis: barely observable, a head 3 cm closer looks like a 3 %
    larger identity), ``landmarks_px`` (mean 2D distance), ``expression_mae``
    (mean absolute error of the 53 weights), ``jaw_open`` (absolute error of that
    weight), ``expression_mm`` (RMS over face-region vertices of the difference
    between the expression offsets, in mm: what the expression error *looks*
    like), ``light_direction_deg`` (angle between the dominant directions; only
    meaningful for a clearly directional light), ``shading_rel`` (mean |Δ
    shading| over front-facing normals relative to the true mean shading) and
    ``shading_pattern`` (the same after dividing each channel's shading by its
    mean: the light's pattern without its level and tint, which trade off
    exactly against the albedo). Identity and albedo are not scored: at 64 px
    many of their modes are invisible and trade off against each other.
    """
    camera = camera or default_camera(64)
    with torch.no_grad():
        angles = (torch.rad2deg(pred.pose[:, :3] - true.pose[:, :3]) + 180.0) % 360.0 - 180.0
        uv_pred, _ = camera.project(model(pred).landmarks)
        uv_true, _ = camera.project(model(true).landmarks)
        face = model.vertex_part == model.part_id("face")  # [V] the face region of the head
        basis = model.expression_basis.view(model.expression_basis.shape[0], -1, 3)[:, face]  # [53, Vf, 3]
        offset = torch.einsum("bj,jvc->bvc", pred.expression - true.expression, basis)
        s_pred, s_true = shading_on_sphere(pred.light), shading_on_sphere(true.light)  # [B, N, 3]
        # Per channel, shading relative to its own mean: the light's pattern without its overall
        # level and tint, which trade off exactly against the albedo's.
        p_pred = s_pred / s_pred.mean(dim=1, keepdim=True).clamp_min(1e-6)
        p_true = s_true / s_true.mean(dim=1, keepdim=True).clamp_min(1e-6)
        jaw = expression_index("jawOpen")
        return {
            "rotation_deg": rotation_error_deg(pred.pose, true.pose),
            "yaw_deg": angles[:, 0].abs(),
            "pitch_deg": angles[:, 1].abs(),
            "roll_deg": angles[:, 2].abs(),
            "translation_xy_cm": (pred.pose[:, 3:5] - true.pose[:, 3:5]).norm(dim=1),
            "depth_cm": (pred.pose[:, 5] - true.pose[:, 5]).abs(),
            "landmarks_px": (uv_pred - uv_true).norm(dim=-1).mean(dim=1),
            "expression_mae": (pred.expression - true.expression).abs().mean(dim=1),
            "jaw_open": (pred.expression[:, jaw] - true.expression[:, jaw]).abs(),
            "expression_mm": 10.0 * offset.pow(2).sum(-1).mean(dim=1).sqrt(),
            "light_direction_deg": torch.rad2deg(
                torch.acos((dominant_light_direction(pred.light) * dominant_light_direction(true.light)).sum(1).clamp(-1.0, 1.0))
            ),
            "shading_rel": (s_pred - s_true).abs().mean(dim=(1, 2)) / s_true.abs().mean(dim=(1, 2)),
            "shading_pattern": (p_pred - p_true).abs().mean(dim=(1, 2)),
        }


__all__ = [
    "COARSE_BLOCKS",
    "FitResult",
    "LEARNING_RATES",
    "fit",
    "light_direction",
    "parameter_errors",
    "rotation_error_deg",
    "shading_on_sphere",
]
