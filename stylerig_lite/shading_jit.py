"""Vertex normals and SH shading of :mod:`stylerig_lite.shading` as compiled loops (Numba).

Floor: 3DMM (fast ops beside :mod:`~stylerig_lite.shading`, their reference).
A FaceWorld batch (64 images at 64 px, the head on its visible support) spends about 47 ms in
:func:`~stylerig_lite.shading.vertex_normals` and 26 ms in
:func:`~stylerig_lite.shading.sh_shading` on the 2-core machine: a dozen passes over
``[B, V, 3]`` tensors each (gathers of the corners, cross products, three scatter-adds, the
length, the nine SH terms per channel), each pass reading and writing memory. Here each is one
loop over the vertices of an image, compiled by Numba, with the batch's images split over
``torch.get_num_threads()`` plain threads (:func:`~stylerig_lite.rasterize_jit.split_over_threads`).
On 64 full ICT heads (26,719 vertices, 52,220 faces), interleaved: normals 40 ms against 277 ms,
shading 17 ms against 128 ms.

The results are the tensor path's, bit for bit. Every float32 operation is the same in the same
order: the face normals ``e1 x e2`` as separate products and differences; each vertex sums its
faces' normals corner by corner (all faces' first corners in face order, then the second
corners, then the third), the order of the three ``index_add_`` passes; the squared length is
``(x*x + y*y) + z*z``, whose square root, clamp and division are left to PyTorch (its float32
``sqrt`` is not correctly rounded here, so a compiled one would differ); the SH basis uses the
same float32 factors with the same association (``(f4 * x) * y``, ``f6 * ((3 * z) * z - 1)``),
and each channel adds the nine terms one by one. Numba contracts no multiply-add without ``fastmath``.
``tests/test_shading.py`` checks the equality on random meshes and the ICT head, and
``tests/test_world.py`` on FaceWorld's images.

Only forward passes without gradients run here (sampling FaceWorld, writing a corpus, the
editor's preview, evaluation). Under autograd, :func:`~stylerig_lite.shading.vertex_normals` and
:func:`~stylerig_lite.shading.sh_shading` run their tensor paths with hand-written backwards, and
:func:`~stylerig_lite.render.render_mesh` runs neither: its normals, shading and interpolation are one
compiled forward and backward (:mod:`~stylerig_lite.render_jit`), equal to these to float rounding.
The switch is the renderer's: without Numba, or with ``STYLERIG_LITE_RASTERIZER=torch``, the
tensor path runs everywhere. The first call in a
process compiles both loops (a few seconds; cached on disk like the z-buffer's).
"""

from __future__ import annotations

from typing import Sequence

import torch

from stylerig_lite import rasterize_jit
from stylerig_lite.checks import assert_shape

__all__ = ["sh_shading_jit", "vertex_normals_jit"]


if rasterize_jit.numba is not None:
    import numpy as np

    _F32 = np.float32
    _ZERO, _ONE, _THREE = _F32(0.0), _F32(1.0), _F32(3.0)

    def _normals_loop(vertices, faces, out, squared, first, step):
        # vertices: [B, V, 3] float32; faces: [F, 3] int64; written: out [B, V, 3] the summed face
        # normals, squared [B, V] their squared lengths (the square root is PyTorch's, see below).
        num_faces, num_vertices = faces.shape[0], vertices.shape[1]
        normal = np.empty((num_faces, 3), dtype=np.float32)
        for b in range(first, vertices.shape[0], step):
            p = vertices[b]
            for f in range(num_faces):
                i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                ax, ay, az = p[i1, 0] - p[i0, 0], p[i1, 1] - p[i0, 1], p[i1, 2] - p[i0, 2]  # e1
                bx, by, bz = p[i2, 0] - p[i0, 0], p[i2, 1] - p[i0, 1], p[i2, 2] - p[i0, 2]  # e2
                normal[f, 0] = ay * bz - az * by
                normal[f, 1] = az * bx - ax * bz
                normal[f, 2] = ax * by - ay * bx
            s = out[b]
            for v in range(num_vertices):
                s[v, 0] = _ZERO
                s[v, 1] = _ZERO
                s[v, 2] = _ZERO
            for k in range(3):  # the three index_add_ passes, in their order
                for f in range(num_faces):
                    v = faces[f, k]
                    s[v, 0] += normal[f, 0]
                    s[v, 1] += normal[f, 1]
                    s[v, 2] += normal[f, 2]
            q = squared[b]
            for v in range(num_vertices):
                q[v] = (s[v, 0] * s[v, 0] + s[v, 1] * s[v, 1]) + s[v, 2] * s[v, 2]

    def _sh_loop(normals, gamma, factors, out, first, step):
        # normals: [B, V, 3] float32; gamma: [B or 1, 3, 9] float32; factors: [9] float32 (H_k's).
        f0, f1, f2, f3, f4, f5, f6, f7, f8 = (factors[0], factors[1], factors[2], factors[3], factors[4],
                                              factors[5], factors[6], factors[7], factors[8])
        shared = gamma.shape[0] == 1
        for b in range(first, normals.shape[0], step):
            g = gamma[0] if shared else gamma[b]
            n, o = normals[b], out[b]
            for v in range(normals.shape[1]):
                x, y, z = n[v, 0], n[v, 1], n[v, 2]
                h1, h2, h3 = f1 * y, f2 * z, f3 * x
                h4, h5 = (f4 * x) * y, (f5 * y) * z
                h6 = f6 * ((_THREE * z) * z - _ONE)
                h7, h8 = (f7 * x) * z, f8 * (x * x - y * y)
                for c in range(3):
                    total = f0 * g[c, 0]
                    total = total + h1 * g[c, 1]
                    total = total + h2 * g[c, 2]
                    total = total + h3 * g[c, 3]
                    total = total + h4 * g[c, 4]
                    total = total + h5 * g[c, 5]
                    total = total + h6 * g[c, 6]
                    total = total + h7 * g[c, 7]
                    total = total + h8 * g[c, 8]
                    o[v, c] = total

    _normals = rasterize_jit.compile_loop(_normals_loop)
    _sh = rasterize_jit.compile_loop(_sh_loop)


@torch.no_grad()
def vertex_normals_jit(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """:func:`~stylerig_lite.shading.vertex_normals` ``[B, V, 3]`` (no gradient), bit for bit.

    ``vertices [B, V, 3]`` float32 and ``faces [F, 3]`` long, on the CPU (the face indices are checked here:
    the loop does not).
    """
    rasterize_jit.require("vertex_normals_jit", vertices)
    assert_shape(vertices, [None, None, 3], "vertices")
    assert_shape(faces, [None, 3], "faces")
    rasterize_jit.check_face_indices(faces, vertices.shape[1])
    summed = torch.empty_like(vertices, memory_format=torch.contiguous_format)
    squared = summed.new_empty(summed.shape[:2])
    points = vertices.detach().contiguous().numpy()
    args = (points, faces.long().contiguous().numpy(), summed.numpy(), squared.numpy())
    rasterize_jit.split_over_threads(_normals, args, vertices.shape[0])
    # PyTorch's float32 sqrt here is not IEEE's correctly rounded one (it differs from NumPy's in
    # about 16% of values on this CPU, the same value wherever it sits): take PyTorch's.
    return summed.div_(squared.sqrt_().clamp_min_(eps).unsqueeze(-1))


@torch.no_grad()
def sh_shading_jit(normals: torch.Tensor, gamma: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """:func:`~stylerig_lite.shading.sh_shading` ``[B, V, 3]`` (no gradient), bit for bit.

    ``normals [B, V, 3]`` and ``gamma [B or 1, 27]``, float32 on the CPU; ``factors``: the nine
    :data:`~stylerig_lite.shading.SH_FACTORS` (passed in: this module sits beside ``shading`` and
    does not import it). Shapes and finiteness are checked by :func:`~stylerig_lite.shading.sh_shading`.
    """
    rasterize_jit.require("sh_shading_jit", normals, gamma)
    assert_shape(normals, [None, None, 3], "normals")
    assert_shape(gamma, [None, 27], "gamma")
    if len(factors) != 9:
        raise ValueError(f"factors must be the 9 SH factors (shading.SH_FACTORS), got {len(factors)}")
    factors = np.array(factors, dtype=np.float32)  # what a float32 tensor times a Python float uses
    coeffs = gamma.detach().contiguous().view(gamma.shape[0], 3, 9).numpy()
    out = torch.empty_like(normals, memory_format=torch.contiguous_format)
    args = (normals.detach().contiguous().numpy(), coeffs, factors, out.numpy())
    rasterize_jit.split_over_threads(_sh, args, normals.shape[0])
    return out
