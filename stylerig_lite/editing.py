"""The interactive editor: sliders for pose, expression and light drive RigNet live.

StyleRig's promise is a *rig*: move a 3DMM parameter and the GAN face follows.
This module turns the trained pieces into an app::

    from stylerig_lite.editing import EditorApp
    EditorApp.default()                         # embedded networks, in Jupyter / Colab / Voila

    app = EditorApp(G, {"pose": rig_pose, "expression": rig_expr, "illumination": rig_light}, F, face_model)
    app                                         # the widget (sliders, images, transfer, reset, save)

It is built in three layers, so that everything but the widgets is testable without a browser:

* :class:`EditorState` (no widgets): the latent ``w`` of the current face, its estimated
  parameters ``p_w = F(G(w))`` (the *source*), and the *target* parameters the sliders edit.
  A frame is ``w_hat = rig(w, p_target)`` for each rigged component whose target differs from the
  source, ``image = G.synthesis(w_hat)`` and the 3DMM rendering of ``p_target``, shown side by side
  as in the paper's figures.
* :class:`LatestOnly`: coalesces slider events. A slider move only records the value (cheap) and
  asks for a frame; one worker renders the *latest* state, and a render in progress is followed
  by at most one more render, of whatever the sliders say when it ends. Intermediate values are
  never rendered, so a fast drag cannot queue up stale frames.
* :class:`EditorApp`: the ipywidgets front end.

The rig protocol is a callable ``rig(w [B, num_ws, w_dim], p_target [B, 196]) -> w_hat`` (same
shape as ``w``), one per component name in :data:`RIG_COMPONENTS`. RigNet implements it; so do the
simple fakes of the tests. A rig may also offer ``bind(w) -> bound(p_target) -> w_hat`` (RigNet
does): the editor binds the latent it edits once, so that a slider move costs only what depends
on the slider (:meth:`EditorState.edited_latent`). The generator needs ``mapping(z, c, truncation_psi=...)`` and
``synthesis(ws, noise_mode=...)`` (our :class:`~stylerig_lite.stylegan2.Generator` and official
NVlabs checkpoints alike, any ``num_ws x w_dim``); the estimator needs
``estimate(images, value_range=(-1, 1)) -> (FaceParams, landmarks)``.

The static book has no kernel, so :func:`edit_frames`, :func:`edit_animation` and
:func:`animation_html` precompute slider sweeps as animations for chapter 5.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import math
import operator
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as TF

from .camera import Camera
from .checks import assert_shape
from .face_render import default_camera, render_face
from .morphable import EXPRESSION_NAMES, NUM_PARAMS, SLICES, FaceModel, FaceParams, euler_to_matrix
from .shading import _SH_CONSTANTS, LAMBERT_FACTORS, SH_C0, SH_C1, directional_gamma, sh_shading, vertex_normals

#: The components a rig can control, in the order the rigs are applied, and the parameter
#: component each one edits.
RIG_COMPONENTS: Tuple[str, ...] = ("pose", "expression", "illumination")
PARAM_COMPONENT: Dict[str, str] = {"pose": "pose", "expression": "expression", "illumination": "light"}

Rig = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------ sliders
@dataclasses.dataclass(frozen=True)
class SliderSpec:
    """One slider: its range, step, unit, the rig component it edits and the label shown."""

    label: str
    low: float
    high: float
    step: float
    unit: str
    component: str  # "pose", "expression" or "illumination"


#: Named main-expression sliders and the ICT/ARKit blendshapes each one sets (to the same weight).
EXPRESSION_GROUPS: Dict[str, Tuple[str, ...]] = {
    "jawOpen": ("jawOpen",),
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "browRaise": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
}

# Ranges: pose covers FaceWorld's training spread (±30° yaw, ±15° pitch, ±12° roll) with margin;
# beyond it RigNet extrapolates, which the chapter shows as a limit. Expression weights are the
# ARKit range [0, 1]. Light: azimuth/elevation of the light direction (0, 0 = light at the camera;
# +azimuth = from image right, +elevation = from above), its intensity and the ambient level.
SLIDERS: Dict[str, SliderSpec] = {
    "yaw": SliderSpec("yaw", -60.0, 60.0, 1.0, "°", "pose"),
    "pitch": SliderSpec("pitch", -40.0, 40.0, 1.0, "°", "pose"),
    "roll": SliderSpec("roll", -40.0, 40.0, 1.0, "°", "pose"),
    "jawOpen": SliderSpec("jaw open", 0.0, 1.0, 0.05, "", "expression"),
    "smile": SliderSpec("smile", 0.0, 1.0, 0.05, "", "expression"),
    "blink": SliderSpec("blink", 0.0, 1.0, 0.05, "", "expression"),
    "browRaise": SliderSpec("brow raise", 0.0, 1.0, 0.05, "", "expression"),
    "light_azimuth": SliderSpec("light azimuth", -90.0, 90.0, 5.0, "°", "illumination"),
    "light_elevation": SliderSpec("light elevation", -90.0, 90.0, 5.0, "°", "illumination"),
    "light_intensity": SliderSpec("light intensity", 0.0, 1.5, 0.05, "", "illumination"),
    "light_ambient": SliderSpec("ambient light", 0.0, 1.5, 0.05, "", "illumination"),
}
EXPRESSION_SPEC = SliderSpec("expression weight", 0.0, 1.0, 0.05, "", "expression")
LIGHT_SLIDERS: Tuple[str, ...] = ("light_azimuth", "light_elevation", "light_intensity", "light_ambient")


def slider_spec(name: str) -> SliderSpec:
    """The spec of a slider name: a named slider or any of the 53 expression names."""
    if name in SLIDERS:
        return SLIDERS[name]
    if name in EXPRESSION_NAMES:
        return dataclasses.replace(EXPRESSION_SPEC, label=name)
    valid = list(SLIDERS)
    close = difflib.get_close_matches(name, valid + list(EXPRESSION_NAMES), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise KeyError(
        f"unknown slider {name!r}.{hint} Valid names: {valid}, or any of the 53 expression names "
        f"{list(EXPRESSION_NAMES)}"
    )


def check_expression_name(name: str) -> str:
    """Return ``name`` if it is one of the 53 ICT/ARKit expressions, else a ``KeyError`` listing them."""
    if name not in EXPRESSION_NAMES:
        close = difflib.get_close_matches(name, EXPRESSION_NAMES, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown expression {name!r}.{hint} Valid names (53): {list(EXPRESSION_NAMES)}")
    return name


def clamp_to_spec(name: str, value: float) -> Tuple[float, Optional[str]]:
    """``(value clamped to the slider's range, message or None)``."""
    spec = slider_spec(name)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"slider {name!r} needs a finite number, got {value!r}")
    clamped = min(max(value, spec.low), spec.high)
    if clamped != value:
        return clamped, (f"{spec.label} {value:g}{spec.unit} is outside [{spec.low:g}, {spec.high:g}]{spec.unit}; "
                         f"clamped to {clamped:g}{spec.unit}")
    return clamped, None


# ------------------------------------------------------------------------------------------- light
def light_direction(azimuth_deg: float, elevation_deg: float) -> torch.Tensor:
    """Unit world direction toward the light ``[3]``: (0, 0) is the camera, +azimuth image right, +elevation up."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return torch.tensor([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])


def light_to_gamma(azimuth_deg: float, elevation_deg: float, intensity: float, ambient: float) -> torch.Tensor:
    """SH coefficients ``[1, 27]`` of a white directional light plus ambient (:func:`shading.directional_gamma`)."""
    return directional_gamma(light_direction(azimuth_deg, elevation_deg), intensity, ambient)


def gamma_to_light(gamma: torch.Tensor) -> Dict[str, float]:
    """The slider values (azimuth, elevation, intensity, ambient) closest to SH light ``gamma [1, 27]``.

    Exact for the output of :func:`light_to_gamma` (white light); for other lights it keeps the
    luminance-averaged dominant direction (band 1) and the band-0 level, which is what the sliders
    can express. directional_gamma sets band 1 to ``pi * I * C1 * d`` and band 0 to
    ``pi * I * C0 + ambient / C0``; we invert both.
    """
    assert_shape(gamma, [1, 27], "gamma")
    g = gamma.detach().double().view(3, 9).mean(0)  # luminance-averaged coefficients [9]
    band1 = torch.stack([g[3], g[1], g[2]])  # (x, y, z) order of the real SH Y_1m
    strength = float(band1.norm())
    intensity = strength / (math.pi * SH_C1)
    if strength > 1e-9:
        x, y, z = (band1 / strength).tolist()
        azimuth, elevation = math.degrees(math.atan2(x, z)), math.degrees(math.asin(max(-1.0, min(1.0, y))))
    else:
        azimuth = elevation = 0.0
    ambient = (float(g[0]) - math.pi * intensity * SH_C0) * SH_C0
    return {"light_azimuth": azimuth, "light_elevation": elevation, "light_intensity": intensity,
            "light_ambient": ambient}


# ------------------------------------------------------------------------------- fast 3DMM preview
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
    product and runs in NumPy; :meth:`render_reference` is the same splatting step by step in torch
    (the tests check that both draw the same image).
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
            self._features = _point_features(self._points_xyz, self._points_normal)
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
        normals' quadratic monomials, :func:`_point_features`), so one ``[8, 13]`` matrix built from
        the pose, the camera and the light (:func:`_frame_matrix`) gives every point's pixel
        coordinates, depth, facing and colour: the shading ``H(R n) . gamma`` is a quadratic form in
        ``n``, and rotating the normal only changes the form's coefficients. The z-buffer then works
        on all points at once, sending culled and hidden points to a spare pixel. The frame runs in
        NumPy: some 40 operations on a few thousand numbers, where each torch call's fixed cost
        (several microseconds, more with cold caches between slider events) would dominate.
        """
        if params.batch_size != 1:
            raise ValueError(f"PreviewRenderer draws one face at a time, got a batch of {params.batch_size}")
        values = params.to_vector()[0].tolist()  # every number the frame needs, in one call
        self._unposed(params, values)
        self._albedo(params, values)
        size, camera = self.image_size, self.camera
        matrix = _frame_matrix(values[SLICES["pose"]], values[SLICES["light"]], camera.focal_pixels, camera.distance)
        rows = matrix @ self._features  # [8, P]: f x, -f y, depth, posed normal z, R, G, B shading, 1
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


def _point_features(points: torch.Tensor, normals: torch.Tensor) -> np.ndarray:
    """Per-point features ``[13, P]`` (float32 NumPy) that pose, projection and SH shading are linear in.

    Rows: x, y, z, 1, nx, ny, nz, nx², ny², nz², nx·ny, nx·nz, ny·nz (unposed points and unit normals).
    """
    n = normals.T  # [3, P]
    nx, ny, nz = n
    features = torch.cat([points.T, torch.ones_like(nx)[None], n, n * n, torch.stack([nx * ny, nx * nz, ny * nz])])
    return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)


_SH_FACTORS = tuple(c * f / math.pi for c, f in zip(_SH_CONSTANTS, LAMBERT_FACTORS))  # as in sh_shading


def _frame_matrix(pose: Sequence[float], gamma: Sequence[float], focal: float, distance: float) -> np.ndarray:
    """The ``[8, 13]`` matrix that maps :func:`_point_features` to one frame's per-point quantities.

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
        g0, g1, g2, g3, g4, g5, g6, g7, g8 = (gamma[9 * c + k] * _SH_FACTORS[k] for k in range(9))
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
    c = TF.pad(covered.float()[None, None], (1, 1, 1, 1))[0, 0]
    rgb = TF.pad((image * covered[..., None]).permute(2, 0, 1)[None], (1, 1, 1, 1))[0]
    count = c[:-2, 1:-1] + c[2:, 1:-1] + c[1:-1, :-2] + c[1:-1, 2:]
    total = rgb[:, :-2, 1:-1] + rgb[:, 2:, 1:-1] + rgb[:, 1:-1, :-2] + rgb[:, 1:-1, 2:]
    fill = (~covered) & (count >= 3)
    mean = (total / count.clamp_min(1)).permute(1, 2, 0)
    return torch.where(fill[..., None], mean, image), covered | fill


# --------------------------------------------------------------------------------------- coalescing
T = TypeVar("T")


class LatestOnly(Generic[T]):
    """Render only the latest request: the debounce behind the sliders.

    ``request()`` is cheap and may be called for every slider event. With ``background=True`` a
    worker thread runs ``render()`` and passes the result to ``deliver()``; requests that arrive
    while it renders only set a flag, so after the render in progress exactly one more render
    follows (of the state at that time), however many requests came in. ``render`` must read the
    current state itself (it gets no arguments), which is what makes intermediate values vanish.

    With ``background=False`` (tests, scripts) ``request()`` renders in the calling thread; a
    request made while rendering (e.g. from ``deliver``) is coalesced the same way.
    ``rendered`` counts the renders done; ``wait()`` blocks until the worker is idle.
    """

    def __init__(self, render: Callable[[], T], deliver: Callable[[T], None], *, background: bool = True,
                 on_error: Optional[Callable[[BaseException], None]] = None):
        self._render, self._deliver, self._on_error = render, deliver, on_error
        self.background = background
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._dirty = False
        self._busy = False
        self.rendered = 0
        self.requested = 0

    def request(self) -> None:
        with self._lock:
            self.requested += 1
            self._dirty = True
            if self._busy:
                return  # the running loop picks the latest state up when the current render ends
            self._busy = True
            self._idle.clear()
        if self.background:
            threading.Thread(target=self._loop, name="stylerig-editor-render", daemon=True).start()
        else:
            self._loop()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._dirty:
                    self._busy = False
                    self._idle.set()
                    return
                self._dirty = False
            try:
                result = self._render()
                self.rendered += 1
                self._deliver(result)
            except BaseException as error:  # noqa: BLE001 - a failed frame must not kill the editor
                if self._on_error is None:
                    with self._lock:
                        self._busy, self._dirty = False, False
                        self._idle.set()
                    raise
                self._on_error(error)

    @property
    def busy(self) -> bool:
        return self._busy

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no render is running or pending; False on timeout."""
        return self._idle.wait(timeout)


# -------------------------------------------------------------------------------------------- state
@dataclasses.dataclass
class Frame:
    """One rendered editor frame."""

    image: torch.Tensor  # [3, R, R] GAN image in [-1, 1]
    render: Optional[torch.Tensor]  # [3, h, h] 3DMM rendering of the target in [0, 1], or None
    target: FaceParams  # batch 1
    w_hat: torch.Tensor  # [1, num_ws, w_dim]
    applied: Tuple[str, ...]  # rig components applied to reach w_hat
    estimate: Optional[FaceParams]  # F on the shown image, when asked for
    timings_ms: Dict[str, float]
    version: int  # the state's edit counter when the frame was computed


class ModuleRig:
    """A module's ``rig(w, p_target)`` method as the editor's rig, with the module's ``bind`` if it has one.

    ``bind(w) -> callable(p_target) -> w_hat`` is the optional fast path of the rig protocol
    (:meth:`~stylerig_lite.rignet.RigNet.bind`): the editor binds the latent being edited once and
    then only passes the slider's target parameters (:meth:`EditorState.edited_latent`).
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        bind = getattr(module, "bind", None)
        self.bind: Optional[Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = \
            bind if callable(bind) else None

    def __call__(self, w: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        return self.module.rig(w, p_target)

    def __repr__(self) -> str:
        return f"ModuleRig({type(self.module).__name__})"


def as_rig(rig: Any, name: str = "rig") -> Rig:
    """The ``rig(w, p_target [B, 196]) -> w_hat`` callable of a rig object.

    A :class:`~stylerig_lite.rignet.RigNet` module's ``forward`` takes only its component's
    parameters; its :meth:`rig` method takes the full vector, so that is the one used (wrapped in
    a :class:`ModuleRig`, which also carries the module's ``bind``). Plain callables are used as
    they are (one with a ``bind`` attribute gets the same fast path).
    """
    method = getattr(rig, "rig", None)
    if isinstance(rig, torch.nn.Module) and callable(method):
        return ModuleRig(rig)
    if not callable(rig):
        raise TypeError(f"rigs[{name!r}] must be callable as rig(w, p_target) -> w_hat, got {type(rig).__name__}")
    return rig


def _latent_for_seed(generator, seed: int, truncation_psi: float) -> torch.Tensor:
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(int(seed)))
    device = next((p.device for p in generator.parameters()), torch.device("cpu")) \
        if isinstance(generator, torch.nn.Module) else torch.device("cpu")
    return generator.mapping(z.to(device), None, truncation_psi=truncation_psi)


class EditorState:
    """The editor without widgets: a face (latent), its source parameters, the target the sliders edit.

    Args:
        generator: frozen StyleGAN2 (``mapping``/``synthesis``; any ``num_ws x w_dim``).
        rigs: ``{"pose": rig, "expression": rig, "illumination": rig}``; any subset. A rig is
            ``rig(w [B, num_ws, w_dim], p_target [B, 196]) -> w_hat``. Sliders of a component
            without a rig still move the 3DMM rendering, but not the GAN image.
        estimator: F, ``estimate(images, value_range=(-1, 1)) -> (FaceParams, landmarks)``; it
            gives the source parameters ``p_w = F(G(w))`` that the sliders start from.
        face_model: the 3DMM for the target rendering, or None to show no rendering.
        seed: the initial face; ``truncation_psi``: truncation of the mapping (0.7 = typical faces).
        preview_size: side of the 3DMM rendering in pixels (see :class:`PreviewRenderer`).
        estimate_shown: also run F on each shown image (``Frame.estimate``): an honest readout of
            what the edit achieved, at the cost of one F pass per frame.
    """

    def __init__(self, generator, rigs: Mapping[str, Rig], estimator, face_model: Optional[FaceModel] = None, *,
                 seed: int = 0, truncation_psi: float = 0.7, preview_size: int = 40, estimate_shown: bool = False):
        unknown = set(rigs) - set(RIG_COMPONENTS)
        if unknown:
            raise KeyError(f"unknown rig component(s) {sorted(unknown)}; expected keys among {list(RIG_COMPONENTS)}")
        self.generator = generator
        self.rigs = {name: as_rig(rig, name) for name, rig in rigs.items()}
        self.estimator = estimator
        self.face_model = face_model
        self.truncation_psi = float(truncation_psi)
        self.estimate_shown = bool(estimate_shown)
        self.preview = PreviewRenderer(face_model, preview_size) if face_model is not None else None
        self.message = ""  # the last clamp / transfer note, shown by the app
        self.version = 0  # bumped on every edit; frames carry it
        self._lock = threading.RLock()
        # applied components -> (rigs, w, w._version, bound chain, how many rigs it covers); see edited_latent
        self._bound: Dict[Tuple[str, ...], Tuple[Tuple[Rig, ...], torch.Tensor, int, Optional[Callable], int]] = {}
        self._source_values: Optional[Tuple[FaceParams, List[List[float]]]] = None  # see _changed
        self.set_seed(seed)

    # -- the face being edited ------------------------------------------------------------------
    @torch.no_grad()
    def set_seed(self, seed: int) -> None:
        """Edit the face of ``seed`` (z ~ N(0, I) with that seed, then the mapping network)."""
        self.set_latent(_latent_for_seed(self.generator, seed, self.truncation_psi), seed=int(seed))

    @torch.no_grad()
    def set_latent(self, w: torch.Tensor, *, seed: Optional[int] = None) -> None:
        """Edit any latent ``w [1, num_ws, w_dim]`` (e.g. a projected photo); resets the sliders."""
        assert_shape(w, [1, None, None], "w (one latent [1, num_ws, w_dim])")
        with self._lock:
            self.seed = seed
            self.w = w.detach().clone()
            self._bound.clear()
            self.source_image = self._synthesize(self.w)  # [1, 3, R, R]
            self.source = self._estimate(self.source_image).detach()
            self.reset()

    def _synthesize(self, w: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesis(w, noise_mode="const")

    def _estimate(self, images: torch.Tensor) -> FaceParams:
        """F on GAN images ``[B, 3, R, R]`` in [-1, 1], resized to F's input size if needed."""
        images = images.clamp(-1, 1)  # F judges what the user sees (an untrained G can overshoot far)
        size = getattr(getattr(self.estimator, "config", None), "image_size", None)
        if size is not None and images.shape[-1] != size:
            images = TF.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=images.shape[-1] > size)
        params, _ = self.estimator.estimate(images, value_range=(-1, 1))
        return params.to("cpu")

    # -- sliders --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the source: target = F(G(w)), light sliders fitted to the source light."""
        with self._lock:
            self.target = FaceParams.from_vector(self.source.to_vector().clone())
            self.light_controls = gamma_to_light(self.source.light)
            self.message = ""
            self.version += 1

    def slider_names(self) -> List[str]:
        return list(SLIDERS)

    def slider_value(self, name: str) -> float:
        """The current value of a slider (degrees for angles), read from the target."""
        slider_spec(name)
        with self._lock:
            if name in ("yaw", "pitch", "roll"):
                return math.degrees(float(self.target.pose[0, ("yaw", "pitch", "roll").index(name)]))
            if name in EXPRESSION_GROUPS:
                return float(np.mean([self.expression(n) for n in EXPRESSION_GROUPS[name]]))
            if name in LIGHT_SLIDERS:
                return float(self.light_controls[name])
            return self.expression(name)

    def expression(self, name: str) -> float:
        """Target weight of one of the 53 expressions."""
        return float(self.target.expression[0, EXPRESSION_NAMES.index(check_expression_name(name))])

    def set_slider(self, name: str, value: float) -> float:
        """Set a slider (angles in degrees). Out-of-range values are clamped and noted in ``message``.

        Names: :data:`SLIDERS` (yaw, pitch, roll, jawOpen, smile, blink, browRaise, light_*) or any
        of the 53 expression names. Returns the value actually set.
        """
        value, note = clamp_to_spec(name, value)
        with self._lock:
            if name in ("yaw", "pitch", "roll"):
                pose = self.target.pose.clone()
                pose[0, ("yaw", "pitch", "roll").index(name)] = math.radians(value)
                self.target = self.target.replace(pose=pose)
            elif name in LIGHT_SLIDERS:
                self.light_controls[name] = value
                c = self.light_controls
                gamma = light_to_gamma(c["light_azimuth"], c["light_elevation"], c["light_intensity"], c["light_ambient"])
                self.target = self.target.replace(light=gamma)
            else:
                names = EXPRESSION_GROUPS.get(name, (name,))
                self.target = self.target.with_expression(**{n: value for n in names})
            self.message = note or ""
            self.version += 1
        return value

    def set_expression(self, name: str, value: float) -> float:
        """Set one of the 53 expression weights by name (a ``KeyError`` lists them for a typo)."""
        return self.set_slider(check_expression_name(name), value)

    # -- transfer -------------------------------------------------------------------------------
    @torch.no_grad()
    def transfer(self, component: str, other_seed: int) -> FaceParams:
        """Copy pose, expression or illumination of another face (``other_seed``) into the target.

        The other face's parameters are estimated by F from its GAN image, as in the paper's
        transfer application: only the chosen component changes. Returns the other face's parameters.
        """
        if component not in RIG_COMPONENTS:
            raise KeyError(f"unknown component {component!r} to transfer; expected one of {list(RIG_COMPONENTS)}")
        other = self._estimate(self._synthesize(_latent_for_seed(self.generator, other_seed, self.truncation_psi)))
        key = PARAM_COMPONENT[component]
        with self._lock:
            self.target = self.target.replace(**{key: other.component(key).clone()})
            if key == "light":
                self.light_controls = gamma_to_light(other.light)
            self.message = f"{component} copied from seed {int(other_seed)}"
            if component not in self.rigs:
                self.message += f" (no {component} rig: the GAN image cannot follow)"
            self.version += 1
        return other

    # -- frames ---------------------------------------------------------------------------------
    def target_params(self) -> FaceParams:
        """A copy of the target parameters (batch 1)."""
        with self._lock:
            return FaceParams.from_vector(self.target.to_vector())  # to_vector concatenates: a new tensor

    def changed_components(self, target: Optional[FaceParams] = None) -> Tuple[str, ...]:
        """Rig components whose target differs from the source (the rigs a frame applies)."""
        target = target or self.target_params()
        return self._changed(target.to_vector())

    def _changed(self, vector: torch.Tensor) -> Tuple[str, ...]:
        """:meth:`changed_components` of a target vector ``[B, 196]``.

        Compared as Python floats, which is ``torch.equal`` per component (NaN differs from
        everything, -0.0 equals 0.0) for the price of two ``tolist`` calls instead of six slices
        and three comparisons; the source's numbers are kept until the source changes.
        """
        cached = self._source_values
        if cached is None or cached[0] is not self.source:
            cached = self._source_values = (self.source, self.source.to_vector().tolist())
        values, source = vector.tolist(), cached[1]
        return tuple(c for c in RIG_COMPONENTS
                     if [row[SLICES[PARAM_COMPONENT[c]]] for row in values]
                     != [row[SLICES[PARAM_COMPONENT[c]]] for row in source])

    @torch.no_grad()
    def edited_latent(self, target: Optional[FaceParams] = None) -> Tuple[torch.Tensor, Tuple[str, ...]]:
        """``(w_hat, applied)``: each rig whose component changed, applied in :data:`RIG_COMPONENTS` order.

        Unchanged components are skipped rather than passed through their rig: RigNet only
        approximately reproduces w for the source parameters (its L_rec), and skipping keeps the
        untouched face exactly the generator's.

        The latent does not change while the sliders move, so rigs with ``bind`` (RigNets, see
        :meth:`~stylerig_lite.rignet.RigNet.bind`) are bound to it once, chained with the bound
        object's ``then`` when several apply, and cached per set of applied components until the
        latent changes (:meth:`set_latent`): a frame then costs one small product per moved
        component instead of every rig's encoder and decoder. Rigs without it (plain callables)
        are called in turn, after the bound chain.
        """
        target = target or self.target_params()
        w = self.w
        p = target.to_vector().to(w.device)
        components = tuple(c for c in self._changed(p) if c in self.rigs)
        bound, count = self._bound_rigs(components, w)
        if count:
            w = bound(p)
            assert_shape(w, list(self.w.shape), f"output of the {' + '.join(components[:count])} rig(s)")
        for component in components[count:]:
            w_hat = self.rigs[component](w, p)
            assert_shape(w_hat, list(w.shape), f"output of the {component} rig")
            w = w_hat
        return w, components

    def _bound_rigs(self, components: Tuple[str, ...], w: torch.Tensor) -> Tuple[Optional[Callable], int]:
        """``(bound, count)``: the first ``count`` rigs of ``components`` bound to ``w`` and chained (cached)."""
        if not components:
            return None, 0
        rigs = tuple(self.rigs[c] for c in components)
        cached = self._bound.get(components)
        if (cached is not None and len(cached[0]) == len(rigs) and all(map(operator.is_, cached[0], rigs))
                and cached[1] is w and cached[2] == w._version):
            return cached[3], cached[4]
        bound, count = None, 0
        bind = getattr(rigs[0], "bind", None)
        if bind is not None:
            bound, count = bind(w), 1
            for rig in rigs[1:]:
                then = getattr(bound, "then", None)
                if then is None:
                    break
                try:
                    bound = then(getattr(rig, "module", rig))  # a ModuleRig chains its module
                except TypeError:  # not a rig it can chain: the rest are called in turn
                    break
                count += 1
        self._bound[components] = (rigs, w, w._version, bound, count)
        return bound, count

    @torch.no_grad()
    def compute_frame(self, *, estimate: Optional[bool] = None) -> Frame:
        """Render the current target: RigNet(s), generator, 3DMM preview (and F on the result)."""
        times: Dict[str, float] = {}
        with self._lock:
            target, version = self.target_params(), self.version
        start = time.perf_counter()
        w_hat, applied = self.edited_latent(target)
        times["rig_ms"] = (time.perf_counter() - start) * 1e3
        t = time.perf_counter()
        image = self.source_image if not applied else self._synthesize(w_hat)
        times["generator_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        render = self.preview.render(target) if self.preview is not None else None
        times["render_ms"] = (time.perf_counter() - t) * 1e3
        estimated = None
        if self.estimate_shown if estimate is None else estimate:
            t = time.perf_counter()
            estimated = self._estimate(image)
            times["estimate_ms"] = (time.perf_counter() - t) * 1e3
        times["total_ms"] = (time.perf_counter() - start) * 1e3
        return Frame(image[0].detach().cpu(), render, target, w_hat, applied, estimated, times, version)

    def current_image(self) -> torch.Tensor:
        """The GAN image of the current target, ``[3, R, R]`` in [0, 1]."""
        return ((self.compute_frame(estimate=False).image + 1) / 2).clamp(0, 1)

    def save_png(self, path: Union[str, Path], frame: Optional[Frame] = None, *, size: int = 256,
                 with_render: bool = False) -> Path:
        """Write the GAN image (optionally beside the 3DMM rendering) of ``frame`` (default: now) as PNG."""
        frame = frame or self.compute_frame(estimate=False)
        image = ((frame.image + 1) / 2).clamp(0, 1)
        panels = [image]
        if with_render and frame.render is not None:
            panels.append(frame.render)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_png(panels, size))
        return path


# ---------------------------------------------------------------------------------------------- PNG
def to_png(images: Union[torch.Tensor, Sequence[torch.Tensor]], size: int = 256) -> bytes:
    """PNG bytes of one image ``[3, H, W]`` in [0, 1], or of several side by side, each upscaled to ``size``.

    Nearest-neighbour upscaling: a 64 px GAN image shown at 256 px keeps its real pixels visible.
    """
    from PIL import Image

    if isinstance(images, torch.Tensor):
        images = [images]
    tiles = []
    for image in images:
        assert_shape(image, [3, None, None], "image")
        array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        tiles.append(Image.fromarray(array).resize((size, size), Image.NEAREST))
    canvas = Image.new("RGB", (size * len(tiles), size), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * size, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def image_png(image: torch.Tensor, *, value_range: Tuple[float, float] = (0.0, 1.0), compress_level: int = 0) -> bytes:
    """PNG bytes of one image ``[3, H, W]`` at its own resolution: what the editor's widgets show.

    Values are mapped from ``value_range`` to [0, 1], clamped and quantised exactly as
    :func:`to_png` does. The browser scales the image to the widget's size, with
    ``image-rendering: pixelated`` (the app's style) keeping the pixels sharp, as :func:`to_png`'s
    nearest-neighbour upscaling does for saved files; so a frame encodes a 64 px image, not a
    256 px one (16x fewer pixels; :func:`to_png` at 256 px took ~2 ms per frame, more than a third
    of a 64 px generator pass). Written directly (8-bit RGB, no filter, zlib ``compress_level``;
    0 = stored: a 64 px GAN image barely compresses, 12 KB either way).
    """
    assert_shape(image, [3, None, None], "image")
    low, high = value_range
    array = image.detach().float().cpu().numpy()
    if (low, high) != (0.0, 1.0):
        array = (array - low) / (high - low)
    _, height, width = array.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # each row: filter type 0, then R G B ...
    rows[:, 1:] = (array.clip(0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0).reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + _png_chunk(b"IEND", b""))


def frame_pngs(frame: "Frame") -> Tuple[bytes, Optional[bytes]]:
    """``(GAN image PNG, 3DMM rendering PNG or None)`` of a frame, as :class:`EditorApp` shows it."""
    image = image_png(frame.image, value_range=(-1.0, 1.0))
    return image, (image_png(frame.render) if frame.render is not None else None)


#: Browsers scale the editor's small images up to the widget size; keep their pixels square and sharp.
PIXELATED_STYLE = ("<style>.srl-gan-image, .srl-render-image "
                   "{ image-rendering: crisp-edges; image-rendering: pixelated; }</style>")


# --------------------------------------------------------------------------------------------- app
class EditorApp:
    """The ipywidgets editor: GAN image and 3DMM rendering side by side, sliders, transfer, reset, save.

    ``EditorApp(G, rigs, F, face_model)`` or :meth:`default` (the embedded networks). Display it
    as the last expression of a cell (or ``display(app)``); ``app.widget`` is the root widget and
    ``app.state`` the :class:`EditorState`. Slider events only record values; frames are
    rendered by a :class:`LatestOnly` worker, so dragging never queues stale frames.
    ``show_estimate=True`` (default) runs F on every shown image and prints its yaw, pitch and
    roll under the image: what the edit achieved, not what was asked for.
    """

    def __init__(self, generator, rigs: Mapping[str, Rig], estimator, face_model: Optional[FaceModel] = None, *,
                 seed: int = 0, truncation_psi: float = 0.7, preview_size: int = 40, display_size: int = 256,
                 show_estimate: bool = True, background: bool = True, save_dir: Union[str, Path] = "edits"):
        import ipywidgets as W

        self.state = EditorState(generator, rigs, estimator, face_model, seed=seed, truncation_psi=truncation_psi,
                                 preview_size=preview_size, estimate_shown=show_estimate)
        self.display_size = int(display_size)
        self.save_dir = Path(save_dir)
        self.last_frame: Optional[Frame] = None
        self._syncing = False
        self._scheduler: LatestOnly[Frame] = LatestOnly(self.state.compute_frame, self._show_frame,
                                                        background=background, on_error=self._show_error)

        self.image = W.Image(format="png", width=self.display_size, height=self.display_size)
        self.image.add_class("srl-gan-image")
        self.render_image = W.Image(format="png", width=self.display_size, height=self.display_size)
        self.render_image.add_class("srl-render-image")
        self.estimate_label = W.HTML("")
        self.estimate_label.add_class("srl-estimate")
        self.message = W.HTML("")
        self.message.add_class("srl-message")
        self.status = W.HTML("")
        self.status.add_class("srl-status")

        layout = W.Layout(width="360px")
        style = {"description_width": "110px"}
        self.sliders: Dict[str, Any] = {}
        for name, spec in SLIDERS.items():
            slider = W.FloatSlider(min=spec.low, max=spec.high, step=spec.step, description=spec.label,
                                   continuous_update=True, readout_format=".2f" if spec.step < 1 else ".0f",
                                   layout=layout, style=style)
            slider.add_class(f"srl-slider-{name}")
            if spec.component not in self.state.rigs:
                slider.description_tooltip = f"no {spec.component} rig: only the 3DMM rendering follows"
            slider.observe(lambda change, name=name: self._on_slider(name, change["new"]), names="value")
            self.sliders[name] = slider
        self.expression_name = W.Dropdown(options=list(EXPRESSION_NAMES), value="jawOpen", description="any of 53",
                                          layout=layout, style=style)
        self.expression_slider = W.FloatSlider(min=0.0, max=1.0, step=0.05, description="weight",
                                               continuous_update=True, layout=layout, style=style)
        self.expression_slider.add_class("srl-slider-expression")
        self.expression_name.observe(lambda change: self._sync_sliders(), names="value")
        self.expression_slider.observe(
            lambda change: self._on_slider(self.expression_name.value, change["new"]), names="value")

        self.seed = W.BoundedIntText(value=int(seed), min=0, max=2**31 - 1, description="seed",
                                     layout=W.Layout(width="200px"))
        self.seed.add_class("srl-seed")
        self.seed.observe(lambda change: self._on_seed(change["new"]), names="value")
        random_button = W.Button(description="random face", icon="random")
        random_button.on_click(lambda _: setattr(self.seed, "value", int(np.random.randint(0, 2**31 - 1))))
        self.transfer_component = W.Dropdown(options=list(RIG_COMPONENTS), value="pose", description="transfer",
                                             layout=W.Layout(width="230px"))
        self.transfer_seed = W.BoundedIntText(value=int(seed) + 1, min=0, max=2**31 - 1, description="from seed",
                                              layout=W.Layout(width="200px"))
        transfer_button = W.Button(description="transfer", icon="exchange")
        transfer_button.on_click(lambda _: self._on_transfer())
        reset_button = W.Button(description="reset", icon="undo")
        reset_button.add_class("srl-reset")
        reset_button.on_click(lambda _: self._on_reset())
        save_button = W.Button(description="save PNG", icon="save")
        save_button.on_click(lambda _: self._on_save())

        def box(title: str, names: Sequence[str], extra: Sequence[Any] = ()) -> Any:
            return W.VBox([W.HTML(f"<b>{title}</b>"), *[self.sliders[n] for n in names], *extra])

        images = W.HBox([
            W.VBox([W.HTML("<b>StyleGAN image</b>"), self.image, self.estimate_label]),
            W.VBox([W.HTML("<b>3DMM target</b>"), self.render_image]),
        ])
        controls = W.HBox([
            box("pose", ["yaw", "pitch", "roll"]),
            box("expression", ["jawOpen", "smile", "blink", "browRaise"], [self.expression_name, self.expression_slider]),
            box("illumination", list(LIGHT_SLIDERS)),
        ])
        face_row = W.HBox([self.seed, random_button, self.transfer_component, self.transfer_seed, transfer_button,
                           reset_button, save_button])
        self.widget = W.VBox([W.HTML(PIXELATED_STYLE), images, face_row, controls, self.message, self.status])
        self._sync_sliders()
        self.request_frame()

    # -- construction from the embedded networks ------------------------------------------------
    @classmethod
    def default(cls, **kwargs: Any) -> "EditorApp":
        """The editor on the embedded FaceWorld StyleGAN2, F and RigNets (``stylerig_lite.pretrained``)."""
        import warnings

        from . import pretrained
        from .morphable import load_face_model

        loader = getattr(pretrained, "rignet", None)
        if loader is None:
            raise RuntimeError("this version of stylerig_lite.pretrained has no rignet() loader: the embedded "
                               "RigNets are not available yet; build EditorApp(G, rigs, F, face_model) yourself")
        rigs = {}
        for component in RIG_COMPONENTS:
            try:
                rigs[component] = loader(component)
            except (pretrained.WeightsError, KeyError, FileNotFoundError) as error:  # one missing: edit the others
                warnings.warn(f"no embedded {component} RigNet ({error}); its sliders move only the 3DMM rendering")
        if not rigs:
            raise pretrained.WeightsError("no embedded RigNet is available (see the warnings above)")
        return cls(pretrained.generator(), rigs, pretrained.face_estimator(), load_face_model(progress=False), **kwargs)

    # -- events ---------------------------------------------------------------------------------
    def _on_slider(self, name: str, value: float) -> None:
        if self._syncing:
            return
        # The browser snaps a synced value to the slider's step grid and sends it back; that echo
        # (less than half a step away) is not an edit and must not switch a rig on.
        if abs(float(value) - self.state.slider_value(name)) <= slider_spec(name).step / 2 + 1e-9:
            return
        self.state.set_slider(name, value)
        self.message.value = self.state.message
        self.request_frame()

    def _on_seed(self, seed: int) -> None:
        self.status.value = f"loading seed {seed} ..."
        self.state.set_seed(int(seed))
        self._sync_sliders()
        self.request_frame()

    def _on_reset(self) -> None:
        self.state.reset()
        self._sync_sliders()
        self.message.value = "reset to the generated face"
        self.request_frame()

    def _on_transfer(self) -> None:
        try:
            self.state.transfer(self.transfer_component.value, int(self.transfer_seed.value))
        except Exception as error:  # noqa: BLE001 - report in the app, keep it alive
            self._show_error(error)
            return
        self._sync_sliders()
        self.message.value = self.state.message
        self.request_frame()

    def _on_save(self) -> None:
        frame = self.last_frame
        seed = self.state.seed if self.state.seed is not None else "latent"
        path = self.save_dir / f"stylerig_seed{seed}_v{frame.version if frame else 0}.png"
        self.state.save_png(path, frame, size=self.display_size, with_render=True)
        self.message.value = f"saved {path}"

    def _sync_sliders(self) -> None:
        """Move the widgets to the state's values without triggering edits."""
        self._syncing = True
        try:
            for name, slider in self.sliders.items():
                slider.value = self.state.slider_value(name)
            self.expression_slider.value = self.state.slider_value(self.expression_name.value)
        finally:
            self._syncing = False

    # -- frames ---------------------------------------------------------------------------------
    def request_frame(self) -> None:
        self._scheduler.request()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the latest requested frame is shown (for scripts and tests)."""
        return self._scheduler.wait(timeout)

    def _show_frame(self, frame: Frame) -> None:
        self.last_frame = frame
        start = time.perf_counter()
        image, render = frame_pngs(frame)  # native resolution; the browser scales to display_size
        frame.timings_ms["display_ms"] = (time.perf_counter() - start) * 1e3
        self.image.value = image
        if render is not None:
            self.render_image.value = render
        if frame.estimate is not None:
            yaw, pitch, roll = frame.estimate.angles_deg[0].tolist()
            self.estimate_label.value = (f"F(shown image): yaw <span class='srl-yaw'>{yaw:.1f}</span>°, "
                                         f"pitch {pitch:.1f}°, roll {roll:.1f}°")
        t = frame.timings_ms
        rigs = ", ".join(frame.applied) or "none"
        self.status.value = (f"<small>frame {frame.version}: {t['total_ms']:.0f} ms (rigs [{rigs}] "
                             f"{t['rig_ms']:.1f}, G {t['generator_ms']:.1f}, 3DMM {t['render_ms']:.1f}"
                             + (f", F {t['estimate_ms']:.1f}" if "estimate_ms" in t else "")
                             + f", PNG {t['display_ms']:.1f} ms)</small>")

    def _show_error(self, error: BaseException) -> None:
        self.message.value = f"<span style='color:#b00'>error: {type(error).__name__}: {error}</span>"

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)


# ------------------------------------------------------------------------------- the static book
def edit_frames(state: EditorState, slider: str, values: Sequence[float]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Precompute a slider sweep: ``(images [N, 3, R, R] in [0, 1], renders [N, 3, h, h] or None)``.

    The state's target is restored afterwards, so a sweep does not disturb the editor.
    """
    images, renders = [], []
    saved = state.target_params()
    saved_light, saved_message = dict(state.light_controls), state.message
    try:
        for value in values:
            state.set_slider(slider, value)
            frame = state.compute_frame(estimate=False)
            images.append(((frame.image + 1) / 2).clamp(0, 1))
            if frame.render is not None:
                renders.append(frame.render)
    finally:
        with state._lock:
            state.target, state.light_controls, state.message = saved, saved_light, saved_message
            state.version += 1
    return torch.stack(images), (torch.stack(renders) if renders else None)


def edit_animation(state: EditorState, slider: str, values: Sequence[float], *, interval_ms: int = 120,
                   scale: float = 2.2, title: Optional[str] = None):
    """A matplotlib ``FuncAnimation`` of a slider sweep: GAN image and 3DMM target side by side."""
    import matplotlib.pyplot as plt
    from matplotlib import animation

    values = [float(v) for v in values]
    images, renders = edit_frames(state, slider, values)
    spec = slider_spec(slider)
    columns = 2 if renders is not None else 1
    fig, axes = plt.subplots(1, columns, figsize=(scale * columns, scale + 0.3), squeeze=False)
    panels = [axes[0, 0].imshow(images[0].permute(1, 2, 0).numpy(), interpolation="nearest")]
    axes[0, 0].set_title("StyleGAN", fontsize=9)
    if renders is not None:
        panels.append(axes[0, 1].imshow(renders[0].permute(1, 2, 0).numpy(), interpolation="nearest"))
        axes[0, 1].set_title("3DMM target", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    caption = fig.suptitle("", fontsize=9)

    def draw(i: int):
        panels[0].set_data(images[i].permute(1, 2, 0).numpy())
        if renders is not None:
            panels[1].set_data(renders[i].permute(1, 2, 0).numpy())
        caption.set_text(f"{title + ': ' if title else ''}{spec.label} = {values[i]:g}{spec.unit}")
        return [*panels, caption]

    draw(0)
    fig.tight_layout()
    anim = animation.FuncAnimation(fig, draw, frames=len(values), interval=interval_ms, blit=False)
    plt.close(fig)  # the animation holds the figure; do not also show it as a still
    return anim


def animation_html(state: EditorState, slider: str, values: Sequence[float], **kwargs: Any) -> str:
    """Self-contained HTML (``to_jshtml``: frames as embedded PNGs plus play/step controls) of a sweep.

    Works in the static book: ``IPython.display.HTML(animation_html(state, "yaw", range(-30, 31, 5)))``.
    Back-and-forth looping makes a sweep read like a slider being dragged.
    """
    return edit_animation(state, slider, values, **kwargs).to_jshtml(default_mode="reflect")


__all__ = [
    "RIG_COMPONENTS", "SLIDERS", "EXPRESSION_GROUPS", "PREVIEW_PARTS", "SliderSpec", "Frame",
    "EditorState", "EditorApp", "LatestOnly", "ModuleRig", "PreviewRenderer",
    "as_rig", "slider_spec", "check_expression_name", "clamp_to_spec", "light_direction", "light_to_gamma", "gamma_to_light",
    "to_png", "image_png", "frame_pngs", "edit_frames", "edit_animation", "animation_html",
]
