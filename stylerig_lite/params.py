"""The parameter layout: the 196-vector every part of the package reads and writes.

Floor: base. Defined in chapter 1 (``notebooks/01_3dmm_basics.ipynb``, "The
parameter vector"). The layout::

    [ identity α (100) | expression β (53) | albedo δ (10) | light γ (27) | pose ω (6) ]   = 196 values

where pose = (yaw, pitch, roll) in radians followed by a translation (tx, ty, tz)
in cm. The rotation is R = Rz(roll) · Rx(pitch) · Ry(yaw) about the ICT origin
(inside the head). Positive yaw turns the nose toward +x (image right, the
subject's left), positive pitch turns the nose down, positive roll turns the
head counter-clockwise as the camera sees it.

Two tables name the blocks. :data:`COMPONENT_SIZES` / :data:`SLICES` cover
the whole vector; :data:`RIG_COMPONENTS` / :data:`RIG_SLICES` are the three
blocks a RigNet edits (pose is the rotation only). The light block is called
``"light"`` in both; ``"illumination"`` (the paper's word, and this package's
name for the light rig before) is accepted as an alias by
:func:`rig_component`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import torch

from .checks import assert_shape

__all__ = [
    "SH_BAND0", "ALBEDO_COMPONENTS", "COMPONENTS", "COMPONENT_SIZES", "EXPRESSION_NAMES", "FaceParams", "NUM_ALBEDO",
    "NUM_EXPRESSION", "NUM_IDENTITY", "NUM_LANDMARKS", "NUM_LIGHT", "NUM_PARAMS", "NUM_POSE", "POSE_NAMES",
    "ANGLE_NAMES", "RIG_COMPONENTS", "RIG_SLICES", "SLICES", "check_component", "euler_to_matrix",
    "expression_index", "matrix_to_euler", "rig_component", "rig_slice", "target_params",
    "RIG_ALIASES", "UnknownComponentError",
]

#: The band-0 SH normalisation constant (``shading.SH_C0``): a uniform white environment has
#: ``gamma_0 = 1 / SH_BAND0`` per channel and shades every normal with exactly 1.
SH_BAND0 = 1.0 / (2.0 * math.sqrt(math.pi))

#: Sparse 2D landmarks used by the losses, F and the corpus: the 68-point iBUG layout.
NUM_LANDMARKS = 68

NUM_IDENTITY = 100  # every ICT identity mode; α is in units of standard deviation.

#: The 53 ICT-FaceKit expression blendshapes, in upstream order (ARKit names).
EXPRESSION_NAMES: Tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L",
    "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)
NUM_EXPRESSION = len(EXPRESSION_NAMES)

#: Our albedo model: (name, region, RGB direction). δ_m ~ N(0, 1) moves the
#: colour of the region's vertices by δ_m · direction (display-referred RGB).
ALBEDO_COMPONENTS: Tuple[Tuple[str, str, Tuple[float, float, float]], ...] = (
    ("skin_lightness", "skin", (0.15, 0.13, 0.115)),
    ("skin_redness", "skin", (0.05, -0.02, -0.02)),
    ("skin_yellowness", "skin", (0.02, 0.02, -0.05)),
    ("lip_colour", "lips", (0.08, -0.05, -0.03)),
    ("cheek_flush", "cheeks", (0.06, -0.02, -0.02)),
    ("brow_darkness", "brows", (-0.10, -0.10, -0.09)),
    ("eye_socket_shadow", "eye_sockets", (-0.05, -0.05, -0.04)),
    ("stubble", "beard", (-0.07, -0.07, -0.06)),
    ("iris_lightness", "iris", (0.10, 0.10, 0.10)),
    ("iris_blue", "iris", (-0.07, 0.01, 0.10)),
)
NUM_ALBEDO = len(ALBEDO_COMPONENTS)
NUM_LIGHT = 27  # 9 second-order SH coefficients per colour channel, channel-major.
POSE_NAMES: Tuple[str, ...] = ("yaw", "pitch", "roll", "tx", "ty", "tz")
NUM_POSE = len(POSE_NAMES)

#: Component name -> size, in vector order.
COMPONENT_SIZES: Dict[str, int] = {
    "identity": NUM_IDENTITY,
    "expression": NUM_EXPRESSION,
    "albedo": NUM_ALBEDO,
    "light": NUM_LIGHT,
    "pose": NUM_POSE,
}
COMPONENTS: Tuple[str, ...] = tuple(COMPONENT_SIZES)
NUM_PARAMS = sum(COMPONENT_SIZES.values())  # 196


def _component_slices() -> Dict[str, slice]:
    out, start = {}, 0
    for name, size in COMPONENT_SIZES.items():
        out[name] = slice(start, start + size)
        start += size
    return out


#: Component name -> slice into the parameter vector.
SLICES: Dict[str, slice] = _component_slices()


def check_component(name: str) -> str:
    """Return ``name`` if it is a parameter component, else raise a helpful ``KeyError``."""
    if name not in COMPONENT_SIZES:
        raise KeyError(f"unknown parameter component {name!r}; expected one of {list(COMPONENTS)}")
    return name


def expression_index(name: str) -> int:
    """Index of an ARKit expression name in β, with a helpful error for typos."""
    try:
        return EXPRESSION_NAMES.index(name)
    except ValueError:
        import difflib

        close = difflib.get_close_matches(name, EXPRESSION_NAMES, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"unknown expression {name!r}{hint} (the 53 ICT/ARKit names are in EXPRESSION_NAMES)") from None


@dataclasses.dataclass
class FaceParams:
    """Typed view of a batch of parameter vectors ``[B, 196]``.

    Every field is a tensor ``[B, size]``; angles are radians. Use
    :meth:`to_vector` / :meth:`from_vector` to convert, :meth:`neutral` for the
    mean face under ambient light, and :meth:`replace` to swap components
    (the basis of every edit in the book).
    """

    identity: torch.Tensor  # [B, 100]
    expression: torch.Tensor  # [B, 53]
    albedo: torch.Tensor  # [B, 10]
    light: torch.Tensor  # [B, 27]
    pose: torch.Tensor  # [B, 6]

    def __post_init__(self) -> None:
        batch = None
        for name, size in COMPONENT_SIZES.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"FaceParams.{name} must be a torch.Tensor, got {type(value).__name__}")
            assert_shape(value, [batch, size], f"FaceParams.{name}")
            batch = value.shape[0]

    # -- construction -------------------------------------------------------
    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> "FaceParams":
        if isinstance(vector, torch.Tensor) and vector.ndim == 1:
            vector = vector[None]
        assert_shape(vector, [None, NUM_PARAMS], "parameter vector")
        return cls(**{name: vector[:, s] for name, s in SLICES.items()})

    @classmethod
    def neutral(cls, batch: int = 1, *, device=None, dtype=torch.float32) -> "FaceParams":
        """The mean face, mean colours, frontal pose, uniform white light."""
        zeros = {name: torch.zeros(batch, size, device=device, dtype=dtype) for name, size in COMPONENT_SIZES.items()}
        # Uniform white light: band 0 of each colour channel is sqrt(4 pi), so the shading is 1 for every
        # normal (shading.ambient_gamma(1.0); tests/test_shading.py checks the two agree).
        zeros["light"][:, ::9] = torch.ones(batch, 3, device=device, dtype=dtype) / SH_BAND0
        return cls(**zeros)

    # -- conversion ---------------------------------------------------------
    def to_vector(self) -> torch.Tensor:
        return torch.cat([getattr(self, name) for name in COMPONENTS], dim=1)  # [B, 196]

    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    def component(self, name: str) -> torch.Tensor:
        return getattr(self, check_component(name))

    def replace(self, **components: torch.Tensor) -> "FaceParams":
        """A copy with some components replaced, e.g. ``p.replace(pose=q.pose)``."""
        for name in components:
            check_component(name)
        return dataclasses.replace(self, **components)

    def to(self, *args, **kwargs) -> "FaceParams":
        return FaceParams(**{name: getattr(self, name).to(*args, **kwargs) for name in COMPONENTS})

    def detach(self) -> "FaceParams":
        return FaceParams(**{name: getattr(self, name).detach() for name in COMPONENTS})

    def __getitem__(self, index) -> "FaceParams":
        return FaceParams.from_vector(self.to_vector()[index].reshape(-1, NUM_PARAMS))

    # -- named access -------------------------------------------------------
    @property
    def angles_deg(self) -> torch.Tensor:
        """(yaw, pitch, roll) in degrees, ``[B, 3]``."""
        return torch.rad2deg(self.pose[:, :3])

    def expression_weight(self, name: str) -> torch.Tensor:
        return self.expression[:, expression_index(name)]

    def with_expression(self, **weights: float) -> "FaceParams":
        """A copy with named expression weights set, e.g. ``p.with_expression(jawOpen=0.8)``."""
        expression = self.expression.clone()
        for name, value in weights.items():
            expression[:, expression_index(name)] = value
        return self.replace(expression=expression)

    def with_angles_deg(self, yaw=None, pitch=None, roll=None) -> "FaceParams":
        pose = self.pose.clone()
        for i, value in enumerate((yaw, pitch, roll)):
            if value is not None:
                pose[:, i] = math.radians(value) if not isinstance(value, torch.Tensor) else torch.deg2rad(value)
        return self.replace(pose=pose)


# ----------------------------------------------------------------------------
# Rotations.


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices R = Rz(roll) · Rx(pitch) · Ry(yaw) from ``[B, 3]`` radians -> ``[B, 3, 3]``."""
    assert_shape(angles, [None, 3], "angles (yaw, pitch, roll)")
    yaw, pitch, roll = angles.unbind(dim=1)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    # Ry(yaw): nose (+z) turns toward +x for positive yaw.
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).view(-1, 3, 3)
    # Rx(pitch): the right-handed rotation about +x; it turns the nose (+z) down (-y).
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], dim=1).view(-1, 3, 3)
    # Rz(roll): +x toward +y, i.e. counter-clockwise as the camera (on +z) sees it.
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return rz @ rx @ ry


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_matrix` for |pitch| < 90°: ``[B, 3, 3]`` -> ``[B, 3]`` (yaw, pitch, roll)."""
    assert_shape(matrix, [None, 3, 3], "rotation matrix")
    # Multiplying out Rz·Rx·Ry: the last row is (-cos p sin y, sin p, cos p cos y)
    # and the middle column starts with (-sin r cos p, cos r cos p).
    pitch = torch.asin(matrix[:, 2, 1].clamp(-1.0, 1.0))
    yaw = torch.atan2(-matrix[:, 2, 0], matrix[:, 2, 2])
    roll = torch.atan2(-matrix[:, 0, 1], matrix[:, 1, 1])
    return torch.stack([yaw, pitch, roll], dim=1)


# ----------------------------------------------------------------------------
# The blocks a rig edits.

ANGLE_NAMES: Tuple[str, ...] = POSE_NAMES[:3]

#: The components a RigNet controls, in the order the editor applies them.
RIG_COMPONENTS: Tuple[str, ...] = ("pose", "expression", "light")

#: Rig component -> the entries of the 196-vector it sets. Pose is the rotation only: the
#: paper rigs rotation, and FaceWorld's translation is a framing jitter, not something to edit.
RIG_SLICES: Dict[str, slice] = {
    "pose": slice(SLICES["pose"].start, SLICES["pose"].start + 3),
    "expression": SLICES["expression"],
    "light": SLICES["light"],
}

#: Other names accepted for a rig component (the paper says "illumination").
RIG_ALIASES: Dict[str, str] = {"illumination": "light"}


class UnknownComponentError(KeyError, ValueError):
    """A rig component name that is none of :data:`RIG_COMPONENTS` (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def rig_component(name: str) -> str:
    """The canonical rig component for ``name`` (``"illumination"`` -> ``"light"``).

    Raises :class:`UnknownComponentError` naming the valid components.
    """
    canonical = RIG_ALIASES.get(name, name) if isinstance(name, str) else name
    if canonical not in RIG_SLICES:
        raise UnknownComponentError(f"unknown component {name!r}; expected one of the rig components {list(RIG_COMPONENTS)} "
                                    f"(or the alias 'illumination' for 'light')")
    return canonical


def rig_slice(name: str) -> slice:
    """The entries of the 196-vector an edit of rig component ``name`` sets (:data:`RIG_SLICES`)."""
    return RIG_SLICES[rig_component(name)]


def target_params(p_w: torch.Tensor, p_v: torch.Tensor, component: str) -> torch.Tensor:
    """``p_w`` with rig component ``component`` taken from ``p_v``: ``[B, 196], [B, 196] -> [B, 196]``."""
    assert_shape(p_w, [None, NUM_PARAMS], "p_w")
    assert_shape(p_v, [p_w.shape[0], NUM_PARAMS], "p_v")
    target = p_w.clone()
    index = rig_slice(component)
    target[:, index] = p_v[:, index]
    return target

