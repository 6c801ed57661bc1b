"""The PyTorch3D reference backend: ``render_mesh(..., backend="pytorch3d")``.

Floor: 3DMM (a renderer part, beside :mod:`~stylerig_lite.rasterize`, our
default). Chapter 3 (``notebooks/03_differentiable_rendering.ipynb``) compares
the two; ``tests/test_render.py`` checks parity (mask IoU, image difference,
landmarks) and ``python -m stylerig_lite.bench render`` times both.

PyTorch3D is optional: everything here imports it lazily and
:func:`pytorch3d_available` says whether it can be used. The camera is ours,
mapped with PyTorch3D's ``cameras_from_opencv_projection`` (OpenCV
``R = diag(1, -1, -1)``, ``t = (0, 0, distance)``, our intrinsics), so both
backends put pixel centres at half-integer coordinates, u right, v down.
"""

from __future__ import annotations

import torch

from stylerig_lite.camera import Camera
from stylerig_lite.rasterize import Fragments

__all__ = [
    "PYTORCH3D_MISSING",
    "import_pytorch3d",
    "project_pytorch3d",
    "pytorch3d_available",
    "pytorch3d_cameras",
    "rasterize_pytorch3d",
]

PYTORCH3D_MISSING = (
    "backend='pytorch3d' needs pytorch3d, which is not importable here. Install it with "
    "`pip install stylerig-lite[pytorch3d]` (the Linux wheel easypytorch3d==0.7.9.post1, which needs "
    "torch 2.11.0 or 2.12.1), or use backend='ours' (the default, no extra dependency)."
)


def import_pytorch3d():
    """pytorch3d's (MeshRasterizer, RasterizationSettings, Meshes, cameras_from_opencv_projection), or an
    ``ImportError`` that says how to install it."""
    try:
        from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
        from pytorch3d.structures import Meshes
        from pytorch3d.utils import cameras_from_opencv_projection
    except ImportError as error:  # also raised when the wheel does not match the installed torch
        raise ImportError(f"{PYTORCH3D_MISSING} (import failed: {error})") from error
    return MeshRasterizer, RasterizationSettings, Meshes, cameras_from_opencv_projection


def pytorch3d_available() -> bool:
    """True when the pytorch3d backend can be used."""
    try:
        import_pytorch3d()
    except ImportError:
        return False
    return True


def pytorch3d_cameras(camera: Camera, batch: int, device=None):
    """Our camera as a batch of pytorch3d ``PerspectiveCameras`` (float32)."""
    *_, cameras_from_opencv_projection = import_pytorch3d()
    rotation, translation = camera.extrinsics(torch.float32, device)
    matrix = camera.intrinsics(torch.float32, device)
    size = torch.tensor([[camera.height, camera.width]], dtype=torch.float32, device=device)
    return cameras_from_opencv_projection(
        rotation.expand(batch, 3, 3), translation.expand(batch, 3), matrix.expand(batch, 3, 3), size.expand(batch, 2)
    )


def rasterize_pytorch3d(
    vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, cull_backfaces: bool = False
) -> Fragments:
    """pytorch3d's ``MeshRasterizer`` (naive, 1 face per pixel, no blur) as our :class:`Fragments`."""
    MeshRasterizer, RasterizationSettings, Meshes, _ = import_pytorch3d()
    batch, num_vertices, _ = vertices.shape
    num_faces = faces.shape[0]
    cameras = pytorch3d_cameras(camera, batch, vertices.device)
    settings = RasterizationSettings(
        image_size=(camera.height, camera.width),
        blur_radius=0.0,
        faces_per_pixel=1,
        perspective_correct=True,
        cull_backfaces=cull_backfaces,
        bin_size=0,  # naive rasterization; coarse-to-fine binning is no faster on the CPU
    )
    meshes = Meshes(verts=vertices.float(), faces=faces.long()[None].expand(batch, num_faces, 3))
    raw = MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes)
    packed = raw.pix_to_face[..., 0]  # [B, H, W], face id b * F + f in the packed mesh
    offsets = (torch.arange(batch, device=packed.device) * num_faces).view(batch, 1, 1)
    face_index = torch.where(packed >= 0, packed - offsets, torch.full_like(packed, -1))
    flat = packed.view(-1)
    pixel = (flat >= 0).nonzero().squeeze(1)
    b_idx = torch.div(pixel, camera.height * camera.width, rounding_mode="floor")
    vertex_ids = b_idx[:, None] * num_vertices + faces.long()[face_index.view(-1)[pixel]]
    bary = raw.bary_coords[..., 0, :].reshape(-1, 3)[pixel].to(vertices.dtype)
    depth = raw.zbuf[..., 0].reshape(-1)[pixel].to(vertices.dtype)
    return Fragments(face_index=face_index, pixel=pixel, vertex_ids=vertex_ids, bary=bary, depth=depth)


def project_pytorch3d(points: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Pixel coordinates ``[B, N, 2]`` of world points through the pytorch3d camera (for parity checks)."""
    cameras = pytorch3d_cameras(camera, points.shape[0], points.device)
    screen = cameras.transform_points_screen(points.float(), image_size=((camera.height, camera.width),))
    return screen[..., :2].to(points.dtype)
