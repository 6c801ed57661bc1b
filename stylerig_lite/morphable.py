"""The 3D morphable face model: ICT-FaceKit geometry, our albedo model, pose.

A 3D morphable model (3DMM) is a linear model of faces. Given parameters
p = (α, β, δ, γ, ω) it produces a coloured mesh::

    vertices  = neutral + Σ_k α_k · identity_k + Σ_j β_j · expression_j     # [B, V, 3]  (cm)
    posed     = R(yaw, pitch, roll) · vertices + t                           # [B, V, 3]
    albedo    = mean_colour + Σ_m δ_m · albedo_basis_m                        # [B, V, 3]  in [0, 1]

and the renderer shades the albedo with 27 spherical-harmonics coefficients γ.

Geometry comes from ICT-FaceKit (MIT licence, USC ICT): a full head with
26,719 vertices, 100 identity PCA modes (each upstream file is the neutral
mesh plus one standard deviation of the mode) and the 53 ARKit-named
expression blendshapes (each upstream file is the neutral mesh plus the shape
at weight 1). ICT-FaceKit has no colour model, so the albedo model here is our
own: a hand-built, low-dimensional, smooth model of skin tone and regional
colour (lips, cheeks, brows, eye sockets, stubble, iris), documented in
:data:`ALBEDO_COMPONENTS`.

The parameter vector (used everywhere in the package) is laid out as::

    [ identity α (100) | expression β (53) | albedo δ (10) | light γ (27) | pose ω (6) ]   = 196 values

where pose = (yaw, pitch, roll) in radians followed by a translation (tx, ty, tz)
in cm. The rotation is R = Rz(roll) · Rx(pitch) · Ry(yaw) about the ICT origin
(inside the head). Positive yaw turns the nose toward +x (image right, the
subject's left), positive pitch turns the nose down, positive roll turns the
head counter-clockwise as the camera sees it. StyleRig's MoFA model used
α∈R⁸⁰, β∈R⁶⁴, δ∈R⁸⁰, γ∈R²⁷, ω∈R⁶ (257 values); ours differs because the
basis differs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .checks import assert_finite, assert_shape
from .io_utils import sha256_file

# The parameter layout lives in :mod:`stylerig_lite.params`; re-exported here, where chapter 1 meets it.
from .params import (  # noqa: F401
    ALBEDO_COMPONENTS, COMPONENT_SIZES, COMPONENTS, EXPRESSION_NAMES, NUM_ALBEDO, NUM_EXPRESSION, NUM_IDENTITY,
    NUM_LIGHT, NUM_PARAMS, NUM_POSE, POSE_NAMES, SLICES, FaceParams, check_component, euler_to_matrix,
    expression_index, matrix_to_euler,
)

__all__ = [
    "ALBEDO_COMPONENTS",  # re-exported
    "COMPONENT_SIZES",  # re-exported
    "COMPONENTS",  # re-exported
    "EXPRESSION_NAMES",  # re-exported
    "NUM_ALBEDO",  # re-exported
    "NUM_EXPRESSION",  # re-exported
    "NUM_IDENTITY",  # re-exported
    "NUM_LIGHT",  # re-exported
    "NUM_PARAMS",  # re-exported
    "NUM_POSE",  # re-exported
    "POSE_NAMES",  # re-exported
    "SLICES",  # re-exported
    "FaceParams",  # re-exported
    "check_component",  # re-exported
    "euler_to_matrix",  # re-exported
    "expression_index",  # re-exported
    "matrix_to_euler",  # re-exported
    "build_albedo_model",
    "CACHE_VERSION",
    "convert_ict",
    "DEFAULT_VISIBLE_PARTS",
    "FaceGeometry",
    "FaceModel",
    "ICT_PREFIX",
    "inspect_source_hash",
    "load_face_model",
    "NUM_VERTICES",
    "ParamDistribution",
    "PART_NAMES",
    "PARTS",
    "read_obj",
    "sample_params",
    "triangulate",
    "vertex_part_ids",
    "VERTEX_RANGES",
]

# ----------------------------------------------------------------------------
# Random parameters.


@dataclasses.dataclass
class ParamDistribution:
    """The distribution that :func:`sample_params` draws from (documented in chapter 1).

    identity and albedo: independent N(0, scale²) in units of standard deviation.
    expression: each of the 53 weights is active with probability
    ``expression_active_prob`` and then uniform in [0, expression_max]; jawOpen
    gets its own probability because an open mouth matters most for the rig.
    light: ambient intensity uniform in ``ambient``, plus a directional light of
    strength uniform in ``directional`` from a random direction in the front
    hemisphere, plus a small colour tint.
    pose: yaw, pitch, roll uniform within ± the given degrees; translation
    uniform within ± ``translation_cm``.
    """

    identity_scale: float = 1.0
    albedo_scale: float = 1.0
    expression_active_prob: float = 0.12
    expression_max: float = 0.8
    jaw_open_prob: float = 0.4
    jaw_open_max: float = 0.7
    ambient: Tuple[float, float] = (0.55, 0.9)
    directional: Tuple[float, float] = (0.1, 0.6)
    light_tint: float = 0.06
    yaw_deg: float = 30.0
    pitch_deg: float = 15.0
    roll_deg: float = 12.0
    translation_cm: Tuple[float, float, float] = (1.5, 1.5, 3.0)


def sample_params(
    batch: int,
    *,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    distribution: ParamDistribution = ParamDistribution(),
    device=None,
) -> FaceParams:
    """Draw ``batch`` plausible random faces. Deterministic given ``seed`` (or ``generator``)."""
    from .shading import directional_gamma

    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    d = distribution

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    identity = torch.randn(batch, NUM_IDENTITY, generator=generator) * d.identity_scale
    albedo = torch.randn(batch, NUM_ALBEDO, generator=generator) * d.albedo_scale

    active = torch.rand(batch, NUM_EXPRESSION, generator=generator) < d.expression_active_prob
    expression = active * uniform(0.0, d.expression_max, batch, NUM_EXPRESSION)
    jaw = EXPRESSION_NAMES.index("jawOpen")
    jaw_active = torch.rand(batch, generator=generator) < d.jaw_open_prob
    expression[:, jaw] = jaw_active * uniform(0.0, d.jaw_open_max, batch)

    direction = torch.randn(batch, 3, generator=generator)
    direction[:, 2] = direction[:, 2].abs() + 0.3  # front hemisphere: light comes from the camera side
    direction = direction / direction.norm(dim=1, keepdim=True)
    ambient = uniform(*d.ambient, batch)
    strength = uniform(*d.directional, batch)
    tint = 1.0 + d.light_tint * (2 * torch.rand(batch, 3, generator=generator) - 1)
    light = directional_gamma(direction, strength[:, None] * tint, ambient[:, None] * tint)

    angles = torch.stack(
        [uniform(-d.yaw_deg, d.yaw_deg, batch), uniform(-d.pitch_deg, d.pitch_deg, batch), uniform(-d.roll_deg, d.roll_deg, batch)],
        dim=1,
    )
    translation = torch.stack([uniform(-t, t, batch) for t in d.translation_cm], dim=1)
    pose = torch.cat([torch.deg2rad(angles), translation], dim=1)
    params = FaceParams(identity, expression, albedo, light, pose)
    return params.to(device) if device is not None else params


# ----------------------------------------------------------------------------
# Parts of the ICT head.

#: Upstream's documented vertex ranges (inclusive); checked against the meshes' materials in the tests.
VERTEX_RANGES: Dict[str, Tuple[int, int]] = {
    "face": (0, 9408),
    "head_neck": (9409, 11247),
    "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677),
    "eye_socket_right": (13678, 14061),
    "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "eyeball_left": (21451, 23020),
    "eyeball_right": (23021, 24590),
    "lacrimal_fluid": (24591, 24998),
    "eye_blend": (24999, 25046),
    "eye_occlusion": (25047, 25350),
    "eyelashes": (25351, 26718),
}
NUM_VERTICES = 26719

#: The coarse parts the renderer reports masks for, and the fine ranges each gathers.
PARTS: Dict[str, Tuple[str, ...]] = {
    "face": ("face",),
    "head_neck": ("head_neck", "eye_socket_left", "eye_socket_right"),
    "mouth_interior": ("mouth_socket", "gums_tongue"),
    "teeth": ("teeth",),
    "eyes": ("eyeball_left", "eyeball_right", "lacrimal_fluid"),
    "eye_overlays": ("eye_blend", "eye_occlusion"),
    "eyelashes": ("eyelashes",),
}
PART_NAMES: Tuple[str, ...] = tuple(PARTS)

#: Parts drawn by default. Upstream's eye blend / eye occlusion meshes are
#: semi-transparent shadow layers for a real-time engine; an opaque rasterizer
#: would paint them as grey shells over the eyes, so they are hidden by default.
DEFAULT_VISIBLE_PARTS: Tuple[str, ...] = ("face", "head_neck", "mouth_interior", "teeth", "eyes", "eyelashes")


def vertex_part_ids() -> np.ndarray:
    """Coarse part id per vertex, ``[V]`` int64 (index into :data:`PART_NAMES`)."""
    ids = np.full(NUM_VERTICES, -1, dtype=np.int64)
    for part_id, part in enumerate(PART_NAMES):
        for fine in PARTS[part]:
            lo, hi = VERTEX_RANGES[fine]
            ids[lo : hi + 1] = part_id
    assert (ids >= 0).all()
    return ids


# ----------------------------------------------------------------------------
# Reading the ICT OBJ files.

ICT_PREFIX = "ict-facekit/FaceXModel/"


def read_obj(path: os.PathLike, *, faces: bool = False):
    """Read vertex positions (and optionally polygon faces and their material) of an OBJ, plain or ``.gz``.

    Returns ``vertices [V, 3] float64`` or ``(vertices, polygons, materials)`` with
    polygons a list of 0-based index tuples and materials the ``usemtl`` name per polygon.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OBJ file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read OBJ file {path}: {exc}; the file is corrupt, delete it and fetch it again") from exc
    vertex_tokens: List[str] = []
    polygons: List[Tuple[int, ...]] = []
    materials: List[str] = []
    material = ""
    for line in text.splitlines():
        if line.startswith("v "):
            vertex_tokens.extend(line.split()[1:4])
        elif faces and line.startswith("f "):
            polygons.append(tuple(int(t.split("/")[0]) - 1 for t in line.split()[1:]))
            materials.append(material)
        elif faces and line.startswith("usemtl "):
            material = line.split()[1]
    try:
        vertices = np.asarray(vertex_tokens, dtype=np.float64).reshape(-1, 3)
    except ValueError as exc:
        raise ValueError(f"OBJ file {path} has malformed vertex lines: {exc}") from exc
    if len(vertices) == 0:
        raise ValueError(f"OBJ file {path} has no vertices; it is truncated or not an OBJ file")
    return (vertices, polygons, materials) if faces else vertices


def triangulate(polygons: Sequence[Tuple[int, ...]]) -> Tuple[np.ndarray, np.ndarray]:
    """Split quads into two triangles (v0,v1,v2),(v0,v2,v3); returns ``(faces [F,3], source polygon [F])``."""
    tris, source = [], []
    for i, poly in enumerate(polygons):
        for k in range(1, len(poly) - 1):
            tris.append((poly[0], poly[k], poly[k + 1]))
            source.append(i)
    return np.asarray(tris, dtype=np.int64), np.asarray(source, dtype=np.int64)


# ----------------------------------------------------------------------------
# Our albedo model.


def _segment_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance from each point ``[N,3]`` to a polyline ``[K,3]`` (open)."""
    best = np.full(len(points), np.inf)
    for a, b in zip(polyline[:-1], polyline[1:]):
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * ab), axis=1))
    return best


def _inside_polygon_xy(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of points' (x, y) against a closed polygon's (x, y)."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    px, py = polygon[:, 0], polygon[:, 1]
    for i in range(len(polygon)):
        x0, y0, x1, y1 = px[i - 1], py[i - 1], px[i], py[i]
        crosses = (y0 > y) != (y1 > y)
        xi = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
        inside ^= crosses & (x < xi)
    return inside


def build_albedo_model(neutral: np.ndarray, landmarks: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """Our albedo model on the ICT topology: ``(mean [V,3], basis [M,V,3], region weights)``.

    Regions are smooth per-vertex weights in [0, 1] built from the neutral
    mesh and its 68 landmarks (distances in cm with Gaussian fall-off), so that
    colour varies smoothly across the skin.
    """
    v = neutral
    part = vertex_part_ids()
    pid = {name: i for i, name in enumerate(PART_NAMES)}
    fine = np.full(NUM_VERTICES, "", dtype=object)
    for name, (lo, hi) in VERTEX_RANGES.items():
        fine[lo : hi + 1] = name
    lm = v[landmarks]
    front = v[:, 2] > 2.0  # regional colour only on the front of the face

    skin = np.isin(part, [pid["face"], pid["head_neck"]]).astype(np.float64)
    face = (part == pid["face"]) & front

    outer_lip = lm[48:60]
    lip_inside = _inside_polygon_xy(v, outer_lip) & face & (v[:, 2] > 8.0)
    lip_edge = np.exp(-(_segment_distance(v, np.vstack([outer_lip, outer_lip[:1]])) / 0.25) ** 2) * face
    lips = np.clip(lip_inside + 0.5 * lip_edge, 0, 1)

    cheek_centres = [0.5 * (lm[2] + lm[31]) + [0.0, 0.8, 0.0], 0.5 * (lm[14] + lm[35]) + [0.0, 0.8, 0.0]]
    cheeks = sum(np.exp(-np.sum((v - c) ** 2, axis=1) / (2 * 1.6**2)) for c in cheek_centres) * face
    brows = (np.exp(-(_segment_distance(v, lm[17:22]) / 0.45) ** 2) + np.exp(-(_segment_distance(v, lm[22:27]) / 0.45) ** 2)) * face
    sockets = sum(np.exp(-np.sum((v - lm[a:b].mean(0)) ** 2, axis=1) / (2 * 1.1**2)) for a, b in ((36, 42), (42, 48))) * face
    jaw = np.exp(-(_segment_distance(v, lm[3:14]) / 1.2) ** 2)
    upper_lip = np.exp(-(_segment_distance(v, lm[48:55]) / 0.6) ** 2) * (v[:, 1] > lm[51, 1])
    chin = np.exp(-np.sum((v - (lm[8] + [0, 1.5, -0.5])) ** 2, axis=1) / (2 * 1.3**2))
    beard = np.clip(jaw + upper_lip + chin, 0, 1) * face * (v[:, 1] < lm[33, 1]) * (1 - lips)

    # Iris and pupil. Each upstream eyeball is a sclera ball whose front is a clear
    # cornea in upstream renders, around an iris mesh whose material also spans much of
    # the ball. An opaque rasterizer would show the cornea as white, so colour is set by
    # the angle from the eye's axis instead: an iris cone of 22° (≈1.1 cm on a 1.5 cm
    # ball) with a 9° pupil, on every vertex of the eyeball. The eyeLook* blendshapes
    # rotate the ball, so gaze still works.
    iris = np.zeros(NUM_VERTICES)
    pupil = np.zeros(NUM_VERTICES)
    for eyeball in ("eyeball_left", "eyeball_right"):
        lo, hi = VERTEX_RANGES[eyeball]
        ball = np.arange(lo, hi + 1)
        centre = v[lo : lo + 770].mean(0)  # the sclera ball's centre
        axis = v[lo + 770 : hi + 1].mean(0) - centre
        axis /= np.linalg.norm(axis)
        d = v[ball] - centre
        cosine = (d / np.linalg.norm(d, axis=1, keepdims=True)) @ axis
        iris[ball[cosine >= np.cos(np.radians(22.0))]] = 1.0
        pupil[ball[cosine >= np.cos(np.radians(9.0))]] = 1.0

    regions = {
        "skin": skin,
        "lips": np.clip(lips, 0, 1) * skin,
        "cheeks": np.clip(cheeks, 0, 1),
        "brows": np.clip(brows, 0, 1),
        "eye_sockets": np.clip(sockets, 0, 1),
        "beard": beard,
        "iris": iris * (1 - pupil),
    }

    colours = {
        "face": (0.78, 0.58, 0.48),
        "head_neck": (0.78, 0.58, 0.48),
        "eye_socket_left": (0.70, 0.50, 0.42),
        "eye_socket_right": (0.70, 0.50, 0.42),
        "mouth_socket": (0.35, 0.10, 0.10),
        "gums_tongue": (0.62, 0.26, 0.26),
        "teeth": (0.90, 0.87, 0.78),
        "eyeball_left": (0.92, 0.90, 0.88),
        "eyeball_right": (0.92, 0.90, 0.88),
        "lacrimal_fluid": (0.85, 0.70, 0.66),
        "eye_blend": (0.80, 0.70, 0.65),
        "eye_occlusion": (0.55, 0.42, 0.38),
        "eyelashes": (0.16, 0.11, 0.09),
    }
    mean = np.zeros((NUM_VERTICES, 3))
    for name, rgb in colours.items():
        lo, hi = VERTEX_RANGES[name]
        mean[lo : hi + 1] = rgb
    mean[iris > 0] = (0.36, 0.23, 0.13)  # brown iris on average
    mean[pupil > 0] = (0.03, 0.02, 0.02)
    # The mean face already has rosier lips, darker brows and shadowed sockets.
    mean += regions["lips"][:, None] * np.array([0.06, -0.12, -0.08])
    mean += regions["brows"][:, None] * np.array([-0.18, -0.16, -0.14])
    mean += regions["eye_sockets"][:, None] * np.array([-0.04, -0.05, -0.04])

    basis = np.stack([regions[region][:, None] * np.asarray(rgb)[None] for _, region, rgb in ALBEDO_COMPONENTS])
    return mean.clip(0.0, 1.0), basis, regions


# ----------------------------------------------------------------------------
# The model.


@dataclasses.dataclass
class FaceGeometry:
    """What :class:`FaceModel` produces for a batch of parameters."""

    vertices: torch.Tensor  # [B, V, 3] posed, world frame, cm
    albedo: torch.Tensor  # [B, V, 3] in [0, 1]
    landmarks: torch.Tensor  # [B, 68, 3] posed 3D landmark positions
    light: torch.Tensor  # [B, 27] SH coefficients (passed through for the renderer)


class FaceModel(nn.Module):
    """ICT-FaceKit geometry plus our albedo model, as a batched differentiable module.

    ``model(params)`` maps :class:`FaceParams` (or a ``[B, 196]`` vector) to
    :class:`FaceGeometry`. All bases are buffers, so ``model.to("cuda")`` moves them.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        super().__init__()
        f32 = lambda key: torch.as_tensor(np.asarray(arrays[key]), dtype=torch.float32)  # noqa: E731
        neutral = f32("neutral")
        self.num_vertices = neutral.shape[0]
        self.register_buffer("neutral", neutral)  # [V, 3]
        self.register_buffer("identity_basis", f32("identity").reshape(NUM_IDENTITY, -1))  # [100, V*3]
        self.register_buffer("expression_basis", f32("expression").reshape(NUM_EXPRESSION, -1))  # [53, V*3]
        self.register_buffer("albedo_mean", f32("albedo_mean"))  # [V, 3]
        self.register_buffer("albedo_basis", f32("albedo_basis").reshape(NUM_ALBEDO, -1))  # [10, V*3]
        self.register_buffer("faces", torch.as_tensor(arrays["faces"], dtype=torch.long))  # [F, 3]
        self.register_buffer("face_part", torch.as_tensor(arrays["face_part"], dtype=torch.long))  # [F]
        self.register_buffer("vertex_part", torch.as_tensor(vertex_part_ids(), dtype=torch.long))  # [V]
        self.register_buffer("landmark_indices", torch.as_tensor(arrays["landmarks"], dtype=torch.long))  # [68]
        self.part_names = PART_NAMES

    # -- geometry -----------------------------------------------------------
    def shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Unposed vertices ``[B, V, 3]`` from α ``[B, 100]`` and β ``[B, 53]``."""
        assert_shape(identity, [None, NUM_IDENTITY], "identity")
        assert_shape(expression, [identity.shape[0], NUM_EXPRESSION], "expression")
        offsets = identity @ self.identity_basis + expression @ self.expression_basis  # [B, V*3]
        return self.neutral + offsets.view(-1, self.num_vertices, 3)

    def colour(self, albedo: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo ``[B, V, 3]`` in [0, 1] from δ ``[B, 10]``.

        Clamped to [0, 1]: the gradient vanishes only where a colour saturates.
        """
        assert_shape(albedo, [None, NUM_ALBEDO], "albedo")
        return (self.albedo_mean + (albedo @ self.albedo_basis).view(-1, self.num_vertices, 3)).clamp(0.0, 1.0)

    @staticmethod
    def pose_vertices(vertices: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Apply ω = (yaw, pitch, roll, tx, ty, tz): ``R v + t`` about the ICT origin."""
        assert_shape(pose, [None, NUM_POSE], "pose")
        rotation = euler_to_matrix(pose[:, :3])  # [B, 3, 3]
        return vertices @ rotation.transpose(1, 2) + pose[:, None, 3:]

    def forward(self, params) -> FaceGeometry:
        if isinstance(params, torch.Tensor):
            params = FaceParams.from_vector(params)
        if not isinstance(params, FaceParams):
            raise TypeError(f"FaceModel expects FaceParams or a [B, {NUM_PARAMS}] tensor, got {type(params).__name__}")
        assert_finite(params.to_vector(), "face parameters")
        vertices = self.pose_vertices(self.shape(params.identity, params.expression), params.pose)
        return FaceGeometry(
            vertices=vertices,
            albedo=self.colour(params.albedo),
            landmarks=vertices[:, self.landmark_indices],
            light=params.light,
        )

    # -- parts --------------------------------------------------------------
    def part_id(self, name: str) -> int:
        if name not in self.part_names:
            raise KeyError(f"unknown part {name!r}; expected one of {list(self.part_names)}")
        return self.part_names.index(name)

    def faces_of(self, parts: Iterable[str] = DEFAULT_VISIBLE_PARTS) -> torch.Tensor:
        """Triangle indices ``[F', 3]`` of the given parts (e.g. the face region alone)."""
        ids = torch.tensor([self.part_id(p) for p in parts], device=self.face_part.device)
        return self.faces[torch.isin(self.face_part, ids)]

    def face_mask(self, parts: Iterable[str] = DEFAULT_VISIBLE_PARTS) -> torch.Tensor:
        """Boolean ``[F]`` mask of triangles belonging to ``parts``."""
        ids = torch.tensor([self.part_id(p) for p in parts], device=self.face_part.device)
        return torch.isin(self.face_part, ids)


# ----------------------------------------------------------------------------
# Loading with a compact cache.

CACHE_VERSION = 1


def _ict_files() -> List[str]:
    return ["generic_neutral_mesh", *[f"identity{k:03d}" for k in range(NUM_IDENTITY)], *EXPRESSION_NAMES]


def convert_ict(source: "os.PathLike | None" = None, *, progress: bool = True) -> Dict[str, np.ndarray]:
    """Read the ICT OBJ files and build every array :class:`FaceModel` needs.

    ``source``: a folder holding ``<name>.obj`` or ``<name>.obj.gz`` files and
    ``vertex_indices.json``; ``None`` fetches them through :mod:`stylerig_lite.assets`
    (cache, local mirror, then download, all hash-checked).
    """
    names = _ict_files()
    if source is None:
        from . import assets

        paths = {n: Path(p) for n, p in zip(names, assets.fetch_many([f"{ICT_PREFIX}{n}.obj" for n in names], progress=progress))}
        indices_path = Path(assets.fetch(f"{ICT_PREFIX}vertex_indices.json", progress=False))
    else:
        source = Path(source)
        if not source.is_dir():
            raise FileNotFoundError(f"ICT-FaceKit folder not found: {source}")
        paths = {}
        for n in names:
            for candidate in (source / f"{n}.obj", source / f"{n}.obj.gz"):
                if candidate.exists():
                    paths[n] = candidate
                    break
            else:
                raise FileNotFoundError(
                    f"missing ICT-FaceKit file {n}.obj (or .obj.gz) in {source}; the folder must hold the whole "
                    "FaceXModel directory of ICT-FaceKit"
                )
        indices_path = source / "vertex_indices.json"
        if not indices_path.exists():
            raise FileNotFoundError(f"missing ICT-FaceKit file vertex_indices.json in {source}")

    with open(indices_path, encoding="utf-8") as f:
        indices = json.load(f)
    if list(indices.get("expressions", [])) != list(EXPRESSION_NAMES):
        raise ValueError(f"{indices_path}: the expression list differs from the 53 ICT names this package expects")
    landmarks = np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64)

    iterator: Iterable[str] = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="converting ICT-FaceKit", unit="mesh")
    meshes = {}
    neutral = polygons = materials = None
    for n in iterator:
        if n == "generic_neutral_mesh":
            neutral, polygons, materials = read_obj(paths[n], faces=True)
            continue
        vertices = read_obj(paths[n])
        if neutral is not None and vertices.shape != neutral.shape:
            raise ValueError(
                f"{paths[n]} has {len(vertices)} vertices, expected {len(neutral)} like the neutral mesh; "
                "the file is truncated or from another model version"
            )
        meshes[n] = vertices
    assert neutral is not None and polygons is not None and materials is not None
    if neutral.shape != (NUM_VERTICES, 3):
        raise ValueError(f"the neutral mesh has {len(neutral)} vertices, expected {NUM_VERTICES}")
    faces, source_polygon = triangulate(polygons)
    # Part of each triangle = part of its highest vertex: seam triangles of the back
    # of the head touch face vertices, but their other corners lie in the head range.
    face_part = vertex_part_ids()[faces.max(axis=1)]
    mean, basis, _ = build_albedo_model(neutral, landmarks)
    return {
        "neutral": neutral.astype(np.float32),
        "identity": np.stack([meshes[f"identity{k:03d}"] - neutral for k in range(NUM_IDENTITY)]).astype(np.float32),
        "expression": np.stack([meshes[n] - neutral for n in EXPRESSION_NAMES]).astype(np.float32),
        "faces": faces,
        "face_part": face_part,
        "face_material": np.asarray([materials[i] for i in source_polygon]),
        "landmarks": landmarks,
        "albedo_mean": mean.astype(np.float32),
        "albedo_basis": basis.astype(np.float32),
    }


def _cache_path() -> Path:
    from . import assets

    digest = hashlib.sha256()
    registry = assets.default_registry()
    for n in _ict_files():
        digest.update(registry[f"{ICT_PREFIX}{n}.obj"].sha256.encode())
    digest.update(inspect_source_hash().encode())
    return assets.default_cache_dir() / "converted" / f"ict_face_model_v{CACHE_VERSION}_{digest.hexdigest()[:12]}.npz"


def inspect_source_hash() -> str:
    """Hash of this module's source, so that editing the albedo model invalidates the cache."""
    return sha256_file(__file__)


_MODEL_CACHE: Dict[str, Dict[str, np.ndarray]] = {}


def load_face_model(source: "os.PathLike | None" = None, *, device=None, progress: bool = True) -> FaceModel:
    """The ICT-FaceKit face model, converted once into a compact ``.npz`` in the asset cache.

    ``source`` as in :func:`convert_ict`. The conversion (reading 154 OBJ files)
    takes about half a minute the first time; later calls load the array file.
    """
    if source is not None:
        return FaceModel(convert_ict(source, progress=progress)).to(device)
    path = _cache_path()
    key = str(path)
    if key not in _MODEL_CACHE:
        arrays = None
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
            except (OSError, ValueError, EOFError):
                arrays = None  # a corrupt cache file is rebuilt below
        if arrays is None:
            arrays = convert_ict(None, progress=progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        _MODEL_CACHE[key] = arrays
    return FaceModel(_MODEL_CACHE[key]).to(device)
