"""Camera: projection conventions (known answers), matrices, and bad-input errors."""

from __future__ import annotations

import pytest
import torch

from stylerig_lite.camera import Camera, normalize_image_size


def _points(*xyz, dtype=torch.float64):
    return torch.tensor([list(xyz)], dtype=dtype).view(1, -1, 3)


def test_default_camera_frames_40cm_at_the_origin():
    cam = Camera()  # 100 cm away, focal 2.5 image widths, 64 px
    assert (cam.height, cam.width) == (64, 64)
    assert cam.focal_pixels == pytest.approx(160.0)
    pts = _points(0, 0, 0, 0, 20, 0, 0, -20, 0, 20, 0, 0, -20, 0, 0)
    uv, depth = cam.project(pts)
    expected = torch.tensor([[32, 32], [32, 0], [32, 64], [64, 32], [0, 32]], dtype=torch.float64)
    torch.testing.assert_close(uv[0], expected)
    torch.testing.assert_close(depth[0], torch.full((5,), 100.0, dtype=torch.float64))


def test_projection_known_answers_and_axes():
    cam = Camera(image_size=64)
    # +x -> image right, +y -> image up (smaller v), +z -> nearer the camera (smaller depth).
    uv, depth = cam.project(_points(4, 0, 0, 0, 3, 0, 2, -1, 50))
    f = 160.0
    torch.testing.assert_close(uv[0, 0], torch.tensor([f * 4 / 100 + 32, 32.0], dtype=torch.float64))
    torch.testing.assert_close(uv[0, 1], torch.tensor([32.0, 32 - f * 3 / 100], dtype=torch.float64))
    torch.testing.assert_close(uv[0, 2], torch.tensor([f * 2 / 50 + 32, f * 1 / 50 + 32], dtype=torch.float64))
    torch.testing.assert_close(depth[0], torch.tensor([100.0, 100.0, 50.0], dtype=torch.float64))


def test_focal_is_in_units_of_width_and_resolution_keeps_field_of_view():
    pts = _points(5, -3, 7)
    uv64, _ = Camera(image_size=64).project(pts)
    uv128, _ = Camera(image_size=128).project(pts)
    torch.testing.assert_close(uv128, uv64 * 2)
    # Non-square: same f = focal * W on both axes, principal point at (W/2, H/2).
    cam = Camera(image_size=(32, 64))
    uv, depth = cam.project(pts)
    f = 2.5 * 64
    z = 100 - 7
    torch.testing.assert_close(uv[0, 0], torch.tensor([f * 5 / z + 32, f * 3 / z + 16], dtype=torch.float64))
    assert cam.with_image_size(16).focal_pixels == pytest.approx(40.0)


def test_to_camera_intrinsics_extrinsics_agree_with_project():
    cam = Camera(distance=80.0, focal=2.0, image_size=(48, 64))
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(2, 10, 3, generator=g, dtype=torch.float64) - 0.5) * 30
    cam_pts = cam.to_camera(pts)
    torch.testing.assert_close(cam_pts[..., 0], pts[..., 0])
    torch.testing.assert_close(cam_pts[..., 1], -pts[..., 1])
    torch.testing.assert_close(cam_pts[..., 2], 80.0 - pts[..., 2])
    rotation, translation = cam.extrinsics(torch.float64)
    torch.testing.assert_close(pts @ rotation.T + translation, cam_pts)
    homogeneous = cam_pts @ cam.intrinsics(torch.float64).T
    uv, depth = cam.project(pts)
    torch.testing.assert_close(homogeneous[..., :2] / homogeneous[..., 2:], uv)
    torch.testing.assert_close(homogeneous[..., 2], depth)


def test_pixel_centres_are_half_integers():
    centres = Camera(image_size=(2, 3)).pixel_centres(torch.float64)
    assert centres.shape == (2, 3, 2)
    torch.testing.assert_close(centres[1, 2], torch.tensor([2.5, 1.5], dtype=torch.float64))


def test_project_gradients_match_finite_differences():
    cam = Camera(image_size=32)
    pts = torch.tensor([[[1.0, 2.0, 3.0], [-4.0, 0.5, 10.0]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: cam.project(p)[0], (pts,))


@pytest.mark.parametrize("z", [100.0, 99.0, 150.0])
def test_camera_behind_the_head_is_an_error(z):
    # Depth 0 (at the camera), inside the near plane (1 cm), and behind the camera.
    with pytest.raises(ValueError, match="camera behind the head"):
        Camera().project(_points(0, 0, 0, 0, 0, z))


def test_bad_inputs():
    cam = Camera()
    with pytest.raises(ValueError, match="shape"):
        cam.project(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="shape"):
        cam.project(torch.zeros(1, 5, 2))
    with pytest.raises(TypeError, match="floating-point"):
        cam.to_camera(torch.zeros(1, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        cam.project(_points(0, float("nan"), 0))
    with pytest.raises(ValueError, match="positive"):
        Camera(image_size=0)
    with pytest.raises(ValueError, match="positive"):
        Camera(image_size=(64, -1))
    with pytest.raises(TypeError):
        Camera(image_size=64.0)
    with pytest.raises(ValueError, match="focal"):
        Camera(focal=0.0)
    with pytest.raises(ValueError, match="distance"):
        Camera(distance=0.5)
    with pytest.raises(TypeError):
        Camera(distance=float("nan"))
    assert normalize_image_size(5) == (5, 5)
    assert normalize_image_size((3, 4)) == (3, 4)


def test_compiled_projection_equals_the_tensor_path_bit_for_bit(monkeypatch):
    from stylerig_lite import rasterize_jit

    if rasterize_jit.numba is None:
        pytest.skip("numba is not importable: project has one path")
    g = torch.Generator().manual_seed(0)
    calls = []
    real = rasterize_jit.project_jit
    monkeypatch.setattr(rasterize_jit, "project_jit", lambda *a: calls.append(1) or real(*a))
    for cam in (Camera(), Camera(distance=80, focal=2.0, image_size=(48, 64)), Camera(image_size=256)):
        points = (torch.rand(3, 1001, 3, generator=g) - 0.5) * torch.tensor([40.0, 40.0, 30.0])
        uv, depth = cam.project(points)
        with monkeypatch.context() as patch:
            patch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
            expected_uv, expected_depth = cam.project(points)
        assert torch.equal(uv, expected_uv) and torch.equal(depth, expected_depth)
    assert len(calls) == 3
    cam = Camera()
    leaf = points.clone().requires_grad_()
    cam.project(leaf)[0].sum().backward()  # a gradient to record: the tensor path
    cam.project(points.double())  # float64: the tensor path
    assert len(calls) == 3 and leaf.grad is not None
    # Bad points: the compiled pass finds them and the tensor path raises its error, the same message.
    for bad in (_points(0, float("nan"), 0), _points(0, 0, float("inf")), _points(0, 0, 0, 0, 0, 99.5)):
        with pytest.raises(ValueError) as compiled:
            cam.project(bad.float())
        with monkeypatch.context() as patch, pytest.raises(ValueError) as tensor:
            patch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
            cam.project(bad.float())
        assert str(compiled.value) == str(tensor.value)
        assert "NaN" in str(compiled.value) or "camera behind the head" in str(compiled.value)
