"""The renderer's differentiable half as one compiled forward and one compiled backward (Numba).

Floor: 3DMM (a fast op beside :func:`stylerig_lite.render.render_mesh`'s tensor path, its reference).
Once the z-buffer has picked a face per pixel, what a training step differentiates is, for the
``Vs`` vertices the image reads (:func:`~stylerig_lite.render.shading_support`):

0. their positions gathered from the mesh and projected
   (:meth:`Camera.project <stylerig_lite.camera.Camera.project>`),
1. area-weighted unit normals (:func:`~stylerig_lite.shading.vertex_normals`),
2. spherical-harmonics shading times albedo (:func:`~stylerig_lite.shading.sh_shading`),
3. perspective-correct barycentrics of each covered pixel centre
   (:func:`~stylerig_lite.rasterize.fragments_from_face_index`) and the interpolated colour
   (:func:`~stylerig_lite.rasterize.interpolate`).

As tensor operations that is about forty passes over ``[B, Vs, 3]`` and ``[P, 3]`` arrays forward
and as many backward, each reading and writing memory; a pose-RigNet step through the latent F
(32 renders of 64 px) spent about 35 of its 108 ms there. :class:`ShadeInterpolate` computes
the four steps in one loop per image and their gradients in one more (the projection's forward is
the z-buffer's, taken without gradient, so only its backward runs here), images split over the
threads like the renderer's other loops (:func:`~stylerig_lite.rasterize_jit.split_over_threads`).

The forward pass is the tensor path's arithmetic, not all of its rounding: the barycentrics and
depths come out the same (bit for bit on the development machine), but the loop adds the faces'
normals face by face (the tensor path adds every face's first corner, then the second, then the
third) and the three weighted corner colours left to right, so the image differs from the tensor
path's by float32 rounding (about 1e-7; ``tests/test_render_jit.py`` checks 1e-5 on the ICT head,
and the gradients against the tensor path's and, in float64, against finite differences with
:func:`torch.autograd.gradcheck`). That is why it runs only where a gradient is recorded: the
forward-only renders (FaceWorld, corpora, the editor, evaluation) keep their bit-for-bit compiled
loops. ``STYLERIG_LITE_RASTERIZER=torch`` switches it off with the rest.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from stylerig_lite import rasterize_jit
from stylerig_lite.rasterize import Fragments, covered_pixels, scatter_pixels

__all__ = ["ShadeInterpolate", "shade_interpolate", "usable"]


def usable(*tensors: torch.Tensor) -> bool:
    """Whether :func:`shade_interpolate` may run: loops available, float32 CPU tensors, a gradient to record."""
    return rasterize_jit.usable(*tensors, differentiated=True)


if rasterize_jit.numba is not None:

    def _corners(uv, depth, ids, pu, pv):
        # The edge functions w_k (edge k opposite corner k), as fragments_from_face_index computes them.
        u0, u1, u2 = uv[ids[0], 0], uv[ids[1], 0], uv[ids[2], 0]
        v0, v1, v2 = uv[ids[0], 1], uv[ids[1], 1], uv[ids[2], 1]
        w0 = (u2 - u1) * (pv - v1) - (v2 - v1) * (pu - u1)
        w1 = (u0 - u2) * (pv - v2) - (v0 - v2) * (pu - u2)
        w2 = (u1 - u0) * (pv - v0) - (v1 - v0) * (pu - u0)
        return u0, u1, u2, v0, v1, v2, w0, w1, w2, depth[ids[0]], depth[ids[1]], depth[ids[2]]

    _corners_jit = rasterize_jit.numba.njit(inline="always", nogil=True)(_corners)

    def _edges(p, i0, i1, i2):
        # e1 = p1 - p0 and e2 = p2 - p0 of a face: its normal is e1 x e2.
        return (p[i1, 0] - p[i0, 0], p[i1, 1] - p[i0, 1], p[i1, 2] - p[i0, 2],
                p[i2, 0] - p[i0, 0], p[i2, 1] - p[i0, 1], p[i2, 2] - p[i0, 2])

    def _basis(factors, x, y, z, one, three):
        # H_1 .. H_8 of a unit normal (H_0 = factors[0] is constant), associated as shading_jit's.
        return (factors[1] * y, factors[2] * z, factors[3] * x, (factors[4] * x) * y, (factors[5] * y) * z,
                factors[6] * ((three * z) * z - one), (factors[7] * x) * z, factors[8] * (x * x - y * y))

    _edges_jit = rasterize_jit.numba.njit(inline="always", nogil=True)(_edges)
    _basis_jit = rasterize_jit.numba.njit(inline="always", nogil=True)(_basis)

    def _forward_loop(vertices, albedo, gamma, factors, consts, support, faces, eps, start, pv_all, pu_all,
                      corner_ids, uv, depth, focal, points, unit, length, shade, color, values, bary, pixel_depth,
                      first, step):
        # vertices [B, V, 3], albedo [B or 1, V, 3], gamma [B or 1, 27]; the layout (see shade_interpolate):
        # factors [9], consts [5] (0, 1, 2, 3, 6 in the vertices' float type), support [Vs] (mesh ids of the
        # support's vertices), faces [Fs, 3] (support ids), eps, start [B + 1] (image b's pixels are
        # start[b]..start[b + 1]), the pixel centres pv_all, pu_all [P], their face's corners corner_ids
        # [P, 3] (support ids), uv [B, Vs, 2] and depth [B, Vs] (the support's projection), focal (pixels).
        # Written: points [B, Vs, 3] (the support's positions), unit [B, Vs, 3], length [B, Vs] (unclamped),
        # shade and color [B, Vs, 3], values [P, 3], bary [P, 3], pixel_depth [P].
        f0 = factors[0]
        zero, one, three = consts[0], consts[1], consts[3]
        for b in range(first, points.shape[0], step):
            p, n, mesh = points[b], unit[b], vertices[b]
            for i in range(support.shape[0]):
                p[i, 0], p[i, 1], p[i, 2] = mesh[support[i], 0], mesh[support[i], 1], mesh[support[i], 2]
            n[:] = zero
            for f in range(faces.shape[0]):
                i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                ax, ay, az, bx, by, bz = _edges_jit(p, i0, i1, i2)
                nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
                for i in (i0, i1, i2):
                    n[i, 0] += nx
                    n[i, 1] += ny
                    n[i, 2] += nz
            g, a = gamma[b if gamma.shape[0] > 1 else 0], albedo[b if albedo.shape[0] > 1 else 0]
            for v in range(points.shape[1]):
                raw = np.sqrt((n[v, 0] * n[v, 0] + n[v, 1] * n[v, 1]) + n[v, 2] * n[v, 2])
                length[b, v] = raw
                scale = max(raw, eps)
                x, y, z = n[v, 0] / scale, n[v, 1] / scale, n[v, 2] / scale
                n[v, 0], n[v, 1], n[v, 2] = x, y, z
                h1, h2, h3, h4, h5, h6, h7, h8 = _basis_jit(factors, x, y, z, one, three)
                for c in range(3):
                    k = 9 * c
                    s = f0 * g[k] + h1 * g[k + 1] + h2 * g[k + 2] + h3 * g[k + 3] + h4 * g[k + 4]
                    s = s + h5 * g[k + 5] + h6 * g[k + 6] + h7 * g[k + 7] + h8 * g[k + 8]
                    shade[b, v, c] = s
                    color[b, v, c] = a[support[v], c] * s
            for q in range(start[b], start[b + 1]):
                ids = corner_ids[q]
                _, _, _, _, _, _, w0, w1, w2, z0, z1, z2 = _corners_jit(uv[b], depth[b], ids, pu_all[q], pv_all[q])
                total = (w0 + w1) + w2
                q0, q1, q2 = (w0 / total) / z0, (w1 / total) / z1, (w2 / total) / z2
                inv = (q0 + q1) + q2
                b0, b1, b2 = q0 / inv, q1 / inv, q2 / inv
                bary[q, 0], bary[q, 1], bary[q, 2] = b0, b1, b2
                pixel_depth[q] = one / inv
                cb = color[b]
                for c in range(3):
                    values[q, c] = (b0 * cb[ids[0], c] + b1 * cb[ids[1], c]) + b2 * cb[ids[2], c]

    def _backward_loop(albedo, gamma, factors, consts, support, faces, eps, start, pv_all, pu_all, corner_ids, uv,
                       depth, focal, points, unit, length, shade, color, grad_values, grad_bary, grad_depth,
                       grad_vertices, grad_albedo, grad_gamma, grad_color, grad_sum, grad_uv, grad_z, grad_points,
                       first, step):
        # The forward's inputs and what it wrote, the gradients of values [P, 3], bary [P, 3] and
        # pixel_depth [P]. Written: the gradients of the vertices and the albedo [B, V, 3] (at the support's
        # rows; zero elsewhere beforehand) and of gamma [B, 27] (per image). grad_color, grad_sum, grad_uv,
        # grad_z and grad_points are [B, Vs, ...] scratch.
        f0, f1, f2, f3, f4, f5, f6, f7, f8 = (factors[0], factors[1], factors[2], factors[3], factors[4],
                                              factors[5], factors[6], factors[7], factors[8])
        zero, one, two, three, six = consts[0], consts[1], consts[2], consts[3], consts[4]
        for b in range(first, points.shape[0], step):
            gc, gu, gz = grad_color[b], grad_uv[b], grad_z[b]
            gc[:] = zero
            gu[:] = zero
            gz[:] = zero
            cb = color[b]
            # 3. Interpolation and barycentrics, pixel by pixel.
            for q in range(start[b], start[b + 1]):
                ids = corner_ids[q]
                pu, pv = pu_all[q], pv_all[q]
                u0, u1, u2, v0, v1, v2, w0, w1, w2, z0, z1, z2 = _corners_jit(uv[b], depth[b], ids, pu, pv)
                total = (w0 + w1) + w2
                s0, s1, s2 = w0 / total, w1 / total, w2 / total
                q0, q1, q2 = s0 / z0, s1 / z1, s2 / z2
                inv = (q0 + q1) + q2
                b0, b1, b2 = q0 / inv, q1 / inv, q2 / inv
                gb0, gb1, gb2 = grad_bary[q, 0], grad_bary[q, 1], grad_bary[q, 2]
                for c in range(3):
                    g = grad_values[q, c]
                    gc[ids[0], c] += b0 * g
                    gc[ids[1], c] += b1 * g
                    gc[ids[2], c] += b2 * g
                    gb0 += g * cb[ids[0], c]
                    gb1 += g * cb[ids[1], c]
                    gb2 += g * cb[ids[2], c]
                # bary_k = q_k / I and depth = 1 / I with I = sum q_k.
                common = ((gb0 * q0 + gb1 * q1) + gb2 * q2) / (inv * inv) + grad_depth[q] / (inv * inv)
                gq0, gq1, gq2 = gb0 / inv - common, gb1 / inv - common, gb2 / inv - common
                # q_k = s_k / z_k.
                gz[ids[0]] -= gq0 * q0 / z0
                gz[ids[1]] -= gq1 * q1 / z1
                gz[ids[2]] -= gq2 * q2 / z2
                gs0, gs1, gs2 = gq0 / z0, gq1 / z1, gq2 / z2
                # s_k = w_k / S with S = sum w_k.
                common = ((gs0 * w0 + gs1 * w1) + gs2 * w2) / (total * total)
                gw0, gw1, gw2 = gs0 / total - common, gs1 / total - common, gs2 / total - common
                # w_k = (u_b - u_a)(pv - v_a) - (v_b - v_a)(pu - u_a) with a = k + 1, b = k + 2: each corner
                # is the b of one edge and the a of another.
                gu[ids[0], 0] += gw1 * (pv - v2) + gw2 * (v1 - pv)
                gu[ids[1], 0] += gw2 * (pv - v0) + gw0 * (v2 - pv)
                gu[ids[2], 0] += gw0 * (pv - v1) + gw1 * (v0 - pv)
                gu[ids[0], 1] += gw2 * (pu - u1) - gw1 * (pu - u2)
                gu[ids[1], 1] += gw0 * (pu - u2) - gw2 * (pu - u0)
                gu[ids[2], 1] += gw1 * (pu - u0) - gw0 * (pu - u1)
            # 2. Colour = albedo * shading, shading = sum_k H_k(n) gamma_ck.
            gs, n = grad_sum[b], unit[b]
            g, a = gamma[b if gamma.shape[0] > 1 else 0], albedo[b if albedo.shape[0] > 1 else 0]
            gg = grad_gamma[b]
            gg[:] = zero
            for v in range(points.shape[1]):
                x, y, z = n[v, 0], n[v, 1], n[v, 2]
                h1, h2, h3, h4, h5, h6, h7, h8 = _basis_jit(factors, x, y, z, one, three)
                d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = zero  # dL/dH_k (H_0 is constant)
                for c in range(3):
                    grad_albedo[b, support[v], c] = gc[v, c] * shade[b, v, c]
                    t = gc[v, c] * a[support[v], c]
                    k = 9 * c
                    gg[k] += t * f0
                    gg[k + 1] += t * h1
                    gg[k + 2] += t * h2
                    gg[k + 3] += t * h3
                    gg[k + 4] += t * h4
                    gg[k + 5] += t * h5
                    gg[k + 6] += t * h6
                    gg[k + 7] += t * h7
                    gg[k + 8] += t * h8
                    d1 += t * g[k + 1]
                    d2 += t * g[k + 2]
                    d3 += t * g[k + 3]
                    d4 += t * g[k + 4]
                    d5 += t * g[k + 5]
                    d6 += t * g[k + 6]
                    d7 += t * g[k + 7]
                    d8 += t * g[k + 8]
                gx = f3 * d3 + f4 * y * d4 + f7 * z * d7 + two * f8 * x * d8
                gy = f1 * d1 + f4 * x * d4 + f5 * z * d5 - two * f8 * y * d8
                gzn = f2 * d2 + f5 * y * d5 + six * f6 * z * d6 + f7 * x * d7
                # 1. Unit normal n = s / max(|s|, eps).
                raw = length[b, v]
                if raw > eps:
                    dot = x * gx + y * gy + z * gzn
                    gs[v, 0], gs[v, 1], gs[v, 2] = (gx - x * dot) / raw, (gy - y * dot) / raw, (gzn - z * dot) / raw
                else:
                    gs[v, 0], gs[v, 1], gs[v, 2] = gx / eps, gy / eps, gzn / eps
            p, gp = points[b], grad_points[b]
            gp[:] = zero
            for f in range(faces.shape[0]):
                i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                ax, ay, az, bx, by, bz = _edges_jit(p, i0, i1, i2)
                fx = (gs[i0, 0] + gs[i1, 0]) + gs[i2, 0]
                fy = (gs[i0, 1] + gs[i1, 1]) + gs[i2, 1]
                fz = (gs[i0, 2] + gs[i1, 2]) + gs[i2, 2]
                # n = e1 x e2: dL/de1 = e2 x g, dL/de2 = g x e1.
                e1x, e1y, e1z = by * fz - bz * fy, bz * fx - bx * fz, bx * fy - by * fx
                e2x, e2y, e2z = fy * az - fz * ay, fz * ax - fx * az, fx * ay - fy * ax
                gp[i1, 0] += e1x
                gp[i1, 1] += e1y
                gp[i1, 2] += e1z
                gp[i2, 0] += e2x
                gp[i2, 1] += e2y
                gp[i2, 2] += e2z
                gp[i0, 0] -= e1x + e2x
                gp[i0, 1] -= e1y + e2y
                gp[i0, 2] -= e1z + e2z
            # 0. The projection u = f x / z_c + W / 2, v = -f y / z_c + H / 2, z_c = distance - z.
            gv = grad_vertices[b]
            for i in range(support.shape[0]):
                zc = depth[b, i]
                su, sv = gu[i, 0] * focal / zc, gu[i, 1] * focal / zc
                gv[support[i], 0] = gp[i, 0] + su
                gv[support[i], 1] = gp[i, 1] - sv
                gv[support[i], 2] = gp[i, 2] + (su * p[i, 0] - sv * p[i, 1]) / zc - gz[i]

    _forward = rasterize_jit.compile_loop(_forward_loop)
    _backward = rasterize_jit.compile_loop(_backward_loop)


def _numpy(t: torch.Tensor):
    return t.detach().contiguous().numpy()


class _Layout(NamedTuple):
    """What both loops read besides the differentiated tensors, in their argument order (NumPy, not differentiated)."""

    factors: "np.ndarray"  # [9] SH factors
    consts: "np.ndarray"  # [5] 0, 1, 2, 3, 6 in the float type
    support: "np.ndarray"  # [Vs] mesh ids of the support's vertices
    faces: "np.ndarray"  # [Fs, 3] the support's faces, support ids
    eps: float  # the normals' length floor
    start: "np.ndarray"  # [B + 1] image b's pixels are start[b]:start[b + 1]
    pv: "np.ndarray"  # [P] pixel centres, rows
    pu: "np.ndarray"  # [P] pixel centres, columns
    corner_ids: "np.ndarray"  # [P, 3] each pixel's face, support ids
    uv: "np.ndarray"  # [B, Vs, 2] the support's projection (no gradient)
    depth: "np.ndarray"  # [B, Vs]
    focal: float  # the camera's focal length in pixels


class ShadeInterpolate(torch.autograd.Function):
    """``(vertices, albedo, gamma) -> (values [P, 3], bary [P, 3], pixel_depth [P])`` in two compiled loops.

    ``vertices [B, V, 3]`` world positions, ``albedo [B or 1, V, 3]``, ``gamma [B or 1, 27]``; then, not
    differentiated, ``layout``: the :class:`_Layout` :func:`shade_interpolate` builds (the support and its
    faces, each image's pixel range, the pixel centres, the winning faces' corners, the support's projection,
    the focal length, the SH factors, the normals' eps). Gradients reach the vertices through the projection,
    the barycentrics and the normals. First-order gradients only.
    """

    @staticmethod
    def forward(ctx, vertices, albedo, gamma, layout):
        batch = vertices.shape[0]
        count, pixels = layout.support.shape[0], layout.corner_ids.shape[0]
        points, unit, shade, color = (vertices.new_empty(batch, count, 3) for _ in range(4))
        length = vertices.new_empty(batch, count)
        values, bary = vertices.new_empty(pixels, 3), vertices.new_empty(pixels, 3)
        pixel_depth = vertices.new_empty(pixels)
        saved = (points, unit, length, shade, color)
        outputs = tuple(t.numpy() for t in saved + (values, bary, pixel_depth))
        inputs = tuple(_numpy(t) for t in (vertices, albedo, gamma))
        rasterize_jit.split_over_threads(_forward, inputs + layout + outputs, batch)
        ctx.layout = layout
        ctx.shapes = (tuple(vertices.shape), albedo.shape[0], gamma.shape[0])
        ctx.save_for_backward(albedo, gamma, *saved)
        return values, bary, pixel_depth

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values, grad_bary, grad_depth):
        albedo, gamma, *saved = ctx.saved_tensors
        (batch, num_vertices, _), albedo_batch, gamma_batch = ctx.shapes
        count, pixels = ctx.layout.support.shape[0], ctx.layout.corner_ids.shape[0]
        grads = [grad_values, grad_bary, grad_depth]
        shapes = [(pixels, 3), (pixels, 3), (pixels,)]
        grads = [albedo.new_zeros(shape) if g is None else g.to(albedo.dtype) for g, shape in zip(grads, shapes)]
        grad_vertices = albedo.new_zeros(batch, num_vertices, 3)  # written at the support's rows
        grad_albedo = albedo.new_zeros(batch, num_vertices, 3)
        grad_gamma = albedo.new_empty(batch, 27)
        dtype = ctx.layout.factors.dtype
        scratch = tuple(np.empty((batch, count, k), dtype=dtype) for k in (3, 3, 2)) + (
            np.empty((batch, count), dtype=dtype), np.empty((batch, count, 3), dtype=dtype))
        args = (tuple(_numpy(t) for t in (albedo, gamma)) + ctx.layout + tuple(_numpy(t) for t in saved)
                + tuple(_numpy(g) for g in grads) + tuple(t.numpy() for t in (grad_vertices, grad_albedo, grad_gamma))
                + scratch)
        rasterize_jit.split_over_threads(_backward, args, batch)
        if albedo_batch == 1:  # one albedo shared by the batch: the images' gradients add up
            grad_albedo = grad_albedo.sum(dim=0, keepdim=True)
        if gamma_batch == 1:
            grad_gamma = grad_gamma.sum(dim=0, keepdim=True)
        return grad_vertices, grad_albedo, grad_gamma, None


def shade_interpolate(vertices: torch.Tensor, albedo: torch.Tensor, gamma: torch.Tensor, camera, support,
                      face_index: torch.Tensor, factors: Sequence[float], *, uv: Optional[torch.Tensor] = None,
                      depth: Optional[torch.Tensor] = None, eps: float = 1e-12) -> Tuple[Fragments, torch.Tensor]:
    """Project, shade and interpolate the vertices a render reads: ``(fragments, image)``, differentiable.

    ``vertices [B, V, 3]``, ``albedo [B or 1, V, 3]``, ``gamma [B or 1, 27]`` (float32, or float64 for
    gradient checks, on the CPU); ``camera`` the :class:`~stylerig_lite.camera.Camera`; ``support`` the
    :class:`~stylerig_lite.render.ShadingSupport` of ``face_index [B, H, W]``, the z-buffer's winners;
    ``factors`` the nine :data:`~stylerig_lite.shading.SH_FACTORS`; ``uv [B, V, 2]`` and ``depth [B, V]``
    the vertices' projection if the caller has it (taken without gradient; projected here otherwise).
    Returns the :class:`~stylerig_lite.rasterize.Fragments` of
    :func:`~stylerig_lite.rasterize.fragments_from_face_index` on the support (the same barycentrics and
    depths; ``vertex_ids`` are support ids, as there) and ``image [B, 3, H, W]``,
    :func:`~stylerig_lite.rasterize.interpolate`'s, to float rounding.
    """
    if rasterize_jit.numba is None:
        raise RuntimeError("shade_interpolate needs numba; pip install numba")
    dtype = vertices.dtype
    if dtype not in (torch.float32, torch.float64) or vertices.device.type != "cpu":
        raise TypeError(f"shade_interpolate takes float32 or float64 CPU tensors, got {dtype} on {vertices.device}")
    if len(factors) != 9:
        raise ValueError(f"factors must be the 9 SH factors (shading.SH_FACTORS), got {len(factors)}")
    batch, num_vertices, _ = vertices.shape
    kept = support.vertices
    count = kept.shape[0]
    rasterize_jit.check_face_indices(kept[None], num_vertices)
    rasterize_jit.check_face_indices(support.faces, count)
    if uv is None or depth is None:
        with torch.no_grad():
            uv, depth = camera.project(vertices)
    pixel, image, row, col, corner_ids = covered_pixels(face_index, support.corners)
    rasterize_jit.check_face_indices(corner_ids, count)  # (corners of faces no pixel shows may be -1)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    start = torch.searchsorted(image, torch.arange(batch + 1, dtype=image.dtype, device=image.device))
    layout = _Layout(
        factors=np.asarray(factors, dtype=np_dtype), consts=np.asarray([0, 1, 2, 3, 6], dtype=np_dtype),
        support=_numpy(kept), faces=_numpy(support.faces.long()), eps=np_dtype(eps), start=_numpy(start),
        pv=_numpy(row.to(dtype) + 0.5), pu=_numpy(col.to(dtype) + 0.5), corner_ids=_numpy(corner_ids),
        uv=_numpy(uv.index_select(1, kept).to(dtype)), depth=_numpy(depth.index_select(1, kept).to(dtype)),
        focal=np_dtype(camera.focal_pixels))
    values, bary, pixel_depth = ShadeInterpolate.apply(vertices, albedo.to(dtype), gamma.to(dtype), layout)
    fragments = Fragments(face_index=face_index, pixel=pixel, vertex_ids=image[:, None] * count + corner_ids,
                          bary=bary, depth=pixel_depth)
    return fragments, scatter_pixels(values, pixel, fragments.shape, 3)
