"""The rendering loss L_render, defined once for fitting (chapter 4), F and RigNet.

StyleRig scores a 3DMM parameter vector ``p`` against an image ``I`` by
rendering ``p`` and comparing (Tewari et al., CVPR 2020)::

    L_render(I, p) = w_photo * L_photo(I, p) + w_land * L_land(I, p)

* **Photometric term** :func:`photometric_loss`: colour difference between
  the image and the rendering, only on the *rendered face mask* ``M`` (the
  pixels the face mesh covers; hair, background and everything else the
  3DMM does not model are ignored). We use the robust ℓ2,1 form of Deng et
  al. (CVPRW 2019): the Euclidean (not squared) RGB distance of each pixel,
  averaged over the mask::

      L_photo = Σ_i M_i ‖I_i − R(p)_i‖₂ / max(Σ_i M_i, 1)

  A constant offset ``d`` on every channel costs ``d·√3``. ``squared=True``
  gives the mean squared distance instead (``3·d²`` for that offset).
* **Landmark term** :func:`landmark_loss`: mean squared distance between the
  68 projected landmark vertices and the target landmarks, in units of the
  image size (``(k / S)²`` for a shift of ``k`` pixels in an ``S``-pixel
  image), optionally weighted per landmark (:func:`landmark_weights`).
* **Statistical regulariser** :func:`parameter_regulariser`: weighted sums of
  squares of identity, expression and albedo, i.e. the negative log-prior of
  the model's Gaussian (identity, albedo, in standard deviations) and a pull
  toward the neutral expression.

Rendering for the loss uses the face region of the ICT head only
(``parts=("face",)``), the part a 3DMM fit is responsible for.
:func:`crop_face_model` cuts the model down to the vertices of those parts,
so the loss does not pay for eyeballs, teeth and the back of the head: the
rendered mask and landmarks are identical to rendering the full model with
the same ``parts``, the image equal up to float rounding (tested).

Gradients: the photometric term reaches colours and lighting directly and
vertex positions through the barycentrics of the triangle visible at each
pixel; the mask itself is hard (no gradient through visibility, see
:mod:`stylerig_lite.rasterize`), which is why the landmark term is needed to
pull geometry into place.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .camera import Camera, ImageSize, normalize_image_size
from .checks import assert_finite, assert_shape
from .face_render import default_camera, render_face
from .morphable import FaceModel, FaceParams
from .params import NUM_LANDMARKS
from .render import RenderOutput


#: The 68-point annotation scheme's groups (0-based, end exclusive).
LANDMARK_GROUPS: Dict[str, range] = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}

#: Parts rendered by the loss: the face region of the ICT head (what a 3DMM fit explains).
LOSS_PARTS = ("face",)

#: Default weight of each regularised component (sum of squares). α and δ are in
#: standard deviations, so w·Σα² is w times the Gaussian prior's energy; a typical
#: face (Σα² ≈ 100) then costs 0.01 at w = 1e-4, a tenth of a 0.1 photometric error.
DEFAULT_REGULARISATION: Dict[str, float] = {"identity": 1e-4, "expression": 1e-3, "albedo": 1e-3}

#: Default term weights of :func:`render_loss`. With landmarks in image-size units a
#: 1-pixel RMS landmark error at any resolution costs w_land / S² (≈ 0.024 at 64 px).
DEFAULT_W_PHOTO = 1.0
DEFAULT_W_LAND = 100.0


# ----------------------------------------------------------------------------------- terms
def photometric_loss(
    rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, squared: bool = False
) -> torch.Tensor:
    """Masked per-pixel colour distance, averaged over the mask: ``[B]``.

    Args:
        rendered: ``[B, 3, H, W]`` rendered image.
        target: ``[B, 3, H, W]`` image to explain (same value range, e.g. [0, 1]).
        mask: ``[B, 1, H, W]`` weights in [0, 1], normally the rendered face mask.
        squared: False (default): ℓ2,1, the mean Euclidean RGB distance (offset ``d``
            on all channels -> ``d·√3``). True: mean squared distance (-> ``3·d²``).

    An empty mask gives 0 (the denominator is clamped to one pixel), not NaN. A
    pixel with zero error has zero gradient (no NaN from the square root at 0).
    """
    assert_shape(rendered, [None, 3, None, None], "rendered")
    batch, _, height, width = rendered.shape
    assert_shape(target, [batch, 3, height, width], "target")
    assert_shape(mask, [batch, 1, height, width], "mask")
    assert_finite(target, "target")
    squared_distance = (rendered - target).pow(2).sum(dim=1, keepdim=True)  # [B, 1, H, W]
    if squared:
        per_pixel = squared_distance
    else:
        # sqrt has an infinite slope at 0: take it only where the error is non-zero,
        # so a perfect pixel contributes exactly 0 with a zero (not NaN) gradient.
        nonzero = squared_distance > 0
        per_pixel = torch.where(nonzero, torch.where(nonzero, squared_distance, 1.0).sqrt(), 0.0)
    mask = mask.to(per_pixel.dtype)
    area = mask.sum(dim=(1, 2, 3)).clamp_min(1.0)  # [B]
    return (per_pixel * mask).sum(dim=(1, 2, 3)) / area


def landmark_weights(**group_weights: float) -> torch.Tensor:
    """Per-landmark weights ``[68]`` from group weights, e.g. ``landmark_weights(mouth=2, eyes=2)``.

    Groups: ``jaw`` (0-16), ``brows`` (17-26), ``nose`` (27-35), ``eyes`` (36-47),
    ``mouth`` (48-67); unnamed groups keep weight 1. The jaw-line landmarks of a
    real photo lie on the silhouette, which moves along the mesh with pose, and a
    detector finds them least reliably; on rendered targets they are exact.
    """
    weights = torch.ones(NUM_LANDMARKS)
    for name, value in group_weights.items():
        if name not in LANDMARK_GROUPS:
            raise KeyError(f"unknown landmark group {name!r}; expected one of {list(LANDMARK_GROUPS)}")
        if not value >= 0:
            raise ValueError(f"landmark weight for {name!r} must be >= 0, got {value}")
        weights[list(LANDMARK_GROUPS[name])] = float(value)
    return weights


def landmark_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    image_size: ImageSize,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Weighted mean squared landmark distance in units of the image size: ``[B]``.

    Args:
        pred, target: ``[B, K, 2]`` pixel coordinates (u right, v down), K = 68 normally.
        image_size: ``S`` or ``(H, W)``: u is divided by W and v by H, so the value
            does not depend on resolution. A shift of ``k`` pixels of every landmark
            in an ``S``-pixel image gives ``(k / S)²``.
        weights: optional ``[K]`` (or ``[B, K]``) non-negative weights; the mean is
            weighted (normalised by the weights' sum), so uniform shifts give the same
            value for any weights. Default: all landmarks equal, like StyleRig's term.
    """
    assert_shape(pred, [None, None, 2], "pred landmarks")
    batch, count, _ = pred.shape
    assert_shape(target, [batch, count, 2], "target landmarks")
    assert_finite(target, "target landmarks")
    height, width = normalize_image_size(image_size)
    scale = pred.new_tensor([1.0 / width, 1.0 / height])
    squared = ((pred - target.to(pred.dtype)) * scale).pow(2).sum(dim=-1)  # [B, K]
    if weights is None:
        return squared.mean(dim=1)
    weights = torch.as_tensor(weights, dtype=pred.dtype, device=pred.device)
    if weights.ndim == 1:
        assert_shape(weights, [count], "landmark weights")
        weights = weights[None].expand(batch, count)
    assert_shape(weights, [batch, count], "landmark weights")
    if bool((weights < 0).any()) or not bool((weights.sum(dim=1) > 0).all()):
        raise ValueError("landmark weights must be >= 0 with a positive sum per image")
    return (squared * weights).sum(dim=1) / weights.sum(dim=1)


def parameter_regulariser(
    params: Union[FaceParams, torch.Tensor], weights: Optional[Mapping[str, float]] = None
) -> torch.Tensor:
    """``Σ_c w_c Σ_k p_{c,k}²`` over the regularised components: ``[B]``.

    ``weights`` maps component names (any of identity, expression, albedo, light,
    pose) to weights; missing names take :data:`DEFAULT_REGULARISATION` (light and
    pose are not regularised by default). Pass ``{"identity": 0.0}`` to switch one off.
    """
    if isinstance(params, torch.Tensor):
        params = FaceParams.from_vector(params)
    merged = {**DEFAULT_REGULARISATION, **(weights or {})}
    total = params.identity.new_zeros(params.batch_size)
    for name, weight in merged.items():
        if weight < 0:
            raise ValueError(f"regularisation weight for {name!r} must be >= 0, got {weight}")
        if weight:
            total = total + float(weight) * params.component(name).pow(2).sum(dim=1)
    return total


# ------------------------------------------------------------------------- face-only model
def crop_face_model(model: FaceModel, parts: Sequence[str] = LOSS_PARTS) -> FaceModel:
    """A :class:`FaceModel` holding only the vertices and triangles of ``parts``.

    Vertices are renumbered, so the result is smaller and faster (the face region is
    9,409 of 26,719 vertices) and renders the same image, mask and landmarks as
    ``render_face(model, p, parts=parts)``. Every landmark must lie on a kept vertex.
    """
    keep_faces = model.face_mask(parts)  # [F]
    return _submodel(model, model.faces[keep_faces], model.face_part[keep_faces])


#: Expressions whose extreme shapes also decide which vertices :func:`decimate_face_model` may merge:
#: vertices that sit together at rest but part when the jaw opens or the eyes close (the lips, the
#: eyelids) must stay apart, or the coarse mouth could not open.
DECIMATION_EXPRESSIONS = ("jawOpen", "eyeBlink_L", "eyeBlink_R")
#: The cell size the training loops use. Measured on 16 random faces against the full face region
#: (9,409 vertices, 18,461 triangles): 2,047 vertices and 4,010 triangles, face masks overlapping with
#: IoU 0.979, colours inside both masks 1.95/255 apart (mean), landmarks identical; forward + backward at
#: 64 px 4x cheaper (157 -> 39 ms for 16 faces, one thread), at 128 px 1.7x (218 -> 130 ms), where the
#: per-pixel work dominates. Adding the three mouth shapes (smile, funnel) kept twice the vertices.
DEFAULT_CELL_CM = 1.0


def decimate_face_model(model: FaceModel, cell_cm: float = DEFAULT_CELL_CM,
                        expressions: Sequence[str] = DECIMATION_EXPRESSIONS) -> FaceModel:
    """A coarser copy of ``model`` by vertex clustering, for losses at 64-128 px.

    Vertices are grouped by the ``cell_cm`` grid cell they occupy at rest *and* in each of
    ``expressions`` at full weight (so parts that separate under an expression stay apart);
    each group is represented by its landmark vertex, if it holds one, else by the vertex
    nearest the group's mean; triangles are re-indexed to the representatives, degenerate and
    repeated ones dropped. Every kept vertex is an original vertex with its original bases, and
    the 68 landmark vertices are all kept, so projected landmarks are *identical* to the full
    model's; the image and the mask differ where the surface is flattened (measured in
    ``tests/test_losses.py``; chapter 5, section 11 times the saving). Apply it to a cropped model
    (``decimate_face_model(crop_face_model(model))``).
    """
    from .params import expression_index

    if not cell_cm > 0:
        raise ValueError(f"cell_cm must be positive, got {cell_cm}")
    V = model.num_vertices
    shapes = [model.neutral] + [model.neutral + model.expression_basis[expression_index(name)].view(V, 3)
                                for name in expressions]
    cells = torch.cat([torch.floor(shape / float(cell_cm)) for shape in shapes], dim=1).long()  # [V, 3 * (1 + E)]
    _, cluster = torch.unique(cells, dim=0, return_inverse=True)  # [V] group id
    groups = int(cluster.max()) + 1
    counts = torch.zeros(groups).index_add_(0, cluster, torch.ones(V))
    centre = torch.zeros(groups, 3).index_add_(0, cluster, model.neutral.float().cpu()) / counts[:, None]
    distance = (model.neutral.float().cpu() - centre[cluster]).norm(dim=1)  # [V]
    order = torch.argsort(distance)  # nearest first: the first vertex seen per group represents it
    representative = torch.full((groups,), -1, dtype=torch.long)
    for vertex in order.flip(0).tolist():  # written last = nearest wins
        representative[cluster[vertex]] = vertex
    landmarks = model.landmark_indices.cpu()
    representative[cluster[landmarks]] = landmarks  # a group with a landmark is represented by it
    mapping = representative[cluster]  # [V] -> representative vertex
    mapping[landmarks] = landmarks  # two landmarks in one group both stay
    faces = mapping[model.faces.cpu()]  # [F, 3]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces, face_part = faces[keep], model.face_part.cpu()[keep]
    _, first = np.unique(np.sort(faces.numpy(), axis=1), axis=0, return_index=True)  # drop repeated triangles
    first = torch.as_tensor(np.sort(first))
    return _submodel(model, faces[first].to(model.faces.device), face_part[first].to(model.faces.device))


def _submodel(model: FaceModel, faces: torch.Tensor, face_part: torch.Tensor) -> FaceModel:
    """The :class:`FaceModel` of ``faces`` (``[F', 3]`` old vertex ids) and their landmarks, renumbered."""
    used = torch.zeros(model.num_vertices, dtype=torch.bool, device=faces.device)
    used[faces.reshape(-1)] = True
    used[model.landmark_indices] = True
    kept = used.nonzero().squeeze(1)  # [V'] old ids, ascending
    new_id = torch.full((model.num_vertices,), -1, dtype=torch.long, device=faces.device)
    new_id[kept] = torch.arange(kept.numel(), device=faces.device)
    landmarks = new_id[model.landmark_indices]

    def per_vertex(basis: torch.Tensor) -> np.ndarray:  # [M, V*3] -> [M, V', 3]
        return basis.view(basis.shape[0], model.num_vertices, 3)[:, kept].cpu().numpy()

    arrays = {
        "neutral": model.neutral[kept].cpu().numpy(),
        "identity": per_vertex(model.identity_basis),
        "expression": per_vertex(model.expression_basis),
        "albedo_mean": model.albedo_mean[kept].cpu().numpy(),
        "albedo_basis": per_vertex(model.albedo_basis),
        "faces": new_id[faces].cpu().numpy(),
        "face_part": face_part.cpu().numpy(),
        "landmarks": landmarks.cpu().numpy(),
    }
    sub = FaceModel(arrays).to(model.neutral.device)
    sub.vertex_part = model.vertex_part[kept].clone()  # FaceModel fills it for the full head
    return sub


_CROP_CACHE: "weakref.WeakKeyDictionary[FaceModel, Dict[tuple, FaceModel]]" = weakref.WeakKeyDictionary()


def _cropped(model: FaceModel, parts: Sequence[str], cell_cm: Optional[float] = None) -> FaceModel:
    """Crop (and decimate, with ``cell_cm``) once per (model, parts, cell, device): the loss runs every step."""
    per_model = _CROP_CACHE.setdefault(model, {})
    key = (tuple(parts), cell_cm, str(model.neutral.device), model.neutral.dtype)
    if key not in per_model:
        cropped = crop_face_model(model, parts)
        per_model[key] = cropped if cell_cm is None else decimate_face_model(cropped, cell_cm)
    return per_model[key]


# ------------------------------------------------------------------------------ L_render
@dataclasses.dataclass
class RenderLossTerms:
    """What :func:`render_loss` computes, per image (all ``[B]``) plus the render."""

    total: torch.Tensor
    photometric: torch.Tensor
    landmark: torch.Tensor
    render: RenderOutput

    def as_floats(self) -> Dict[str, float]:
        """Batch means as plain floats (for logs and histories)."""
        return {name: float(getattr(self, name).detach().mean()) for name in ("total", "photometric", "landmark")}


def render_loss(
    model: FaceModel,
    params_pred: Union[FaceParams, torch.Tensor],
    target_image: torch.Tensor,
    target_landmarks: Optional[torch.Tensor] = None,
    camera: Optional[Camera] = None,
    *,
    w_photo: float = DEFAULT_W_PHOTO,
    w_land: float = DEFAULT_W_LAND,
    landmark_weights: Optional[torch.Tensor] = None,
    parts: Sequence[str] = LOSS_PARTS,
    squared: bool = False,
    mesh_cell_cm: Optional[float] = None,
) -> RenderLossTerms:
    """StyleRig's ``L_render``: render ``params_pred`` and compare with an image and its landmarks.

    Args:
        model: the face model (cropped internally to ``parts`` for speed).
        params_pred: :class:`FaceParams` or ``[B, 196]``, differentiable.
        target_image: ``[B, 3, H, W]`` in [0, 1]; H, W must match ``camera``.
        target_landmarks: ``[B, 68, 2]`` pixel coordinates, or None to skip the term.
        camera: default ``default_camera(W)`` (the book's camera at the image's size).
        w_photo, w_land: term weights (defaults :data:`DEFAULT_W_PHOTO`, :data:`DEFAULT_W_LAND`).
        landmark_weights: optional ``[68]`` weights for :func:`landmark_loss`.
        parts: mesh parts rendered; the photometric mask is where they are visible.
        squared: photometric norm, see :func:`photometric_loss`.
        mesh_cell_cm: render a :func:`decimate_face_model` copy with this cell size (None: the full
            face region). Landmarks are unchanged; the image is an approximation, several times cheaper.

    Returns:
        :class:`RenderLossTerms` with ``total = w_photo·photometric + w_land·landmark``.
    """
    assert_shape(target_image, [None, 3, None, None], "target_image")
    batch, _, height, width = target_image.shape
    if camera is None:
        camera = default_camera(width)
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a stylerig_lite.camera.Camera, got {type(camera).__name__}")
    if (camera.height, camera.width) != (height, width):
        raise ValueError(
            f"target_image is {height}x{width} but the camera renders {camera.height}x{camera.width}; "
            "pass camera.with_image_size(...) matching the image"
        )
    if isinstance(params_pred, torch.Tensor):
        params_pred = FaceParams.from_vector(params_pred)
    if params_pred.batch_size != batch:
        raise ValueError(f"params_pred has batch size {params_pred.batch_size} but target_image has {batch}")
    render = render_face(_cropped(model, parts, mesh_cell_cm), params_pred, camera, parts=parts)
    photometric = photometric_loss(render.image, target_image, render.mask, squared=squared)
    if target_landmarks is None:
        landmark = photometric.new_zeros(batch)
    else:
        assert_shape(target_landmarks, [batch, NUM_LANDMARKS, 2], "target_landmarks")
        landmark = landmark_loss(
            render.landmarks, target_landmarks, image_size=(height, width), weights=landmark_weights
        )
    total = w_photo * photometric + w_land * landmark
    return RenderLossTerms(total=total, photometric=photometric, landmark=landmark, render=render)


class RenderLoss:
    """:func:`render_loss` with its settings bound, for training loops (F, RigNet).

    ``RenderLoss(model, camera)(params, image, landmarks)`` returns :class:`RenderLossTerms`;
    use ``.total.mean()`` as the scalar to minimise.
    """

    def __init__(
        self,
        model: FaceModel,
        camera: Optional[Camera] = None,
        *,
        w_photo: float = DEFAULT_W_PHOTO,
        w_land: float = DEFAULT_W_LAND,
        landmark_weights: Optional[torch.Tensor] = None,
        parts: Sequence[str] = LOSS_PARTS,
        squared: bool = False,
        mesh_cell_cm: Optional[float] = None,
    ):
        if w_photo < 0 or w_land < 0:
            raise ValueError(f"loss weights must be >= 0, got w_photo={w_photo}, w_land={w_land}")
        self.model = model
        self.camera = camera
        self.w_photo = float(w_photo)
        self.w_land = float(w_land)
        self.landmark_weights = landmark_weights
        self.parts = tuple(parts)
        self.squared = squared
        self.mesh_cell_cm = mesh_cell_cm

    def __call__(
        self,
        params_pred: Union[FaceParams, torch.Tensor],
        target_image: torch.Tensor,
        target_landmarks: Optional[torch.Tensor] = None,
    ) -> RenderLossTerms:
        return render_loss(
            self.model,
            params_pred,
            target_image,
            target_landmarks,
            self.camera,
            w_photo=self.w_photo,
            w_land=self.w_land,
            landmark_weights=self.landmark_weights,
            parts=self.parts,
            squared=self.squared,
            mesh_cell_cm=self.mesh_cell_cm,
        )

    def __repr__(self) -> str:
        return (
            f"RenderLoss(w_photo={self.w_photo}, w_land={self.w_land}, parts={self.parts}, "
            f"norm={'squared l2' if self.squared else 'l2,1'})"
        )


__all__ = [
    "DEFAULT_REGULARISATION",
    "DEFAULT_W_LAND",
    "DEFAULT_W_PHOTO",
    "LANDMARK_GROUPS",
    "LOSS_PARTS",
    "RenderLoss",
    "RenderLossTerms",
    "crop_face_model",
    "decimate_face_model",
    "DECIMATION_EXPRESSIONS",
    "DEFAULT_CELL_CM",
    "landmark_loss",
    "landmark_weights",
    "parameter_regulariser",
    "photometric_loss",
    "render_loss",
]
