"""The pinhole camera that looks at the head, and its pixel conventions.

Conventions (fixed for the whole project, see ``notes/CONVENTIONS.md``):

* World frame, centimetres: +x to the image right when the face looks at the
  camera, +y up, +z out of the face toward the camera.
* The camera sits at world ``(0, 0, distance)`` and looks toward -z with world
  +y up. Camera coordinates are OpenCV style::

      x_c = x,   y_c = -y,   z_c = distance - z        (z_c = depth, > 0 in front)

* Pixels: ``u = f * x_c / z_c + W / 2`` (to the right), ``v = f * y_c / z_c + H / 2``
  (down), with ``f = focal * W``: ``focal`` is measured in units of the image
  width, so the same camera frames the same region at any resolution. Pixel
  ``(i, j)`` (row, column) covers ``u in [j, j + 1)``, ``v in [i, i + 1)``; its
  centre is ``(j + 0.5, i + 0.5)``. Pixels are square (one ``f`` for both axes).
* The default camera (``distance=100``, ``focal=2.5``) fits a region
  ``distance / focal = 40`` cm tall (and wide, for a square image) at ``z = 0``.

The same camera maps exactly onto OpenCV's ``cv2.projectPoints`` with
``R = diag(1, -1, -1)``, ``t = (0, 0, distance)`` and the matrix from
:meth:`Camera.intrinsics` (up to OpenCV's own pixel-centre convention, which
puts centres on integers; pytorch3d's ``cameras_from_opencv_projection`` puts
them on half-integers like us, see ``render.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import torch

from stylerig_lite.checks import assert_finite, assert_shape

__all__ = [
    "affine_points",
    "affine_points_inverse",
    "Camera",
    "check_finite",
    "ImageSize",
    "normalize_image_size",
]

ImageSize = Union[int, Tuple[int, int]]


def affine_points(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Image-plane points ``[..., 2]`` (pixels) through a 2x3 affine ``transform = [A | t]``: ``A p + t``.

    The photo editor keeps the crop -> photo map of an aligned face this way
    (:func:`stylerig_lite.photo.crop_to_photo`); the figures draw the crop's square with it.
    """
    return points @ transform[:, :2].T + transform[:, 2]


def affine_points_inverse(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`affine_points`: ``A⁻¹ (p - t)`` (``A`` inverted in float64)."""
    inverse = torch.linalg.inv(transform[:, :2].double()).to(points.dtype)
    return (points - transform[:, 2]) @ inverse.T


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """``assert_finite`` with a cheap first pass: a sum is finite iff no NaN/inf (barring overflow)."""
    with torch.no_grad():
        if not bool(torch.isfinite(tensor.sum())):
            assert_finite(tensor, name)


def normalize_image_size(image_size: ImageSize, name: str = "image_size") -> Tuple[int, int]:
    """Return ``(H, W)`` from an int (square) or an ``(H, W)`` pair; raise on non-positive sizes."""
    if isinstance(image_size, bool):
        raise TypeError(f"{name} must be an int or an (H, W) pair of ints, got a bool")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) for s in image_size
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"{name} must be an int or an (H, W) pair of ints, got {image_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{name} must be positive, got (H, W) = {size}; pass e.g. image_size=64")
    return size


@dataclasses.dataclass(frozen=True)
class Camera:
    """Perspective pinhole camera on the +z axis looking at the origin.

    Attributes:
        distance: camera position on the world z axis, in cm (default 100).
        focal: focal length in units of the image width (default 2.5: a 40 cm
            field of view at the origin's depth).
        image_size: ``H`` (square) or ``(H, W)`` in pixels (default 64).
        near: near-plane depth in cm; any vertex with depth ``z_c <= near`` is an
            error (the camera is inside or behind the head).
    """

    distance: float = 100.0
    focal: float = 2.5
    image_size: ImageSize = 64
    near: float = 1.0

    def __post_init__(self) -> None:
        normalize_image_size(self.image_size)
        for name in ("distance", "focal", "near"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                raise TypeError(f"Camera.{name} must be a finite number, got {value!r}")
        if self.focal <= 0:
            raise ValueError(f"Camera.focal must be > 0 (units of image width), got {self.focal}")
        if self.near <= 0:
            raise ValueError(f"Camera.near must be > 0 cm, got {self.near}")
        if self.distance <= self.near:
            raise ValueError(
                f"Camera.distance ({self.distance} cm) must exceed the near plane ({self.near} cm): "
                "the camera would sit inside the head at the origin"
            )

    # ------------------------------------------------------------------ sizes
    @property
    def height(self) -> int:
        return normalize_image_size(self.image_size)[0]

    @property
    def width(self) -> int:
        return normalize_image_size(self.image_size)[1]

    @property
    def focal_pixels(self) -> float:
        """Focal length ``f = focal * W`` in pixels."""
        return float(self.focal) * self.width

    def with_image_size(self, image_size: ImageSize) -> "Camera":
        """The same camera (same field of view) rendering at another resolution."""
        return dataclasses.replace(self, image_size=image_size)

    # ------------------------------------------------------------ matrices
    def intrinsics(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` mapping camera coordinates to pixels.  # [3, 3]"""
        f = self.focal_pixels
        return torch.tensor(
            [[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )

    def extrinsics(self, dtype: torch.dtype = torch.float32, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """World-to-camera ``(R [3, 3], t [3])`` with ``x_c = R @ x + t`` (OpenCV convention)."""
        rotation = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=device))
        translation = torch.tensor([0.0, 0.0, float(self.distance)], dtype=dtype, device=device)
        return rotation, translation

    # ---------------------------------------------------------- transforms
    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``[B, N, 3]`` -> camera coordinates ``[B, N, 3]`` (x right, y down, z depth)."""
        assert_shape(points, [None, None, 3], "points")
        if not points.is_floating_point():
            raise TypeError(f"points must be a floating-point tensor, got {points.dtype}")
        x, y, z = points.unbind(-1)
        return torch.stack([x, -y, self.distance - z], dim=-1)

    def project(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Project world points ``[B, N, 3]`` to pixels.

        Returns:
            uv: ``[B, N, 2]`` pixel coordinates (u right, v down, pixel centres at half-integers).
            depth: ``[B, N]`` camera-space depth ``z_c`` in cm.

        Raises:
            ValueError: if a point is non-finite or at/behind the near plane.

        Float32 CPU points with no gradient to record take one compiled pass where Numba is installed
        (:func:`~stylerig_lite.rasterize_jit.project_jit`: the same numbers, bit for bit).
        """
        assert_shape(points, [None, None, 3], "points")
        fast = self._project_compiled(points)
        if fast is not None:
            return fast
        check_finite(points, "points")
        cam = self.to_camera(points)  # [B, N, 3]
        depth = cam[..., 2]  # [B, N]
        self.check_in_front(depth)
        return self.pixels(cam), depth

    def _project_compiled(self, points: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`project` as one compiled pass (:func:`~stylerig_lite.rasterize_jit.project_jit`), or None.

        Taken for float32 CPU points with no gradient to record, where Numba is installed and not switched
        off: the same numbers, bit for bit. None (the tensor path) otherwise, and when a point is not
        finite or not in front of the camera, so that the tensor path raises its error.
        """
        from stylerig_lite import rasterize_jit

        if not rasterize_jit.usable(points):
            return None
        return rasterize_jit.project_jit(points, self.focal_pixels, self.distance, self.near, self.height, self.width)

    def pixels(self, cam: torch.Tensor) -> torch.Tensor:
        """Camera coordinates ``[..., 3]`` (:meth:`to_camera`) -> pixel coordinates ``[..., 2]``, unchecked.

        :meth:`project` checks the points first; this is the bare perspective division, for callers that
        cannot branch on values (``torch.func`` transforms, see :func:`stylerig_lite.photo.head_pose`).
        """
        f = self.focal_pixels
        u = f * cam[..., 0] / cam[..., 2] + self.width / 2.0
        v = f * cam[..., 1] / cam[..., 2] + self.height / 2.0
        return torch.stack([u, v], dim=-1)

    def check_in_front(self, depth: torch.Tensor) -> None:
        """Raise a clear error if any depth is at or behind the near plane."""
        behind = depth <= self.near
        if bool(behind.any()):
            count = int(behind.sum())
            closest = float(depth.min())
            raise ValueError(
                f"camera behind the head: {count} vertex/vertices have depth <= the near plane "
                f"({self.near} cm; smallest depth {closest:.3g} cm). The camera at z = {self.distance} cm "
                "is inside or behind the mesh: move the head away from the camera (smaller pose tz), "
                "or increase Camera.distance."
            )

    def pixel_centres(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Pixel-centre coordinates ``[H, W, 2]`` as (u, v) = (j + 0.5, i + 0.5)."""
        v = torch.arange(self.height, dtype=dtype, device=device) + 0.5
        u = torch.arange(self.width, dtype=dtype, device=device) + 0.5
        vv, uu = torch.meshgrid(v, u, indexing="ij")
        return torch.stack([uu, vv], dim=-1)
