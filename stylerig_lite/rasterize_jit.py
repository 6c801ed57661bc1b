"""The z-buffer of :func:`stylerig_lite.rasterize.visible_faces` and the projection as compiled loops (Numba).

Floor: 3DMM (a fast op beside :mod:`~stylerig_lite.rasterize`, its reference).
:func:`stylerig_lite.rasterize.visible_faces` resolves visibility with tensor operations:
it lists every (triangle, pixel centre) candidate, tests all of them,
and keeps the nearest with a ``scatter_reduce``. At 64 px that is about 40 ms of a 16-image
batch of the ICT head, most of it spent building and gathering the candidate lists. This
module runs the same arithmetic as a plain loop over triangles and the pixel centres of each
triangle's box, compiled by Numba (LLVM), with the batch's images split over
``torch.get_num_threads()`` threads: no candidate list is ever built.

The result is the same face id at every pixel, bit for bit: the corners' coordinates and
``1/z`` come in as float32 tensors, every product and sum is the same float32 operation in
the same order as in :func:`~stylerig_lite.rasterize.visible_faces` (Numba fuses no
multiply-add without ``fastmath``; the edge functions' ``torch.addcmul``, which PyTorch's CPU
kernels compute as a fused multiply-add on FMA hardware, is called here as ``llvm.fma``), the shared-edge
rule is the same top-left rule, and the depth test keeps the larger interpolated ``1/z`` and,
on a tie, the smaller face id, which is the order of the int64 keys there.
``tests/test_render.py`` checks the equality on random meshes, on edge ties and on the ICT
head at 64 to 256 px, and ``tests/test_world.py`` on FaceWorld's images.

:func:`project_jit` does the same for :meth:`Camera.project <stylerig_lite.camera.Camera.project>`
where nothing is differentiated (the render's first projection, which only feeds this z-buffer,
and FaceWorld's): one pass over the points instead of ten tensor passes, the same float32
operations (64 full ICT heads: 5.8 ms against 27 ms here). :func:`split_over_threads` is the
threading that every compiled loop of the renderer shares (:mod:`~stylerig_lite.shading_jit`'s too).

Numba is an optional dependency (in the CI lock, ``pip install numba``): without it, or
with ``STYLERIG_LITE_RASTERIZER=torch``, :func:`~stylerig_lite.rasterize.visible_faces` and
:meth:`~stylerig_lite.camera.Camera.project` run their tensor paths. The first call in a process
compiles the loops (about 4 s here; cached on disk under ``NUMBA_CACHE_DIR`` or the package's
``__pycache__`` when it is writable).
"""

from __future__ import annotations

import os
import threading
from typing import Optional, Tuple

import torch

from stylerig_lite.checks import assert_shape

__all__ = ["available", "check_face_indices", "project_jit", "require", "split_over_threads", "SWITCH", "usable",
           "visible_faces_jit"]

try:  # optional: without Numba the tensor path runs
    import numba
    import numpy as np
    from llvmlite import ir
    from numba.extending import intrinsic
except ImportError as error:  # available() is then False and visible_faces runs its tensor path
    numba = None
    _MISSING: Optional[str] = str(error)
else:
    _MISSING = None


#: ``STYLERIG_LITE_RASTERIZER``: ``auto`` (the renderer's compiled loops where they can run: this z-buffer and
#: projection, :mod:`~stylerig_lite.shading_jit`'s normals and shading) or ``torch`` (never).
SWITCH = "STYLERIG_LITE_RASTERIZER"


def available() -> bool:
    """Whether the compiled loops can run here (Numba importable, not switched off by :data:`SWITCH`)."""
    value = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value not in ("auto", "torch"):
        raise ValueError(f"{SWITCH}={os.environ[SWITCH]!r}: expected 'auto' (the compiled z-buffer where Numba "
                         "is installed) or 'torch' (always the tensor-op path)")
    return value == "auto" and numba is not None


def usable(*tensors: torch.Tensor, differentiated: bool = False) -> bool:
    """Whether a compiled loop may take these tensors: :func:`available`, float32 on the CPU, and no gradient to
    record (``differentiated=False``: the forward-only loops) or one to record (``True``: the loops of
    :mod:`~stylerig_lite.render_jit`, which carry their own backward)."""
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (available() and recording == differentiated
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def require(what: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error unless Numba is importable and every tensor is float32 on the CPU (``what``: the loop)."""
    if numba is None:
        raise RuntimeError(f"{what} needs numba ({_MISSING}); pip install numba")
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise TypeError(f"{what} takes float32 CPU tensors, got {t.dtype} on {t.device}")


def check_face_indices(faces: torch.Tensor, num_vertices: int) -> None:
    """Raise unless ``faces`` index ``0 .. num_vertices - 1``: the loops do not check (a bad face would read
    another image's memory)."""
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise ValueError(f"faces index vertices {int(faces.min())}..{int(faces.max())} but there are "
                         f"{num_vertices} (valid 0..{num_vertices - 1})")


if numba is not None:
    _F32 = np.float32
    _HALF, _ONE, _ZERO, _MINUS_ONE = _F32(0.5), _F32(1.0), _F32(0.0), _F32(-1.0)

    @intrinsic
    def _fma32(typingctx, a, x, c):
        """``a * x + c`` rounded once (LLVM's ``llvm.fma.f32``): what ``torch.addcmul`` computes here."""
        sig = numba.float32(numba.float32, numba.float32, numba.float32)

        def codegen(context, builder, signature, args):
            f = ir.FloatType()
            fn = builder.module.declare_intrinsic("llvm.fma", [f], ir.FunctionType(f, [f, f, f]))
            return builder.call(fn, args)

        return sig, codegen

    def _zbuffer_loop(u, v, iz, faces, height, width, cull, out, first, step):
        # u, v, iz: [B, V] float32 pixel coordinates and 1/z; faces: [F, 3] int64;
        # out: [B, H * W] int64, rows first, first + step, ... filled with the winning face id or -1.
        num_faces = faces.shape[0]
        fw, fh = _F32(width), _F32(height)
        for b in range(first, u.shape[0], step):
            best = np.full(height * width, _MINUS_ONE, dtype=np.float32)  # 1/z of the winner
            owner = np.full(height * width, np.int64(-1), dtype=np.int64)
            ub, vb, zb = u[b], v[b], iz[b]
            for f in range(num_faces):
                i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                u0, u1, u2 = ub[i0], ub[i1], ub[i2]
                v0, v1, v2 = vb[i0], vb[i1], vb[i2]
                # Pixel centres j + 0.5 in [min u, max u] (the tensor path's clamps, in float32).
                c0 = min(max(np.ceil(min(min(u0, u1), u2) - _HALF), _ZERO), fw)
                c1 = min(max(np.floor(max(max(u0, u1), u2) - _HALF), _MINUS_ONE), fw - _ONE)
                r0 = min(max(np.ceil(min(min(v0, v1), v2) - _HALF), _ZERO), fh)
                r1 = min(max(np.floor(max(max(v0, v1), v2) - _HALF), _MINUS_ONE), fh - _ONE)
                if not (c1 >= c0 and r1 >= r0):  # also skips NaN boxes, as the tensor path does
                    continue
                # Edge functions w_k = A_k u + B_k v + C_k, edge k opposite corner k.
                a0, b0, k0 = v1 - v2, u2 - u1, u1 * v2 - v1 * u2
                a1, b1, k1 = v2 - v0, u0 - u2, u2 * v0 - v2 * u0
                a2, b2, k2 = v0 - v1, u1 - u0, u0 * v1 - v0 * u1
                area2 = k0 + k1 + k2
                if area2 == _ZERO or (cull and area2 > _ZERO):
                    continue
                if area2 < _ZERO:  # exact negation: an orientation-free inside test
                    a0, b0, k0, a1, b1, k1, a2, b2, k2 = -a0, -b0, -k0, -a1, -b1, -k1, -a2, -b2, -k2
                inv_area = _ONE / abs(area2)
                g0, g1, g2 = zb[i0] * inv_area, zb[i1] * inv_area, zb[i2] * inv_area
                # Top-left rule: a zero edge function is inside for one direction of each edge.
                t0 = a0 < _ZERO or (a0 == _ZERO and b0 > _ZERO)
                t1 = a1 < _ZERO or (a1 == _ZERO and b1 > _ZERO)
                t2 = a2 < _ZERO or (a2 == _ZERO and b2 > _ZERO)
                for row in range(int(r0), int(r1) + 1):
                    py = _F32(row) + _HALF
                    for col in range(int(c0), int(c1) + 1):
                        px = _F32(col) + _HALF
                        # torch.addcmul(torch.addcmul(C, A, px), B, py), fused as PyTorch fuses it.
                        w0 = _fma32(b0, py, _fma32(a0, px, k0))
                        w1 = _fma32(b1, py, _fma32(a1, px, k1))
                        w2 = _fma32(b2, py, _fma32(a2, px, k2))
                        lowest = min(min(w0, w1), w2)
                        if lowest < _ZERO:
                            continue
                        if lowest == _ZERO:
                            if not ((w0 > _ZERO or (w0 == _ZERO and t0)) and (w1 > _ZERO or (w1 == _ZERO and t1))
                                    and (w2 > _ZERO or (w2 == _ZERO and t2))):
                                continue
                        inv_depth = (w0 * g0 + w1 * g1) + w2 * g2
                        p = row * width + col
                        # Larger 1/z wins; on a tie the smaller face id (the tensor path's key order).
                        if inv_depth > best[p] or (inv_depth == best[p] and owner[p] > f):
                            best[p] = inv_depth
                            owner[p] = f
            for p in range(height * width):
                out[b, p] = owner[p]

    def _project_loop(points, focal, distance, near, half_width, half_height, uv, depth, bad, first, step):
        # points: [B, N, 3] float32 world cm; written: uv [B, N, 2], depth [B, N]; bad[b] = 1 if image b
        # has a non-finite point or one at/behind the near plane (the caller then raises the tensor path's error).
        for b in range(first, points.shape[0], step):
            p, o, d = points[b], uv[b], depth[b]
            flag = 0
            for i in range(points.shape[1]):
                x, y, z = p[i, 0], p[i, 1], p[i, 2]
                if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
                    flag = 1
                zc = distance - z  # Camera.to_camera: (x, -y, distance - z)
                if zc <= near:
                    flag = 1
                o[i, 0] = (focal * x) / zc + half_width  # Camera.pixels: f * x / z + W / 2
                o[i, 1] = (focal * -y) / zc + half_height
                d[i] = zc
            bad[b] = flag

    def compile_loop(loop):
        """``loop`` compiled without the GIL, cached on disk where Numba finds a writable folder."""
        try:
            return numba.njit(cache=True, nogil=True)(loop)
        except RuntimeError:  # "cannot cache function ...: no locator available": compiled once per process
            return numba.njit(nogil=True)(loop)

    _zbuffer = compile_loop(_zbuffer_loop)
    _project = compile_loop(_project_loop)


def split_over_threads(loop, args, batch: int) -> None:
    """Run ``loop(*args, first, step)`` on ``min(torch.get_num_threads(), batch)`` threads.

    Images are independent, so each thread takes every ``step``-th image from ``first``. The loops
    release the GIL; plain threads (not Numba's OpenMP layer) stay safe under fork and when the
    editor's render thread and the notebook's thread draw at the same time.
    """
    parts = max(1, min(torch.get_num_threads(), batch))
    helpers = [threading.Thread(target=loop, args=(*args, k, parts), daemon=True) for k in range(1, parts)]
    for helper in helpers:
        helper.start()
    loop(*args, 0, parts)
    for helper in helpers:
        helper.join()


@torch.no_grad()
def project_jit(points: torch.Tensor, focal: float, distance: float, near: float, height: int,
                width: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """:meth:`Camera.project <stylerig_lite.camera.Camera.project>`'s ``(uv [B, N, 2], depth [B, N])``, bit for bit.

    ``points [B, N, 3]`` float32 on the CPU, no gradient. One pass instead of the tensor path's
    ten (the finiteness check, the camera frame, the near-plane check, the perspective division,
    the stacking); the same float32 operations in the same order, with the Python constants
    rounded to float32 as PyTorch rounds them. Returns None if a point is not finite or not in
    front of the near plane: the caller then runs the tensor path, which raises its clear error.
    """
    require("project_jit", points)
    assert_shape(points, [None, None, 3], "points")
    batch, count, _ = points.shape
    uv = points.new_empty(batch, count, 2)
    depth = points.new_empty(batch, count)
    bad = np.zeros(batch, dtype=np.int64)
    f32 = np.float32
    args = (points.detach().contiguous().numpy(), f32(focal), f32(distance), f32(near), f32(width / 2.0),
            f32(height / 2.0), uv.numpy(), depth.numpy(), bad)
    split_over_threads(_project, args, batch)
    return None if bad.any() else (uv, depth)


@torch.no_grad()
def visible_faces_jit(uv: torch.Tensor, depth: torch.Tensor, faces: torch.Tensor, height: int, width: int,
                      cull_backfaces: bool = False) -> torch.Tensor:
    """Face id per pixel ``[B, H, W]`` (long, -1 = background): :func:`visible_faces`'s, bit for bit.

    ``uv [B, V, 2]`` float32 pixel coordinates, ``depth [B, V]`` float32 camera depths (> 0),
    ``faces [F, 3]`` long, on the CPU. Raises ``RuntimeError`` when Numba is missing
    (:func:`available` says so beforehand).
    """
    require("visible_faces_jit", uv, depth)
    assert_shape(uv, [None, None, 2], "uv")
    assert_shape(depth, list(uv.shape[:2]), "depth")
    assert_shape(faces, [None, 3], "faces")
    check_face_indices(faces, uv.shape[1])
    batch = uv.shape[0]
    uv, depth, faces = uv.detach(), depth.detach(), faces.long()
    u = uv[..., 0].contiguous().numpy()
    v = uv[..., 1].contiguous().numpy()
    iz = depth.reciprocal().contiguous().numpy()  # the tensor path's 1/z, the same float32 division
    out = torch.empty(batch, height * width, dtype=torch.int64, device=uv.device)
    args = (u, v, iz, faces.contiguous().numpy(), int(height), int(width), bool(cull_backfaces), out.numpy())
    split_over_threads(_zbuffer, args, batch)  # images are independent: split over the threads
    return out.view(batch, height, width)
