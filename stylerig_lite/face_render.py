"""Render the 3DMM face alone: parameters -> image, masks, 2D landmarks.

The one place that joins :class:`~stylerig_lite.morphable.FaceModel` to the
renderer, so that chapters, fitting and the losses draw faces the same way.
FaceWorld (:mod:`stylerig_lite.world`) adds hair, clothes and backgrounds on top.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .camera import Camera
from .morphable import DEFAULT_VISIBLE_PARTS, PART_NAMES, FaceModel, FaceParams
from .render import RenderOutput, render_mesh

__all__ = [
    "default_camera",
    "render_face",
]


def default_camera(image_size: int = 64) -> Camera:
    """The book's camera: 100 cm away, a 40 cm tall field of view."""
    return Camera(distance=100.0, focal=2.5, image_size=image_size)


def render_face(
    model: FaceModel,
    params: Union[FaceParams, torch.Tensor],
    camera: Optional[Camera] = None,
    *,
    parts: Sequence[str] = DEFAULT_VISIBLE_PARTS,
    background: Optional[Union[float, torch.Tensor]] = None,
    backend: str = "ours",
) -> RenderOutput:
    """Shade and rasterize the face model for ``params`` (differentiable in ``params``).

    ``parts`` selects which pieces of the ICT head are drawn (e.g. ``["face"]``
    for the face region alone, as the paper's renderings show it).
    """
    if isinstance(params, torch.Tensor):
        params = FaceParams.from_vector(params)
    camera = camera or default_camera()
    geometry = model(params)
    keep = model.face_mask(parts)
    return render_mesh(
        geometry.vertices,
        model.faces[keep],
        geometry.albedo,
        geometry.light,
        camera,
        face_part=model.face_part[keep],
        landmark_indices=model.landmark_indices,
        background=background,
        backend=backend,
        part_names=PART_NAMES,
    )
