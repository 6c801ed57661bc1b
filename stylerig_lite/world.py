"""FaceWorld: random 3DMM parameters -> 64×64 portraits with known ground truth.

StyleRig rigs a GAN trained on photos. Photos have everything a 3DMM lacks:
hair, headwear, shoulders and clothes, backgrounds. FaceWorld renders the ICT
head *with* such context, so that a GAN trained on FaceWorld has something
to preserve while RigNet edits the face, and every edit can be scored against
the exact parameters that made an image.

A scene is the ICT head (face, neck, mouth interior, teeth, eyes, eyelashes)
plus

- **hair or headwear**: a shell over the scalp, offset along the neutral
  head's normals. Its coverage is a smooth function of position (front
  hairline height, how far down the back it reaches, thickness); where a
  style has no hair, the shell sinks 0.6 cm *inside* the head and the z-buffer
  hides it, so every scene has the same triangles and batches render at once;
- **shoulders and clothes**: an elliptical torso mesh under the neck that
  follows the head's translation, a quarter of its yaw and 40% of its roll
  (people turn their heads more than their shoulders);
- **a background**: a two-colour linear gradient plus a few soft blobs.

Everything is drawn by our differentiable renderer with the same camera and
spherical-harmonics light as the face. The distribution of every quantity is
in :class:`WorldConfig` and :class:`~stylerig_lite.morphable.ParamDistribution`
and is documented in the book (appendix A; chapter 2, section 1 sums it up). Rendered sets on disk
(shard folders, F's cache) are :mod:`stylerig_lite.datasets`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from . import morphable
from .camera import Camera
from .checks import assert_shape
from .io_utils import sha256_file
from .morphable import FaceModel, FaceParams, ParamDistribution
from .render import render_mesh
from .shading import vertex_normals

__all__ = [
    "CLOTHES_PART",
    "config_hash",
    "FaceWorld",
    "HAIR_PALETTE",
    "HAIR_PART",
    "NECK_CUT_CM",
    "WORLD_PART_NAMES",
    "WorldBatch",
    "WorldConfig",
]

HAIR_PART = len(morphable.PART_NAMES)  # part ids after the ICT parts
CLOTHES_PART = HAIR_PART + 1
WORLD_PART_NAMES = morphable.PART_NAMES + ("hair", "clothes")
NECK_CUT_CM = -13.0  # no hair below this height of the neutral head: the collar covers it

#: Hair colours (display RGB), from black to grey; one is drawn per scene.
HAIR_PALETTE = np.array(
    [
        (0.06, 0.05, 0.05),
        (0.16, 0.10, 0.07),
        (0.30, 0.19, 0.11),
        (0.48, 0.33, 0.19),
        (0.72, 0.58, 0.36),
        (0.55, 0.23, 0.10),
        (0.62, 0.61, 0.60),
    ]
)


@dataclasses.dataclass
class WorldConfig:
    """Everything that defines FaceWorld's distribution besides the 3DMM parameters."""

    image_size: int = 64
    camera_distance: float = 100.0
    camera_focal: float = 2.5  # in image widths: a 40 cm tall region fills the image
    params: ParamDistribution = dataclasses.field(default_factory=ParamDistribution)
    bald_prob: float = 0.1
    headwear_prob: float = 0.12
    front_hairline_cm: Tuple[float, float] = (6.8, 10.5)  # height of the front hairline (brows at ~6.3)
    back_hairline_cm: Tuple[float, float] = (-15.0, -3.0)  # how far down the back of the head/neck
    hair_thickness_cm: Tuple[float, float] = (0.3, 2.2)
    torso_yaw_fraction: float = 0.25
    torso_roll_fraction: float = 0.4


@dataclasses.dataclass
class WorldBatch:
    """A batch of FaceWorld portraits and their exact labels."""

    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    params: FaceParams  # the exact 3DMM parameters
    landmarks: torch.Tensor  # [B, 68, 2] pixels (projection of the landmark vertices)
    face_mask: torch.Tensor  # [B, 1, H, W] pixels showing the face region (skin of the face part)
    mask: torch.Tensor  # [B, 1, H, W] foreground (head, hair, clothes)
    part_index: torch.Tensor  # [B, H, W] part id per pixel (-1 background), names in WORLD_PART_NAMES
    scene: Dict[str, torch.Tensor]  # the non-3DMM context: hair, clothes, background

    def images_pm1(self) -> torch.Tensor:
        """Images in [-1, 1], as the GAN sees them."""
        return self.images * 2 - 1


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


class FaceWorld(torch.nn.Module):
    """The sampler. ``world.sample(batch, seed=...)`` -> :class:`WorldBatch`."""

    def __init__(self, model: Optional[FaceModel] = None, config: Optional[WorldConfig] = None):
        super().__init__()
        self.model = model if model is not None else morphable.load_face_model(progress=False)
        self.config = config or WorldConfig()
        self.camera = Camera(distance=self.config.camera_distance, focal=self.config.camera_focal, image_size=self.config.image_size)
        device = self.model.neutral.device
        neutral = self.model.neutral  # [V, 3]
        visible = self.model.face_mask(morphable.DEFAULT_VISIBLE_PARTS)
        head_faces = self.model.faces[visible]  # [Fh, 3]
        head_part = self.model.face_part[visible]

        # Hair shell: skin vertices that can ever carry hair (not the front of the face below the brows).
        part = self.model.vertex_part
        skin = (part == self.model.part_id("face")) | (part == self.model.part_id("head_neck"))
        never = (neutral[:, 2] > 6.0) & (neutral[:, 1] < 6.3)
        # Ears are thinner than the 0.6 cm the hidden shell sinks, so it would poke through them.
        x, y, z = neutral.unbind(dim=1)
        never |= (x.abs() > 6.5) & (y > -3.5) & (y < 6.0) & (z > -4.0) & (z < 5.0)
        candidate = skin & ~never & (neutral[:, 1] > NECK_CUT_CM)
        index = torch.full((neutral.shape[0],), -1, dtype=torch.long, device=device)
        hair_vertices = torch.nonzero(candidate).squeeze(1)  # [Vh]
        index[hair_vertices] = torch.arange(len(hair_vertices), device=device)
        skin_faces = self.model.faces[(self.model.face_part == self.model.part_id("face")) | (self.model.face_part == self.model.part_id("head_neck"))]
        keep = candidate[skin_faces].all(dim=1)
        self.register_buffer("hair_vertices", hair_vertices)
        hair_faces = index[skin_faces[keep]]  # [Fhair, 3], indices into the shell
        normals = vertex_normals(neutral[None], self.model.faces)[0]
        self.register_buffer("hair_normals", normals[hair_vertices])  # [Vh, 3]
        self.register_buffer("hair_rest", neutral[hair_vertices])  # [Vh, 3] positions that define coverage

        torso_vertices, torso_faces = _torso_mesh()
        self.register_buffer("torso_vertices", torso_vertices.to(device))
        v_head, v_hair = neutral.shape[0], len(hair_vertices)
        faces = torch.cat([head_faces, hair_faces + v_head, torso_faces.to(device) + v_head + v_hair])
        face_part = torch.cat(
            [
                head_part,
                torch.full((len(hair_faces),), HAIR_PART, device=device),
                torch.full((len(torso_faces),), CLOTHES_PART, device=device),
            ]
        )
        self.register_buffer("faces", faces)
        self.register_buffer("face_part", face_part)
        # Per-vertex strand texture for hair (fixed, so a scene is deterministic).
        strands = torch.rand(v_hair, generator=torch.Generator().manual_seed(1234))
        self.register_buffer("hair_texture", 0.85 + 0.3 * strands.to(device))

    # -- scene parameters ---------------------------------------------------
    def sample_scene(self, batch: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """The non-3DMM context of ``batch`` scenes (hair, clothes, background)."""
        c = self.config

        def uniform(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(*shape, generator=generator)

        palette = torch.as_tensor(HAIR_PALETTE, dtype=torch.float32)
        hair_colour = palette[torch.randint(len(palette), (batch,), generator=generator)]
        hair_colour = (hair_colour * uniform(0.85, 1.15, batch, 1)).clamp(0, 1)
        headwear = torch.rand(batch, generator=generator) < c.headwear_prob
        bald = (torch.rand(batch, generator=generator) < c.bald_prob) & ~headwear
        hat_colour = uniform(0.1, 0.9, batch, 3)
        front = uniform(*c.front_hairline_cm, batch)
        back = uniform(*c.back_hairline_cm, batch)
        thickness = uniform(*c.hair_thickness_cm, batch)
        # Headwear: a smooth cap with a fixed brim above the brows; bald: no coverage.
        front = torch.where(headwear, torch.full_like(front, 8.5), front)
        back = torch.where(headwear, torch.full_like(back, 1.0), back)
        thickness = torch.where(headwear, torch.full_like(thickness, 1.0), thickness)
        front = torch.where(bald, torch.full_like(front, 99.0), front)
        back = torch.where(bald, torch.full_like(back, 99.0), back)
        hair_colour = torch.where(headwear[:, None], hat_colour, hair_colour)
        clothes = uniform(0.05, 0.95, batch, 3) ** 1.3
        background = torch.stack([uniform(0.1, 0.95, batch, 3), uniform(0.1, 0.95, batch, 3)], dim=1)  # [B, 2, 3]
        return {
            "hair_colour": hair_colour,
            "hair_front_cm": front,
            "hair_back_cm": back,
            "hair_thickness_cm": thickness,
            "headwear": headwear.float(),
            "clothes_colour": clothes,
            "background_colours": background,
            "background_angle": uniform(0, 2 * np.pi, batch),
            "background_blobs": torch.cat(
                [uniform(0.0, 1.0, batch, 3, 2), uniform(0.12, 0.35, batch, 3, 1), uniform(0.0, 1.0, batch, 3, 3)], dim=2
            ),  # [B, 3 blobs, (cx, cy, sigma, r, g, b)]
        }

    # -- geometry of the context ---------------------------------------------
    def hair_geometry(self, shaped: torch.Tensor, scene: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Hair shell vertices ``[B, Vh, 3]`` (unposed) over the shaped head ``[B, V, 3]``."""
        rest = self.hair_rest  # [Vh, 3]
        # 0 at the back of the head, 1 at the front: the hairline line blends between them.
        frontness = _smoothstep((rest[:, 2] + 2.0) / 8.0)  # [Vh]
        line = scene["hair_back_cm"][:, None] * (1 - frontness) + scene["hair_front_cm"][:, None] * frontness  # [B, Vh]
        covered = _smoothstep((rest[None, :, 1] - line) / 0.6)  # [B, Vh]
        volume = 0.5 + 0.5 * _smoothstep((rest[None, :, 1] - line) / 5.0)
        offset = covered * volume * scene["hair_thickness_cm"][:, None] - 0.6 * (1 - covered)
        return shaped[:, self.hair_vertices] + offset[..., None] * self.hair_normals

    def torso_geometry(self, pose: torch.Tensor) -> torch.Tensor:
        """Torso vertices ``[B, Vt, 3]``: the head's translation and fractions of its yaw and roll."""
        angles = torch.zeros_like(pose[:, :3])
        angles[:, 0] = pose[:, 0] * self.config.torso_yaw_fraction
        angles[:, 2] = pose[:, 2] * self.config.torso_roll_fraction
        rotation = morphable.euler_to_matrix(angles)
        return self.torso_vertices @ rotation.transpose(1, 2) + pose[:, None, 3:]

    def background(self, scene: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 3, H, W]`` backgrounds: a linear two-colour gradient plus three soft blobs."""
        size = self.config.image_size
        device = scene["background_colours"].device
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size, device=device), torch.linspace(0, 1, size, device=device), indexing="ij")
        angle = scene["background_angle"][:, None, None]
        t = ((xs - 0.5) * torch.cos(angle) + (ys - 0.5) * torch.sin(angle)) / 1.42 + 0.5  # [B, H, W] in [0, 1]
        c0, c1 = scene["background_colours"][:, 0], scene["background_colours"][:, 1]  # [B, 3]
        image = c0[:, :, None, None] * (1 - t[:, None]) + c1[:, :, None, None] * t[:, None]
        for k in range(scene["background_blobs"].shape[1]):
            blob = scene["background_blobs"][:, k]  # [B, 6]
            d2 = (xs - blob[:, 0, None, None]) ** 2 + (ys - blob[:, 1, None, None]) ** 2
            weight = 0.6 * torch.exp(-d2 / (2 * blob[:, 2, None, None] ** 2))  # [B, H, W]
            image = image * (1 - weight[:, None]) + blob[:, 3:, None, None] * weight[:, None]
        return image.clamp(0, 1)

    # -- rendering ----------------------------------------------------------
    def render(self, params: FaceParams, scene: Dict[str, torch.Tensor]) -> WorldBatch:
        """Render given parameters and scene context (differentiable in ``params``)."""
        assert_shape(params.to_vector(), [None, morphable.NUM_PARAMS], "params")
        batch = params.batch_size
        shaped = self.model.shape(params.identity, params.expression)  # [B, V, 3]
        hair = self.hair_geometry(shaped, scene)  # [B, Vh, 3]
        rotation = morphable.euler_to_matrix(params.pose[:, :3])
        head_and_hair = torch.cat([shaped, hair], dim=1) @ rotation.transpose(1, 2) + params.pose[:, None, 3:]
        vertices = torch.cat([head_and_hair, self.torso_geometry(params.pose)], dim=1)  # [B, V+Vh+Vt, 3]

        head_albedo = self.model.colour(params.albedo)  # [B, V, 3]
        hair_albedo = scene["hair_colour"][:, None, :] * self.hair_texture[None, :, None]
        torso_albedo = scene["clothes_colour"][:, None, :].expand(batch, self.torso_vertices.shape[0], 3)
        albedo = torch.cat([head_albedo, hair_albedo, torso_albedo], dim=1)

        out = render_mesh(
            vertices,
            self.faces,
            albedo,
            params.light,
            self.camera,
            face_part=self.face_part,
            landmark_indices=self.model.landmark_indices,
            background=self.background(scene),
        )
        face_mask = (out.part_index == self.model.part_id("face")).unsqueeze(1).float()
        return WorldBatch(
            images=out.image.clamp(0, 1),
            params=params,
            landmarks=out.landmarks,
            face_mask=face_mask,
            mask=out.mask,
            part_index=out.part_index,
            scene=scene,
        )

    @torch.no_grad()
    def sample(self, batch: int, *, seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> WorldBatch:
        """``batch`` random portraits; deterministic given ``seed`` (or the state of ``generator``)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        params = morphable.sample_params(batch, generator=generator, distribution=self.config.params)
        scene = self.sample_scene(batch, generator)
        device = self.model.neutral.device
        params = params.to(device)
        scene = {k: v.to(device) for k, v in scene.items()}
        return self.render(params, scene)


def _torso_mesh(rings: int = 14, around: int = 28) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shoulders and chest as an elliptical tube from the collar (y = -12 cm) to below the frame.

    Cross-sections are ellipses whose half-width grows from the neck to the
    shoulders; the top ring is a collar that hides where the ICT neck ends.
    """
    # The ICT neck flares to ±10 cm at its cut (y = -19 cm): the collar must stay outside it.
    ys = torch.linspace(-10.5, -48.0, rings)
    grow = _smoothstep((-ys - 11.0) / 11.0)
    half_width = 9.0 + 13.5 * grow
    half_depth = 8.6 + 3.0 * grow
    centre_z = 0.0 - 1.0 * grow
    theta = torch.linspace(0, 2 * np.pi, around + 1)[:-1]
    x = half_width[:, None] * torch.sin(theta)[None]
    z = centre_z[:, None] + half_depth[:, None] * torch.cos(theta)[None]
    y = ys[:, None].expand(rings, around)
    vertices = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    faces = []
    for r in range(rings - 1):
        for a in range(around):
            i0, i1 = r * around + a, r * around + (a + 1) % around
            j0, j1 = i0 + around, i1 + around
            # Counter-clockwise seen from outside.
            faces += [(i0, j0, i1), (i1, j0, j1)]
    return vertices, torch.tensor(faces, dtype=torch.long)


# ----------------------------------------------------------------------------
# The distribution's identity. Pre-rendered datasets (shards that training jobs
# read) live in :mod:`stylerig_lite.datasets`, which records this hash.


def config_hash(config: WorldConfig) -> str:
    """A short hash of everything that defines the distribution (world config, face model source, this file)."""
    import hashlib
    import json

    blob = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str) + morphable.inspect_source_hash()
    blob += sha256_file(__file__)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
