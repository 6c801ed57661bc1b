"""Spherical-harmonics shading and vertex normals: known answers, references, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from stylerig_lite.render import icosphere
from stylerig_lite.shading import (
    DIRECTIONAL_PEAK,
    LAMBERT_FACTORS,
    SH_FACTORS,
    ambient_gamma,
    directional_gamma,
    face_normals,
    sh_basis,
    sh_basis_raw,
    sh_shading,
    vertex_normals,
    vertex_normals_reference,
)


def _sphere_samples(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=dtype)
    return d / d.norm(dim=-1, keepdim=True)


def test_basis_is_orthonormal_on_the_sphere_monte_carlo():
    n = 200_000
    y = sh_basis_raw(_sphere_samples(n, seed=0))  # [N, 9]
    gram = (4 * math.pi / n) * y.T @ y  # integral of Y_i Y_j over the sphere
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=0.02, rtol=0)


def test_basis_constants_and_lambert_factors():
    normals = _sphere_samples(100, seed=1)
    raw = sh_basis_raw(normals)
    x, y, z = normals.unbind(-1)
    torch.testing.assert_close(raw[:, 0], torch.full_like(x, 0.282095), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[:, 3], 0.488603 * x, atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[:, 6], 0.315392 * (3 * z * z - 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[:, 8], 0.546274 * (x * x - y * y), atol=1e-6, rtol=0)
    factors = torch.tensor(LAMBERT_FACTORS, dtype=torch.float64) / math.pi
    torch.testing.assert_close(sh_basis(normals), raw * factors)
    torch.testing.assert_close(factors[[0, 1, 4]], torch.tensor([1.0, 2 / 3, 1 / 4], dtype=torch.float64))


def test_ambient_gamma_shades_every_normal_with_the_intensity():
    normals = _sphere_samples(500, seed=2).view(1, 500, 3)
    shading = sh_shading(normals, ambient_gamma(0.7, dtype=torch.float64))
    torch.testing.assert_close(shading, torch.full_like(shading, 0.7))
    rgb = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    shading = sh_shading(normals.expand(3, 500, 3), ambient_gamma(rgb, batch_size=3, dtype=torch.float64))
    torch.testing.assert_close(shading, rgb.expand(3, 500, 3))
    assert ambient_gamma(1.0).shape == (1, 27)
    assert ambient_gamma(torch.ones(4, 1)).shape == (4, 27)


def test_gamma_is_channel_major():
    gamma = torch.zeros(1, 27, dtype=torch.float64)
    gamma[0, 9] = 1.0  # band 0 of the green channel
    shading = sh_shading(_sphere_samples(10, seed=3).view(1, 10, 3), gamma)
    assert (shading[..., 0] == 0).all() and (shading[..., 2] == 0).all()
    torch.testing.assert_close(shading[..., 1], torch.full((1, 10), 0.282095, dtype=torch.float64), atol=1e-6, rtol=0)


def test_directional_light_peaks_on_the_normal_facing_it():
    direction = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    d = direction / direction.norm()
    gamma = directional_gamma(direction, intensity=0.6, ambient=0.25, dtype=torch.float64)
    normals = torch.cat([d[None], -d[None], _sphere_samples(5000, seed=4)]).view(1, -1, 3)
    shading = sh_shading(normals, gamma)[0, :, 0]
    assert shading.argmax() == 0  # the normal aligned with the light is the brightest
    assert shading[0] == pytest.approx(0.25 + DIRECTIONAL_PEAK * 0.6, abs=1e-9)
    assert shading[1] == pytest.approx(0.25 + 0.6 / 16, abs=1e-9)
    # Within the order-2 SH approximation error of the clamped cosine (max 3/32 at 90 degrees).
    exact = 0.25 + 0.6 * (normals[0] @ d).clamp_min(0)
    assert (shading - exact).abs().max() <= 0.6 * 0.095
    # RGB and batched arguments broadcast to [B, 27].
    batched = directional_gamma(torch.eye(3), torch.tensor([1.0, 0.5, 0.0]), torch.zeros(3, 1))
    assert batched.shape == (3, 27)


def test_lighting_bad_inputs():
    with pytest.raises(ValueError, match="non-zero"):
        directional_gamma([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="direction"):
        directional_gamma(torch.ones(2, 4))
    with pytest.raises(ValueError, match="ambiguous"):
        ambient_gamma(torch.ones(5))
    with pytest.raises(ValueError, match="batch"):
        directional_gamma(torch.ones(2, 3), intensity=torch.ones(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        ambient_gamma(float("nan"))
    normals = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        sh_shading(normals, torch.zeros(2, 26))
    with pytest.raises(ValueError, match="batch"):
        sh_shading(normals, torch.zeros(3, 27))
    with pytest.raises(ValueError, match="NaN"):
        sh_shading(normals, torch.full((2, 27), float("nan")))


def test_sh_shading_gradients_match_finite_differences():
    normals = _sphere_samples(6, seed=5).view(2, 3, 3).requires_grad_()
    gamma = torch.randn(2, 27, generator=torch.Generator().manual_seed(6), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(sh_shading, (normals, gamma))
    shared = gamma[:1].detach().clone().requires_grad_()  # one light for the batch
    assert torch.autograd.gradcheck(sh_shading, (normals, shared))


def test_sh_shading_treats_every_point_alone():
    """A point's shading does not depend on the other points passed with it, bit for bit."""
    normals = _sphere_samples(300, seed=7).view(3, 100, 3).float()
    gamma = torch.randn(3, 27, generator=torch.Generator().manual_seed(8))
    every = sh_shading(normals, gamma)
    for keep in (torch.tensor([5]), torch.arange(17, 64), torch.arange(0, 100, 3)):
        assert torch.equal(sh_shading(normals[:, keep], gamma), every[:, keep])


def test_icosahedron_normals_point_out_of_the_centre():
    vertices, faces = icosphere(0, dtype=torch.float64)  # every vertex: 5 congruent faces
    normals = vertex_normals(vertices[None], faces)[0]
    torch.testing.assert_close(normals, vertices / vertices.norm(dim=-1, keepdim=True))
    # Flipping the winding flips the normals.
    torch.testing.assert_close(vertex_normals(vertices[None], faces.flip(1))[0], -normals)


def test_icosphere_normals_are_nearly_radial_and_match_the_reference():
    vertices, faces = icosphere(2, radius=3.0, dtype=torch.float64)
    normals = vertex_normals(vertices[None] + torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64), faces)[0]
    radial = vertices / vertices.norm(dim=-1, keepdim=True)
    assert (normals * radial).sum(-1).min() > math.cos(math.radians(2.0))
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(len(vertices), dtype=torch.float64))
    torch.testing.assert_close(normals, vertex_normals_reference(vertices[None], faces)[0])


def test_flat_square_and_area_weighting():
    # Square in the z = 0 plane, counter-clockwise seen from +z (the camera side).
    vertices = torch.tensor([[[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [5, 5, 5]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    normals = vertex_normals(vertices, faces)[0]
    torch.testing.assert_close(normals[:4], torch.tensor([[0.0, 0.0, 1.0]] * 4, dtype=torch.float64))
    assert (normals[4] == 0).all()  # unused vertex: zero normal
    # Two faces at vertex 0: a big one in z=0 (area 2) and a small one in x=0 (area 0.5).
    vertices = torch.tensor([[[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [0, 1, 0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 4, 3]])
    n0 = vertex_normals(vertices, faces)[0, 0]
    expected = torch.tensor([0.5 * 2, 0.0, 2.0 * 2], dtype=torch.float64)  # 2 * area * unit normal
    torch.testing.assert_close(n0, expected / expected.norm())
    torch.testing.assert_close(face_normals(vertices, faces)[0, 0], torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64))


def test_vertex_normals_gradients_match_finite_differences():
    vertices, faces = icosphere(0, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    batch = (vertices[None] + 0.1 * torch.randn(2, *vertices.shape, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: vertex_normals(v, faces), (batch,))


def test_vertex_normals_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        vertex_normals(torch.zeros(4, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        vertex_normals(torch.zeros(1, 4, 3), torch.zeros(1, 3))


def test_the_neutral_face_is_lit_by_uniform_white_light():
    """params.FaceParams.neutral writes the ambient light itself (params sits below shading)."""
    from stylerig_lite.params import FaceParams

    assert torch.equal(FaceParams.neutral(3).light, ambient_gamma(1.0, batch_size=3))
    assert torch.allclose(FaceParams.neutral(1, dtype=torch.float64).light, ambient_gamma(1.0, dtype=torch.float64))


# ---------------------------------------------------------------------- the compiled loops (Numba)
def _needs_numba():
    from conftest import skip_or_fail
    from stylerig_lite import rasterize_jit

    if rasterize_jit.numba is None:
        skip_or_fail(f"numba is not importable ({rasterize_jit._MISSING}): pip install numba")


def _tensor_path(monkeypatch, fn, *args):
    """``fn(*args)`` with the compiled loops switched off (the reference)."""
    with monkeypatch.context() as patch:
        patch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
        return fn(*args)


def test_compiled_normals_and_shading_equal_the_tensor_path_bit_for_bit(monkeypatch):
    from stylerig_lite.shading_jit import sh_shading_jit, vertex_normals_jit

    _needs_numba()
    sphere_vertices, sphere_faces = icosphere(3)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        batch = 1 + 2 * seed  # odd batches: images split unevenly over the threads
        vertices = sphere_vertices.float() * 10 + torch.randn(batch, *sphere_vertices.shape, generator=g)
        vertices = torch.cat([vertices, torch.randn(batch, 3, 3, generator=g)], dim=1)  # used by no face: 0
        faces = sphere_faces[torch.randperm(sphere_faces.shape[0], generator=g)]  # any face order
        faces = torch.cat([faces, faces[:1, [0, 0, 1]]])  # and a degenerate face
        expected = _tensor_path(monkeypatch, vertex_normals, vertices, faces)
        assert torch.equal(vertex_normals_jit(vertices, faces), expected)
        assert torch.equal(vertex_normals(vertices, faces), expected)  # "auto" takes the loop
        assert (expected.norm(dim=-1) == 0).any()
        for gamma in (torch.randn(batch, 27, generator=g), torch.randn(1, 27, generator=g)):
            shaded = _tensor_path(monkeypatch, sh_shading, expected, gamma)
            assert torch.equal(sh_shading_jit(expected, gamma, SH_FACTORS), shaded)
            assert torch.equal(sh_shading(expected, gamma), shaded)


def test_compiled_loops_run_only_without_gradients_on_float32_cpu(monkeypatch):
    from stylerig_lite import shading_jit

    _needs_numba()
    vertices, faces = icosphere(2)
    vertices = vertices.float()[None].repeat(2, 1, 1)
    gamma = torch.randn(2, 27)
    calls = []
    for name in ("vertex_normals_jit", "sh_shading_jit"):
        real = getattr(shading_jit, name)
        monkeypatch.setattr(shading_jit, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    sh_shading(vertex_normals(vertices, faces), gamma)
    assert calls == ["vertex_normals_jit", "sh_shading_jit"]
    sh_shading(vertex_normals(vertices.double(), faces), gamma.double())  # float64: the tensor path
    leaf = vertices.clone().requires_grad_()
    shaded = sh_shading(vertex_normals(leaf, faces), gamma)  # gradients to record: the tensor path
    shaded.sum().backward()
    assert leaf.grad is not None and calls == ["vertex_normals_jit", "sh_shading_jit"]
    with torch.no_grad():
        sh_shading(vertex_normals(leaf, faces), gamma)  # nothing recorded: the loops again
    assert len(calls) == 4
    monkeypatch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
    sh_shading(vertex_normals(vertices, faces), gamma)
    assert len(calls) == 4


def test_compiled_normals_check_their_inputs():
    from stylerig_lite.shading_jit import sh_shading_jit, vertex_normals_jit

    _needs_numba()
    vertices, faces = icosphere(1)
    vertices = vertices.float()[None]
    with pytest.raises(ValueError, match="faces index vertices"):
        vertex_normals_jit(vertices, torch.cat([faces, torch.tensor([[0, 1, vertices.shape[1]]])]))
    with pytest.raises(ValueError, match="faces index vertices"):
        vertex_normals_jit(vertices, torch.tensor([[0, -1, 2]]))
    with pytest.raises(TypeError, match="float32 CPU"):
        vertex_normals_jit(vertices.double(), faces)
    with pytest.raises(TypeError, match="float32 CPU"):
        sh_shading_jit(vertices, torch.zeros(1, 27, dtype=torch.float64), SH_FACTORS)
