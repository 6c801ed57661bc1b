"""The compiled shading and interpolation of a differentiated render against the tensor path and finite differences."""

from __future__ import annotations

import pytest
import torch

from conftest import skip_or_fail
from stylerig_lite import rasterize_jit, render_jit
from stylerig_lite.camera import Camera
from stylerig_lite.render import icosphere, render_mesh, shading_support, visible_faces
from stylerig_lite.shading import SH_FACTORS, directional_gamma

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(autouse=True)
def _needs_numba():
    if rasterize_jit.numba is None:
        skip_or_fail(f"numba is not importable ({rasterize_jit._MISSING}): pip install numba")


@pytest.fixture(scope="module")
def face_model():
    from stylerig_lite import morphable

    return morphable.load_face_model(progress=False)


def _face_batch(face_model, batch=3, seed=0):
    from stylerig_lite.params import FaceParams

    g = torch.Generator().manual_seed(seed)
    vector = 0.5 * torch.randn(batch, 196, generator=g)
    vector[:, -6:] = torch.tensor([[0.2, -0.4, 0.1, 1.0, -2.0, 3.0]]) * torch.randn(batch, 1, generator=g)
    with torch.no_grad():
        return face_model(FaceParams.from_vector(vector))


def _render(face_model, geometry, fused, monkeypatch, size=64):
    """Render with gradients on, through the compiled loops (``fused``) or the tensor path; return the outputs
    and the gradients of a fixed random function of the image, the barycentrics and the depth."""
    real = render_jit.usable
    monkeypatch.setattr(render_jit, "usable", real if fused else (lambda *tensors: False))
    vertices, albedo, light = (t.clone().requires_grad_(True) for t in (geometry.vertices, geometry.albedo,
                                                                        geometry.light))
    calls = []
    original = render_jit.shade_interpolate
    monkeypatch.setattr(render_jit, "shade_interpolate", lambda *a, **k: calls.append(1) or original(*a, **k))
    keep = face_model.face_mask(["face", "head_neck", "eyes"])
    out = render_mesh(vertices, face_model.faces[keep], albedo, light, Camera(image_size=size),
                      landmark_indices=face_model.landmark_indices)
    assert calls == ([1] if fused else [])
    g = torch.Generator().manual_seed(1)
    loss = (out.image * torch.randn(out.image.shape, generator=g)).sum()
    loss = loss + (out.fragments.bary * torch.randn(out.fragments.bary.shape, generator=g)).sum()
    loss = loss + 0.01 * (out.fragments.depth * torch.randn(out.fragments.depth.shape, generator=g)).sum()
    loss.backward()
    return out, (vertices.grad, albedo.grad, light.grad)


@pytest.mark.parametrize("size", [64, 128])
def test_fused_render_equals_the_tensor_path_on_the_ict_head(face_model, monkeypatch, size):
    geometry = _face_batch(face_model)
    fast, fast_grads = _render(face_model, geometry, True, monkeypatch, size)
    slow, slow_grads = _render(face_model, geometry, False, monkeypatch, size)
    assert torch.equal(fast.face_index, slow.face_index) and torch.equal(fast.fragments.pixel, slow.fragments.pixel)
    assert torch.equal(fast.fragments.vertex_ids, slow.fragments.vertex_ids)
    torch.testing.assert_close(fast.fragments.bary, slow.fragments.bary, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.fragments.depth, slow.fragments.depth, atol=1e-4, rtol=1e-6)
    assert float((fast.image - slow.image).detach().abs().max()) <= 1e-5  # float32 rounding of a different order
    assert float(fast.image.detach().abs().max()) > 0.1
    for name, a, b in zip(("vertices", "albedo", "light"), fast_grads, slow_grads):
        scale = float(b.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-3, msg=name)


def test_fused_render_is_used_only_when_a_gradient_is_recorded(face_model, monkeypatch):
    geometry = _face_batch(face_model, batch=1)
    keep = face_model.face_mask(["face"])
    camera = Camera(image_size=32)
    vertices = geometry.vertices.clone().requires_grad_(True)
    assert render_jit.usable(vertices, geometry.albedo)
    assert not render_jit.usable(geometry.vertices, geometry.albedo)  # nothing to differentiate
    with torch.no_grad():
        assert not render_jit.usable(vertices)
    assert not render_jit.usable(vertices.double())
    monkeypatch.setenv(rasterize_jit.SWITCH, "torch")
    assert not render_jit.usable(vertices)
    monkeypatch.delenv(rasterize_jit.SWITCH)
    # Without a gradient the image is the bit-exact forward path's; with one it is the same to rounding.
    plain = render_mesh(geometry.vertices, face_model.faces[keep], geometry.albedo, geometry.light, camera)
    traced = render_mesh(vertices, face_model.faces[keep], geometry.albedo, geometry.light, camera)
    assert traced.image.requires_grad
    torch.testing.assert_close(traced.image.detach(), plain.image, atol=1e-5, rtol=0)


def _sphere_case(batch=2, size=24):
    vertices, faces = icosphere(2, radius=12.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    points = (vertices + 0.8 * torch.randn(batch, *vertices.shape, generator=g, dtype=torch.float64))
    camera = Camera(image_size=size)
    with torch.no_grad():
        uv, depth = camera.project(points)
    face_index = visible_faces(uv.float(), depth.float(), faces, size, size)
    support = shading_support(face_index, faces, points.shape[1])
    albedo = 0.3 + 0.5 * torch.rand(batch, points.shape[1], 3, generator=g, dtype=torch.float64)
    gamma = directional_gamma([0.3, 0.5, 1.0], 0.8, 0.4, batch_size=batch, dtype=torch.float64)
    gamma = gamma + 0.05 * torch.randn(gamma.shape, generator=g, dtype=torch.float64)
    return points, albedo, gamma, camera, face_index, support


@pytest.mark.parametrize("shared", [False, True])
def test_fused_gradients_equal_finite_differences(shared):
    points, albedo, gamma, camera, face_index, support = _sphere_case()
    if shared:  # one albedo and one light for the batch
        albedo, gamma = albedo[:1], gamma[:1]

    def outputs(p, a, l):
        fragments, image = render_jit.shade_interpolate(p, a, l, camera, support, face_index, SH_FACTORS)
        return image, fragments.bary, fragments.depth

    inputs = tuple(t.clone().requires_grad_(True) for t in (points, albedo, gamma))
    assert (face_index >= 0).sum() > 50
    assert torch.autograd.gradcheck(outputs, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fused_render_rejects_bad_input():
    import dataclasses

    points, albedo, gamma, camera, face_index, support = _sphere_case(batch=1)
    args = (points, albedo, gamma, camera, support, face_index)
    with pytest.raises(ValueError, match="9 SH factors"):
        render_jit.shade_interpolate(*args, SH_FACTORS[:8])
    with pytest.raises(TypeError, match="float32 or float64 CPU"):
        render_jit.shade_interpolate(points.half(), *args[1:], SH_FACTORS)
    bad = dataclasses.replace(support, faces=support.faces + 1000)
    with pytest.raises(ValueError, match="valid 0.."):
        render_jit.shade_interpolate(*args[:4], bad, face_index, SH_FACTORS)
    bad = dataclasses.replace(support, corners=torch.full_like(support.corners, -1))
    with pytest.raises(ValueError, match="valid 0.."):  # a pixel's face whose corners are not in the support
        render_jit.shade_interpolate(*args[:4], bad, face_index, SH_FACTORS)
