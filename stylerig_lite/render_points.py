"""A point-splat renderer: the 3DMM preview that follows the editor's sliders.

Floor: 3DMM (a renderer beside :mod:`~stylerig_lite.rasterize` /
:mod:`~stylerig_lite.render`, as pytorch3d keeps a points renderer beside its
mesh renderer). Used by chapter 6 (``notebooks/06_interactive_editing.ipynb``),
whose editor draws the target parameters beside the GAN image on every slider
event. Not differentiable, and not meant to be: figures and losses use
:func:`~stylerig_lite.face_render.render_face`; :meth:`PreviewRenderer.render_exact`
draws the same face with it.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as nnf

from . import rasterize_jit
from .camera import Camera
from .face_render import default_camera, render_face
from .morphable import FaceModel
from .params import SLICES, FaceParams, euler_to_matrix
from .shading import SH_FACTORS, sh_shading, vertex_normals

__all__ = ["PREVIEW_PARTS", "PreviewRenderer", "frame_matrix", "point_features"]

#: Parts drawn in the editor's 3DMM rendering: the face with eyes and mouth, as in the paper's figures.
PREVIEW_PARTS: Tuple[str, ...] = ("face", "mouth_interior", "teeth", "eyes")


class PreviewRenderer:
    """The 3DMM rendering of the target parameters, fast enough to follow a slider.

    ``render_face`` (the triangle rasterizer) costs ~10-20 ms per image on a 2-core CPU, mostly
    fixed per-call work, which is more than a 64 px generator forward pass. The editor only needs
    a small preview, so this renderer splats vertices instead of rasterizing triangles, and caches
    everything that a slider does not change:

    * geometry: a subset of the face's vertices, one per grid cell of ``density`` preview pixels
      (on the neutral head), so each pixel receives about 1/density² points; points are shaded
      with vertex normals of the full face mesh (Gouraud-like, like :func:`render_face`);
    * cache: unposed shape and normals are recomputed only when identity or expression change
      (pose and light only rotate normals and reshade), albedo only when albedo changes;
    * z-buffer: per pixel the nearest front-facing point wins (``scatter_reduce(amin)``), and
      isolated empty pixels inside the face are filled from their neighbours.

    :meth:`render_exact` draws the same parameters with :func:`render_face` (triangles), for saved
    figures. :meth:`render` folds each frame's pose, projection and shading into one small matrix
    product and runs as one compiled loop (NumPy without Numba); :meth:`render_reference` is the
    same splatting step by step in torch (the tests check that both draw the same image).
    """

    def __init__(self, face_model: FaceModel, image_size: int = 40, *, parts: Sequence[str] = PREVIEW_PARTS,
                 camera: Optional[Camera] = None, density: float = 0.5, background: float = 1.0):
        if image_size < 8:
            raise ValueError(f"preview image_size must be >= 8 pixels, got {image_size}")
        if not 0.05 <= density <= 2.0:
            raise ValueError(f"density (grid cell in preview pixels) must be in [0.05, 2], got {density}")
        self.model = face_model
        self.parts = tuple(parts)
        self.camera = (camera or default_camera(image_size)).with_image_size(image_size)
        self.image_size = int(image_size)
        self.background = float(background)
        faces = face_model.faces[face_model.face_mask(self.parts)]  # [F, 3]
        used = torch.unique(faces)  # [U] vertex ids of the drawn parts
        local = torch.full((face_model.num_vertices,), -1, dtype=torch.long, device=used.device)
        local[used] = torch.arange(len(used), device=used.device)
        self._faces = local[faces]  # [F, 3] indices into the used vertices
        self._used = used
        # One point per cell of `density` pixels at the head's depth (the camera's pixel footprint there).
        pixel_cm = self.camera.distance / (self.camera.focal * self.image_size)
        cell = torch.floor(face_model.neutral[used] / (density * pixel_cm)).long()
        _, cell_id = torch.unique(cell, dim=0, return_inverse=True)
        order = torch.arange(len(used), device=used.device)
        first = torch.full((int(cell_id.max()) + 1,), len(used), device=used.device).scatter_reduce(
            0, cell_id, order, "amin")
        self._points = first  # [P] indices into the used vertices
        coords = lambda basis: basis.view(basis.shape[0], -1, 3)[:, used].reshape(basis.shape[0], -1)  # noqa: E731
        self._identity_basis = coords(face_model.identity_basis)  # [100, U*3]
        self._expression_basis = coords(face_model.expression_basis)  # [53, U*3]
        self._neutral = face_model.neutral[used]  # [U, 3]
        self._plane_offsets = np.arange(4)[:, None] * ((self.image_size + 2) ** 2 + 1)  # [4, 1], see render()
        self._shape_key: Optional[List[float]] = None
        self._identity_key: Optional[List[float]] = None
        self._albedo_key: Optional[List[float]] = None

    @property
    def num_points(self) -> int:
        return int(self._points.shape[0])

    def _unposed(self, params: FaceParams, values: Optional[List[float]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached unposed points ``[P, 3]`` and unit normals ``[P, 3]`` for (identity, expression).

        ``values``: the parameters as Python floats (``params.to_vector()[0].tolist()``) if already at hand.
        """
        values = params.to_vector()[0].tolist() if values is None else values
        identity_key = values[SLICES["identity"]]
        key = identity_key + values[SLICES["expression"]]
        if key != self._shape_key:
            if identity_key != self._identity_key:
                self._with_identity = self._neutral + (params.identity @ self._identity_basis).view(-1, 3)
                self._identity_key = identity_key
            shape = self._with_identity + (params.expression @ self._expression_basis).view(-1, 3)  # [U, 3]
            normals = vertex_normals(shape[None], self._faces)[0]  # [U, 3] from the full face mesh
            self._points_xyz, self._points_normal = shape[self._points], normals[self._points]
            self._features = point_features(self._points_xyz, self._points_normal)
            self._shape_key = key
        return self._points_xyz, self._points_normal

    def _albedo(self, params: FaceParams, values: Optional[List[float]] = None) -> torch.Tensor:
        key = (params.to_vector()[0].tolist() if values is None else values)[SLICES["albedo"]]
        if key != self._albedo_key:
            self._points_albedo = self.model.colour(params.albedo)[0, self._used[self._points]]  # [P, 3]
            ones = torch.ones_like(self._points_albedo[:, :1])
            rows = torch.cat([self._points_albedo, ones], 1).T  # [4, P]: albedo, 1
            self._points_albedo_rows = np.ascontiguousarray(rows.cpu().numpy(), dtype=np.float32)
            self._albedo_key = key
        return self._points_albedo

    @torch.no_grad()
    def render(self, params: FaceParams) -> torch.Tensor:
        """The preview image ``[3, H, W]`` in [0, 1] of one face (``params`` of batch size 1).

        The same image as :meth:`render_reference` (up to float rounding), with the per-frame work
        folded into one small matrix product: pose, camera projection and SH shading are all linear
        in per-point features that depend only on the cached shape (positions, normals and the
        normals' quadratic monomials, :func:`point_features`), so one ``[8, 13]`` matrix built from
        the pose, the camera and the light (:func:`frame_matrix`) gives every point's pixel
        coordinates, depth, facing and colour: the shading ``H(R n) . gamma`` is a quadratic form in
        ``n``, and rotating the normal only changes the form's coefficients. The z-buffer then works
        on all points at once, sending culled and hidden points to a spare pixel. With Numba (and
        ``STYLERIG_LITE_RASTERIZER`` not ``torch``) the frame after the matrix is one compiled loop,
        the same image as the NumPy path (:meth:`_render_numpy`) bit for bit (tested): in the editor,
        0.66-0.77 ms a frame against 1.22-1.34 ms (``python -m stylerig_lite.bench --threads 2 edit``,
        three runs of each, alternating). The NumPy path is some 40 operations on a few thousand
        numbers, where each torch call's fixed cost (several microseconds, more with cold caches
        between slider events) would dominate.
        """
        if params.batch_size != 1:
            raise ValueError(f"PreviewRenderer draws one face at a time, got a batch of {params.batch_size}")
        values = params.to_vector()[0].tolist()  # every number the frame needs, in one call
        self._unposed(params, values)
        self._albedo(params, values)
        size, camera = self.image_size, self.camera
        matrix = frame_matrix(values[SLICES["pose"]], values[SLICES["light"]], camera.focal_pixels, camera.distance)
        if rasterize_jit.available():  # the same steps as one compiled loop (below): about 0.13 ms here
            image = np.empty((3, size, size), dtype=np.float32)
            _preview_frame(matrix, self._features, self._points_albedo_rows, size, np.float32(camera.near),
                           np.float32(self.background), image)
            return torch.from_numpy(image)
        return self._render_numpy(matrix)

    def _render_numpy(self, matrix: np.ndarray) -> torch.Tensor:
        """:meth:`render`'s splatting in NumPy, from the frame's ``[8, 13]`` matrix (without Numba)."""
        size, camera = self.image_size, self.camera
        # [8, P]: f x, -f y, depth, posed normal z, R, G, B shading, 1. einsum, not `@`: NumPy's `@` calls
        # OpenBLAS, whose threads fall asleep between frames; waking them took 1.0-1.5 ms a frame in a loop of
        # renders, against 0.06 ms in a loop of products alone; einsum's own loop takes about 0.2 ms
        rows = np.einsum("ij,jk->ik", matrix, self._features)
        depth = rows[2]
        stride, spare = size + 2, (size + 2) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):  # culled points may sit at depth 0
            uv = np.floor(rows[:2] / depth + size / 2)  # [2, P] pixel column and row
            # The camera looks along -z, so a normal with z > 0 faces it; a small margin keeps silhouettes solid.
            keep = (rows[3] > -0.1) & (depth > camera.near) & (uv >= 0).all(0) & (uv < size).all(0)
            # Pixels of a zero-padded (size + 2)² grid (the hole filling's neighbours), plus one
            # spare pixel at the end where culled and hidden points go.
            pixel = np.where(keep, uv[1] * stride + uv[0] + (stride + 1), spare).astype(np.intp)
        zbuffer = np.full(spare + 1, np.inf, dtype=np.float32)
        np.minimum.at(zbuffer, pixel, depth)
        pixel = np.where(depth <= zbuffer[pixel], pixel, spare)
        canvas = np.zeros((4, spare + 1), dtype=np.float32)  # R, G, B, covered (channel planes, flat)
        # colour = albedo x shading, covered = 1; one flat write, the planes spare + 1 apart
        canvas.reshape(-1)[pixel + self._plane_offsets] = self._points_albedo_rows * rows[4:]
        image, covered = _fill_holes_padded(canvas[:, :spare].reshape(4, stride, stride))
        return torch.from_numpy(np.where(covered, image, np.float32(self.background)).clip(0, 1))

    @torch.no_grad()
    def render_reference(self, params: FaceParams) -> torch.Tensor:
        """Slow reference of :meth:`render`: rotate, shade, project, cull, z-buffer, fill, step by step.

        Points and normals rotated with :func:`euler_to_matrix`, shaded with :func:`sh_shading`;
        the same image as :meth:`render` up to float rounding (a point on a pixel border may round
        into the neighbouring pixel).
        """
        if params.batch_size != 1:
            raise ValueError(f"PreviewRenderer draws one face at a time, got a batch of {params.batch_size}")
        points, normals = self._unposed(params)
        albedo = self._albedo(params)
        rotation = euler_to_matrix(params.pose[:, :3])[0]  # [3, 3]
        posed = torch.addmm(params.pose[0, 3:], points, rotation.T)  # [P, 3] world
        normals = normals @ rotation.T
        colour = albedo * sh_shading(normals[None], params.light)[0]  # [P, 3]
        size = self.image_size
        # Camera: x_c = x, y_c = -y, z_c = distance - z (see Camera.to_camera); pixel = f * x_c / z_c + size / 2.
        depth = self.camera.distance - posed[:, 2]
        f = self.camera.focal_pixels
        u = (f * posed[:, 0] / depth + size / 2).floor().long()
        v = (-f * posed[:, 1] / depth + size / 2).floor().long()
        # The camera looks along -z, so a normal with z > 0 faces it; a small margin keeps silhouettes solid.
        keep = (normals[:, 2] > -0.1) & (u >= 0) & (u < size) & (v >= 0) & (v < size) & (depth > self.camera.near)
        pixel, depth, colour = (v * size + u)[keep], depth[keep], colour[keep]
        zbuffer = torch.full((size * size,), float("inf")).scatter_reduce(0, pixel, depth, "amin")
        nearest = depth <= zbuffer[pixel]
        image = torch.zeros(size * size, 3)
        covered = torch.zeros(size * size, dtype=torch.bool)
        image[pixel[nearest]] = colour[nearest]
        covered[pixel[nearest]] = True
        image, covered = image.view(size, size, 3), covered.view(size, size)
        image, covered = _fill_holes(image, covered)
        image = torch.where(covered[..., None], image, torch.full_like(image, self.background))
        return image.permute(2, 0, 1).clamp(0, 1)

    @torch.no_grad()
    def render_exact(self, params: FaceParams, image_size: Optional[int] = None) -> torch.Tensor:
        """The same face with the triangle rasterizer (:func:`render_face`): ``[3, H, W]`` in [0, 1]."""
        camera = self.camera.with_image_size(image_size or self.image_size)
        out = render_face(self.model, params, camera, parts=self.parts, background=self.background)
        return out.image[0].clamp(0, 1)


def point_features(points: torch.Tensor, normals: torch.Tensor) -> np.ndarray:
    """Per-point features ``[13, P]`` (float32 NumPy) that pose, projection and SH shading are linear in.

    Rows: x, y, z, 1, nx, ny, nz, nx², ny², nz², nx·ny, nx·nz, ny·nz (unposed points and unit normals).
    """
    n = normals.T  # [3, P]
    nx, ny, nz = n
    features = torch.cat([points.T, torch.ones_like(nx)[None], n, n * n, torch.stack([nx * ny, nx * nz, ny * nz])])
    return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)


def frame_matrix(pose: Sequence[float], gamma: Sequence[float], focal: float, distance: float) -> np.ndarray:
    """The ``[8, 13]`` matrix that maps :func:`point_features` to one frame's per-point quantities.

    Output rows: ``f x_w`` and ``-f y_w`` (pixel = row / depth + size / 2, as in
    :meth:`PreviewRenderer.render_reference`), the depth ``distance - z_w``, the posed normal's z,
    the R, G, B shading of :func:`~stylerig_lite.shading.sh_shading` at the posed normal, and 1.
    ``x_w = R x + t`` with ``R`` of :func:`~stylerig_lite.morphable.euler_to_matrix`.

    Shading: sh_shading's basis at a posed normal ``n' = (x, y, z)`` is f0, f1 y, f2 z, f3 x,
    f4 xy, f5 yz, f6 (3z² - 1), f7 xz, f8 (x² - y²), so with one channel's light ``g`` (times the
    factors f) ``H(n') . g = c + b' . n' + n'^T A' n'`` for a constant ``c = g0 - g6``, a linear
    part ``b' = (g3, g1, g2)`` and a symmetric ``A'``; with ``n' = R n`` that is
    ``c + (R^T b') . n + n^T (R^T A' R) n``, whose monomial coefficients fill the shading rows.
    Plain Python floats (float64), one array at the end: some 300 multiply-adds, cheaper than
    the calls it would take to do them with arrays.
    """
    yaw, pitch, roll, tx, ty, tz = pose
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    r0 = (cr * cy - sr * sp * sy, -sr * cp, cr * sy + sr * sp * cy)  # rows of Rz(roll) Rx(pitch) Ry(yaw)
    r1 = (sr * cy + cr * sp * sy, cr * cp, sr * sy - cr * sp * cy)
    r2 = (-cp * sy, sp, cp * cy)
    zeros = [0.0] * 9
    rows = [
        [focal * r0[0], focal * r0[1], focal * r0[2], focal * tx, *zeros],
        [-focal * r1[0], -focal * r1[1], -focal * r1[2], -focal * ty, *zeros],
        [-r2[0], -r2[1], -r2[2], distance - tz, *zeros],
        [0.0, 0.0, 0.0, 0.0, r2[0], r2[1], r2[2], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    for c in range(3):
        g0, g1, g2, g3, g4, g5, g6, g7, g8 = (gamma[9 * c + k] * SH_FACTORS[k] for k in range(9))
        a = ((g8, g4 / 2, g7 / 2), (g4 / 2, -g8, g5 / 2), (g7 / 2, g5 / 2, 3.0 * g6))  # A'
        t = [[a_i[0] * r0[k] + a_i[1] * r1[k] + a_i[2] * r2[k] for k in range(3)] for a_i in a]  # A' R
        q = [[r0[j] * t[0][k] + r1[j] * t[1][k] + r2[j] * t[2][k] for k in range(3)] for j in range(3)]  # R^T A' R
        rows.append([0.0, 0.0, 0.0, g0 - g6, *(g3 * r0[j] + g1 * r1[j] + g2 * r2[j] for j in range(3)),
                     q[0][0], q[1][1], q[2][2], 2.0 * q[0][1], 2.0 * q[0][2], 2.0 * q[1][2]])
    rows.append([0.0, 0.0, 0.0, 1.0, *zeros])
    return np.array(rows, dtype=np.float32)


def _fill_holes_padded(canvas: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_fill_holes` on a zero-padded canvas ``[4, H + 2, W + 2]`` (R, G, B, covered; zero where empty).

    The same sums in the same order as :func:`_fill_holes`, for colour and coverage at once (NumPy).
    Returns ``(image [3, H, W], covered [H, W])``.
    """
    total = canvas[:, :-2, 1:-1] + canvas[:, 2:, 1:-1] + canvas[:, 1:-1, :-2] + canvas[:, 1:-1, 2:]  # [4, H, W]
    inner = canvas[:, 1:-1, 1:-1]
    count, covered = total[3], inner[3] > 0
    fill = (count >= 3) & ~covered
    return np.where(fill, total[:3] / np.maximum(count, 1), inner[:3]), covered | fill


def _fill_holes(image: torch.Tensor, covered: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fill empty pixels with at least 3 covered 4-neighbours by their mean (splatting leaves pinholes)."""
    c = nnf.pad(covered.float()[None, None], (1, 1, 1, 1))[0, 0]
    rgb = nnf.pad((image * covered[..., None]).permute(2, 0, 1)[None], (1, 1, 1, 1))[0]
    count = c[:-2, 1:-1] + c[2:, 1:-1] + c[1:-1, :-2] + c[1:-1, 2:]
    total = rgb[:, :-2, 1:-1] + rgb[:, 2:, 1:-1] + rgb[:, 1:-1, :-2] + rgb[:, 1:-1, 2:]
    fill = (~covered) & (count >= 3)
    mean = (total / count.clamp_min(1)).permute(1, 2, 0)
    return torch.where(fill[..., None], mean, image), covered | fill


if rasterize_jit.numba is not None:
    _F32 = np.float32

    def _preview_frame_loop(matrix, features, albedo_rows, size, near, background, image):
        # PreviewRenderer._render_numpy as one loop: matrix [8, 13], features [13, P], albedo_rows [4, P]
        # float32; writes image [3, size, size]. The same float32 steps in the same order, except the
        # [8, 13] x [13, P] product, which sums its 13 terms in order (einsum's order here: the same rows, tested).
        points = features.shape[1]
        stride = size + 2
        spare = stride * stride
        half, margin, inf = _F32(size / 2), _F32(-0.1), _F32(np.inf)
        rows = np.zeros((8, points), dtype=np.float32)
        for r in range(8):  # each sum over j in order, the points innermost (vectorised)
            for j in range(13):
                m = matrix[r, j]
                for p in range(points):
                    rows[r, p] += m * features[j, p]
        pixel = np.empty(points, dtype=np.intp)
        zbuffer = np.full(spare + 1, inf, dtype=np.float32)
        for p in range(points):  # culled points and those off the image go to the spare pixel
            depth = rows[2, p]
            pixel[p] = spare
            if rows[3, p] > margin and depth > near:  # near > 0: no division by zero below
                u = np.floor(rows[0, p] / depth + half)
                v = np.floor(rows[1, p] / depth + half)
                if u >= 0 and v >= 0 and u < size and v < size:
                    pixel[p] = int(v) * stride + int(u) + stride + 1
            if depth < zbuffer[pixel[p]]:
                zbuffer[pixel[p]] = depth
        canvas = np.zeros((4, spare + 1), dtype=np.float32)  # R, G, B, covered on the padded grid
        for p in range(points):  # in point order, so the last of equally near points wins, as in NumPy
            k = pixel[p] if rows[2, p] <= zbuffer[pixel[p]] else spare
            for c in range(4):
                canvas[c, k] = albedo_rows[c, p] * rows[4 + c, p]
        for i in range(size):  # _fill_holes_padded, then the background and the clip to [0, 1]
            for j in range(size):
                centre = (i + 1) * stride + j + 1
                up, down, left, right = centre - stride, centre + stride, centre - 1, centre + 1
                count = ((canvas[3, up] + canvas[3, down]) + canvas[3, left]) + canvas[3, right]
                covered = canvas[3, centre] > 0
                fill = count >= 3 and not covered
                for c in range(3):
                    if fill:
                        value = (((canvas[c, up] + canvas[c, down]) + canvas[c, left]) + canvas[c, right]) / count
                    elif covered:
                        value = canvas[c, centre]
                    else:
                        value = background
                    image[c, i, j] = min(max(value, _F32(0.0)), _F32(1.0))

    _preview_frame = rasterize_jit.compile_loop(_preview_frame_loop)
