"""Differentiable mesh renderer: our vectorized rasterizer, or pytorch3d as the reference.

``render_mesh`` draws a batch of coloured triangle meshes with the project
camera and spherical-harmonics lighting:

1. vertex normals (area weighted) -> SH shading per vertex -> vertex colour
   ``albedo * shading`` (Gouraud shading: the lit colour is computed at the
   vertices and interpolated over each triangle). This is the per-vertex
   image formation model of MoFA and StyleRig, where reflectance and
   illumination are defined per vertex; at 64-128 px a triangle of the ICT
   head covers about a pixel, so per-pixel shading would look the same.
   The ``"ours"`` backend shades only the vertices the image reads (the
   corners of visible faces, normals from the faces around them: see
   :func:`shading_support`), which changes no number; ``RenderOutput.normals``
   and ``.vertex_colors`` compute the whole mesh's on first access.
2. rasterize (``backend="ours"``: :mod:`stylerig_lite.rasterize`; or
   ``backend="pytorch3d"``: ``MeshRasterizer`` with ``blur_radius=0``,
   ``faces_per_pixel=1``, ``perspective_correct=True``), then interpolate the
   vertex colours with perspective-correct barycentrics, and composite over the
   background with the hard coverage mask.

Where a gradient is recorded (float32 on the CPU, Numba installed), the projection of the shaded
vertices, step 1 and the interpolation of step 2 run as one compiled forward and one compiled
backward (:mod:`stylerig_lite.render_jit`), equal to the tensor operations below to float rounding;
a forward pass without gradients keeps the bit-exact compiled loops of :mod:`~stylerig_lite.shading_jit`.

Gradients flow to vertex positions (through the visible triangle's
barycentrics and through the normals), vertex colours and the SH
coefficients. Coverage and occlusion are hard: the mask has no gradient and
silhouette / occlusion edges do not move under gradient descent (see
:mod:`stylerig_lite.rasterize`).

The pytorch3d backend lives in :mod:`stylerig_lite.render_pytorch3d` (same camera,
same pixel grid); tests check the two backends agree (mask IoU, image difference,
landmarks). Floor: 3DMM. Defined in chapter 3 (``notebooks/03_differentiable_rendering.ipynb``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from stylerig_lite import render_jit
from stylerig_lite.camera import Camera, ImageSize, check_finite
from stylerig_lite.checks import assert_finite, assert_shape
from stylerig_lite.rasterize import (
    Fragments,
    check_mesh,
    fragments_from_face_index,
    interpolate,
    rasterize,
    visible_faces,
)
from stylerig_lite.render_pytorch3d import (  # noqa: F401  (the reference backend, re-exported)
    PYTORCH3D_MISSING,
    import_pytorch3d,
    project_pytorch3d,
    pytorch3d_available,
    pytorch3d_cameras,
    rasterize_pytorch3d,
)
from stylerig_lite.shading import NUM_GAMMA, SH_FACTORS, sh_shading, vertex_normals

BACKENDS = ("ours", "pytorch3d")



@dataclasses.dataclass
class RenderOutput:
    """Everything a render produces.

    Attributes:
        image: ``[B, 3, H, W]`` shaded colour composited over the background.
        mask: ``[B, 1, H, W]`` float, 1 where the mesh covers the pixel centre (no gradient).
        face_index: ``[B, H, W]`` long, visible face id, -1 on background.
        part_index: ``[B, H, W]`` long part id of the visible face (-1 background), or None
            when no ``face_part`` was given.
        depth: ``[B, 1, H, W]`` camera depth z_c in cm, 0 on background.
        landmarks: ``[B, K, 2]`` projected pixel coordinates of the landmark vertices, or None.
        normals: ``[B, V, 3]`` unit vertex normals used for shading (world frame).
        vertex_colors: ``[B, V, 3]`` lit vertex colours ``albedo * shading`` that were interpolated.
        fragments: the rasterizer's packed per-pixel record (barycentrics etc.).
        part_names: names of the part ids, when given, for :meth:`part_mask`.
    """

    image: torch.Tensor
    mask: torch.Tensor
    face_index: torch.Tensor
    part_index: Optional[torch.Tensor]
    depth: torch.Tensor
    landmarks: Optional[torch.Tensor]
    fragments: Fragments
    part_names: Optional[Tuple[str, ...]] = None
    _full_shading: Optional[Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = dataclasses.field(
        default=None, repr=False
    )
    _shading: Optional[Tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default=None, repr=False)

    def _shade(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._shading is None:
            self._shading = self._full_shading()
        return self._shading

    @property
    def normals(self) -> torch.Tensor:
        """``[B, V, 3]`` unit vertex normals (world frame), the ones the image was shaded with.

        Computed on first access for every vertex (the render itself shades only the vertices of
        visible faces); equal, bit for bit, where the image reads them, and differentiable.
        """
        return self._shade()[0]

    @property
    def vertex_colors(self) -> torch.Tensor:
        """``[B, V, 3]`` lit vertex colours ``albedo * shading`` (first access computes them, as :attr:`normals`)."""
        return self._shade()[1]

    @property
    def bary(self) -> torch.Tensor:
        """``[B, H, W, 3]`` perspective-correct barycentrics of the visible face (0 on background)."""
        return self.fragments.dense_bary()

    def part_mask(self, parts: Union[int, str, Sequence[Union[int, str]]]) -> torch.Tensor:
        """``[B, 1, H, W]`` float mask of the pixels showing any of ``parts`` (ids or names)."""
        if self.part_index is None:
            raise ValueError("part_mask needs render_mesh(..., face_part=...) to know each face's part")
        if isinstance(parts, (int, str)):
            parts = [parts]
        ids = []
        for part in parts:
            if isinstance(part, str):
                if self.part_names is None or part not in self.part_names:
                    raise ValueError(
                        f"unknown part name {part!r}; known names: {list(self.part_names or [])} "
                        "(pass part_names=... to render_mesh to use names)"
                    )
                ids.append(self.part_names.index(part))
            else:
                ids.append(int(part))
        wanted = torch.tensor(ids, dtype=torch.long, device=self.part_index.device)
        return torch.isin(self.part_index, wanted).unsqueeze(1).to(self.image.dtype)

    def part_masks(self) -> Dict[str, torch.Tensor]:
        """``{name: [B, 1, H, W] mask}`` for every named part."""
        if self.part_names is None:
            raise ValueError("part_masks needs render_mesh(..., face_part=..., part_names=...)")
        return {name: self.part_mask(i) for i, name in enumerate(self.part_names)}


# ----------------------------------------------------------------------------------- inputs
def _check_per_vertex(values: torch.Tensor, batch: int, num_vertices: int, name: str) -> torch.Tensor:
    assert_shape(values, [None, num_vertices, 3], name)
    if values.shape[0] not in (1, batch):
        raise ValueError(f"{name} has batch size {values.shape[0]}, expected {batch} (or 1 to share)")
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {values.dtype}")
    check_finite(values, name)
    return values.expand(batch, num_vertices, 3)


def _check_index(values: torch.Tensor, length: Optional[int], upper: int, name: str, what: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    assert_shape(values, [length], name)
    if values.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer (long) tensor, got {values.dtype}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= upper):
        raise ValueError(f"{name} must index {what} in 0..{upper - 1}, got {int(values.min())}..{int(values.max())}")
    return values.long()


def _background(background, batch: int, height: int, width: int, dtype, device) -> Optional[torch.Tensor]:
    """None / float / [3] / [B, 3] / [3, H, W] / [B, 3, H, W] -> broadcastable [B|1, 3, H|1, W|1]."""
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.ndim == 0:
        bg = bg.expand(3).view(1, 3, 1, 1)
    elif bg.ndim == 1:
        assert_shape(bg, [3], "background")
        bg = bg.view(1, 3, 1, 1)
    elif bg.ndim == 2:
        assert_shape(bg, [None, 3], "background")
        bg = bg.view(bg.shape[0], 3, 1, 1)
    elif bg.ndim == 3:
        assert_shape(bg, [3, height, width], "background")
        bg = bg[None]
    else:
        assert_shape(bg, [None, 3, height, width], "background")
    if bg.shape[0] not in (1, batch):
        raise ValueError(f"background has batch size {bg.shape[0]}, expected {batch} (or 1 to share)")
    assert_finite(bg, "background")
    return bg


# ----------------------------------------------------------------------------------- render
@dataclasses.dataclass
class ShadingSupport:
    """The part of a mesh that one rendered batch reads: see :func:`shading_support`.

    Attributes:
        vertices: ``[Vs]`` long, sorted ids of every vertex of the faces in :attr:`faces`.
        faces: ``[Fs, 3]`` long, the faces touching a corner of a visible face, in their original
            order, as compact vertex ids (positions in :attr:`vertices`, ``0 .. Vs - 1``).
        corners: ``[F, 3]`` long, every face of the mesh as compact vertex ids (-1 outside).
        num_vertices: ``V``, the mesh's vertex count.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    corners: torch.Tensor
    num_vertices: int

    def mesh_ids(self, vertex_ids: torch.Tensor) -> torch.Tensor:
        """Flat compact ids ``b * Vs + c`` (any shape) -> flat mesh ids ``b * V + vertices[c]``."""
        kept = self.vertices.shape[0]
        image = torch.div(vertex_ids, kept, rounding_mode="floor")
        compact = (vertex_ids - image * kept).view(-1)
        return image * self.num_vertices + self.vertices.index_select(0, compact).view_as(vertex_ids)


def shading_support(face_index: torch.Tensor, faces: torch.Tensor, num_vertices: int) -> ShadingSupport:
    """The vertices a render reads, and the faces their normals need (union over the batch).

    An image reads positions and colours only at the corners of its visible faces, and an
    area-weighted vertex normal sums the faces around its vertex. So the normals and colours of
    those corners computed on the sub-mesh of the faces touching them are the full mesh's, bit for
    bit: the faces keep their order, so every vertex sums the same terms in the same order (and
    :func:`~stylerig_lite.shading.sh_shading` treats every point alone). For the ICT head at 64 px
    (batch 16, yaw within 20 degrees) the support is 28% of the faces and 31% of the vertices.
    """
    device = faces.device
    shown = torch.zeros(faces.shape[0], dtype=torch.bool, device=device)
    drawn = face_index.view(-1)
    shown[drawn[drawn >= 0]] = True
    corner = torch.zeros(num_vertices, dtype=torch.bool, device=device)
    corner[faces[shown].view(-1)] = True  # corners of visible faces
    touching = faces[corner[faces].any(dim=1)]  # [Fs, 3] faces around them, original order
    used = torch.zeros(num_vertices, dtype=torch.bool, device=device)
    used[touching.view(-1)] = True
    vertices = used.nonzero().squeeze(1)
    remap = torch.full((num_vertices,), -1, dtype=torch.long, device=device)
    remap[vertices] = torch.arange(vertices.shape[0], device=device)
    return ShadingSupport(vertices=vertices, faces=remap[touching], corners=remap[faces], num_vertices=num_vertices)


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    vertex_colors: torch.Tensor,
    gamma: torch.Tensor,
    camera: Optional[Camera] = None,
    image_size: Optional[ImageSize] = None,
    face_part: Optional[torch.Tensor] = None,
    landmark_indices: Optional[torch.Tensor] = None,
    background=None,
    backend: str = "ours",
    part_names: Optional[Sequence[str]] = None,
    cull_backfaces: bool = False,
) -> RenderOutput:
    """Render lit, coloured meshes.

    Args:
        vertices: ``[B, V, 3]`` world-space positions in cm.
        faces: ``[F, 3]`` long vertex indices (counter-clockwise seen from outside).
        vertex_colors: ``[B, V, 3]`` albedo (``[1, V, 3]`` shares one).
        gamma: ``[B, 27]`` SH lighting (``[1, 27]`` shares one), see :mod:`stylerig_lite.shading`.
        camera: :class:`Camera` (default ``Camera()``: 100 cm away, 40 cm field of view).
        image_size: ``H`` or ``(H, W)``; overrides ``camera.image_size``.
        face_part: optional ``[F]`` long part id per face -> ``part_index``.
        landmark_indices: optional ``[K]`` long vertex ids (68 for the face model) -> ``landmarks``.
        background: None (black), a float, RGB ``[3]``, ``[B, 3]``, ``[3, H, W]`` or ``[B, 3, H, W]``.
        backend: ``"ours"`` (vectorized PyTorch) or ``"pytorch3d"`` (reference, optional dependency).
        part_names: optional names of the part ids, for ``RenderOutput.part_mask("name")``.
        cull_backfaces: drop triangles facing away from the camera (default off, like pytorch3d).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if camera is None:
        camera = Camera()
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a stylerig_lite.camera.Camera, got {type(camera).__name__}")
    if image_size is not None:
        camera = camera.with_image_size(image_size)
    check_mesh(vertices, faces)
    faces = faces.long()
    batch, num_vertices, _ = vertices.shape
    height, width = camera.height, camera.width
    albedo = _check_per_vertex(vertex_colors, batch, num_vertices, "vertex_colors")
    assert_shape(gamma, [None, NUM_GAMMA], "gamma")
    if gamma.shape[0] not in (1, batch):
        raise ValueError(f"gamma has batch size {gamma.shape[0]}, expected {batch} (or 1 to share)")
    if face_part is not None:
        face_part = _check_index(face_part, faces.shape[0], 2**62, "face_part", "parts (one id per face)")
    if landmark_indices is not None:
        landmark_indices = _check_index(landmark_indices, None, num_vertices, "landmark_indices", "vertices")
    bg = _background(background, batch, height, width, vertices.dtype, vertices.device)
    if backend == "pytorch3d":
        import_pytorch3d()  # fail early with the install hint

    gamma = gamma.to(vertices.dtype)

    def full_shading():
        normals = vertex_normals(vertices, faces)  # [B, V, 3]
        return normals, albedo * sh_shading(normals, gamma)  # [B, V, 3] Gouraud: lit at vertices

    shading = None
    if backend == "ours":
        with torch.no_grad():
            uv, depth = camera.project(vertices)  # also rejects a camera inside / behind the head
        face_index = visible_faces(uv, depth, faces, height, width, cull_backfaces=cull_backfaces)
        # Everything differentiable runs on the support only: the corners of visible faces and
        # the faces around them (the same numbers, bit for bit, as on the whole mesh).
        support = shading_support(face_index, faces, num_vertices)
        if render_jit.usable(vertices, albedo, gamma):  # a gradient to record: two compiled loops
            assert_finite(gamma, "gamma")  # (sh_shading's check)
            fragments, image = render_jit.shade_interpolate(vertices, albedo, gamma, camera, support, face_index,
                                                            SH_FACTORS, uv=uv, depth=depth)
        else:  # the reference: tensor operations, each with its own backward
            kept = vertices.index_select(1, support.vertices)  # [B, Vs, 3]
            uv, depth = camera.project(kept)
            fragments = fragments_from_face_index(face_index, uv, depth, support.corners)
            normals = vertex_normals(kept, support.faces)  # [B, Vs, 3]
            colors = albedo.index_select(1, support.vertices) * sh_shading(normals, gamma)
            image = interpolate(fragments, colors)  # [B, 3, H, W], zero on background
        fragments = dataclasses.replace(fragments, vertex_ids=support.mesh_ids(fragments.vertex_ids))
        landmarks = None
        if landmark_indices is not None:
            landmarks = camera.project(vertices.index_select(1, landmark_indices))[0]
    else:
        camera.project(vertices)  # rejects a camera inside / behind the head
        fragments = rasterize_pytorch3d(vertices, faces, camera, cull_backfaces=cull_backfaces)
        landmarks = project_pytorch3d(vertices[:, landmark_indices], camera) if landmark_indices is not None else None
        shading = full_shading()
        image = interpolate(fragments, shading[1])  # [B, 3, H, W], zero on background

    mask = fragments.mask()
    if bg is not None:
        image = image + (1.0 - mask) * bg
    part_index = None
    if face_part is not None:
        face_index = fragments.face_index
        part_index = torch.where(face_index >= 0, face_part[face_index.clamp_min(0)], torch.full_like(face_index, -1))
    return RenderOutput(
        image=image,
        mask=mask,
        face_index=fragments.face_index,
        part_index=part_index,
        depth=fragments.dense_depth(),
        landmarks=landmarks,
        fragments=fragments,
        part_names=tuple(part_names) if part_names is not None else None,
        _full_shading=full_shading,
        _shading=shading,
    )


__all__ = [
    "BACKENDS",
    "PYTORCH3D_MISSING",
    "RenderOutput",
    "ShadingSupport",
    "render_mesh",
    "shading_support",
    "rasterize",
    "rasterize_pytorch3d",
    "project_pytorch3d",
    "pytorch3d_available",
    "pytorch3d_cameras",
    "Fragments",
    "interpolate",
    "icosphere",
]


def icosphere(subdivisions: int = 1, radius: float = 1.0, dtype: torch.dtype = torch.float32):
    """A unit-ish sphere mesh for demos and tests: ``(vertices [V, 3], faces [F, 3] long)``.

    Starts from the regular icosahedron (12 vertices, 20 faces) and splits every
    triangle into 4, ``subdivisions`` times, projecting new vertices onto the
    sphere. Faces are counter-clockwise seen from outside (outward normals).
    """
    if not isinstance(subdivisions, int) or subdivisions < 0:
        raise ValueError(f"subdivisions must be an int >= 0, got {subdivisions!r}")
    t = (1.0 + 5.0**0.5) / 2.0
    verts = [
        (-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0),
        (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
        (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1),
    ]  # fmt: skip
    faces = [
        (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
        (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
        (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
        (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
    ]  # fmt: skip
    points = [tuple(c / (1.0 + t * t) ** 0.5 for c in v) for v in verts]
    for _ in range(subdivisions):
        midpoint_cache: Dict[Tuple[int, int], int] = {}

        def midpoint(i: int, j: int) -> int:
            key = (min(i, j), max(i, j))
            if key not in midpoint_cache:
                m = [(a + b) / 2.0 for a, b in zip(points[i], points[j])]
                norm = sum(c * c for c in m) ** 0.5
                points.append(tuple(c / norm for c in m))
                midpoint_cache[key] = len(points) - 1
            return midpoint_cache[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    vertices = torch.tensor(points, dtype=dtype) * radius
    return vertices, torch.tensor(faces, dtype=torch.long)
