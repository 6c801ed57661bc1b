"""Renderer: fast rasterizer vs the slow reference, known answers, gradients, errors, pytorch3d parity."""

from __future__ import annotations

import gzip
import math
import sys

import pytest
import torch

from conftest import skip_or_fail
from stylerig_lite.camera import Camera
from stylerig_lite.rasterize import (
    fragments_from_face_index,
    interpolate,
    rasterize,
    rasterize_reference,
    visible_faces,
    visible_faces_grouped,
)
from stylerig_lite.render import (
    PYTORCH3D_MISSING,
    icosphere,
    pytorch3d_available,
    render_mesh,
    shading_support,
)
from stylerig_lite.shading import ambient_gamma, directional_gamma, sh_shading, vertex_normals


# ---------------------------------------------------------------------------------------------- helpers
def load_ict_neutral(ict_folder):
    """The ICT-FaceKit neutral head as (vertices [V, 3] cm, faces [F, 3], face_part [F], part names).

    A plain OBJ reader (quads split into (v0, v1, v2), (v0, v2, v3)); the part of a face is
    its ``usemtl`` material. Stand-in until tests use ``stylerig_lite.morphable.load_face_model``.
    """
    vertices, faces, parts, names = [], [], [], []
    with gzip.open(ict_folder / "FaceXModel" / "generic_neutral_mesh.obj.gz", "rt") as handle:
        for line in handle:
            if line.startswith("v "):
                vertices.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("usemtl"):
                names.append(line.split()[1])
            elif line.startswith("f "):
                ids = [int(token.split("/")[0]) - 1 for token in line.split()[1:]]
                for k in range(1, len(ids) - 1):
                    faces.append([ids[0], ids[k], ids[k + 1]])
                    parts.append(len(names) - 1)
    return torch.tensor(vertices), torch.tensor(faces), torch.tensor(parts), names


@pytest.fixture(scope="module")
def ict_head(ict_mirror):
    return load_ict_neutral(ict_mirror)


def yaw_matrix(degrees: float, dtype=torch.float32) -> torch.Tensor:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=dtype)


def triangle_soup(seed: int, batch: int = 2, count: int = 6, dtype=torch.float64):
    """Random overlapping triangles in front of the default camera."""
    g = torch.Generator().manual_seed(seed)
    vertices = (torch.rand(batch, 3 * count, 3, generator=g, dtype=torch.float64) - 0.5)
    vertices = (vertices * torch.tensor([30.0, 30.0, 20.0], dtype=torch.float64)).to(dtype)
    return vertices, torch.arange(3 * count).view(count, 3)


def square(u0, u1, dtype=torch.float64):
    """A square facing the camera at z = 0 whose corners project to pixels (u0, u0)..(u1, u1) at 64 px."""
    to_cm = lambda p: (p - 32.0) * 100.0 / 160.0  # noqa: E731  default camera: f = 160 px, depth 100
    x0, x1, y0, y1 = to_cm(u0), to_cm(u1), -to_cm(u0), -to_cm(u1)
    vertices = torch.tensor([[[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]]], dtype=dtype)
    return vertices, torch.tensor([[0, 3, 2], [0, 2, 1]])  # counter-clockwise seen from the camera


def white(vertices):
    return torch.ones_like(vertices)


# --------------------------------------------------------------------------------- fast == reference
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cull", [False, True])
def test_fast_path_matches_reference_on_triangle_soups(seed, cull):
    vertices, faces = triangle_soup(seed)
    camera = Camera(image_size=16)
    fast = rasterize(vertices, faces, camera, cull_backfaces=cull)
    face_index, bary, depth = rasterize_reference(vertices, faces, camera, cull_backfaces=cull)
    assert (face_index >= 0).sum() > 20  # the test sees covered pixels and overlaps
    assert torch.equal(fast.face_index, face_index)
    torch.testing.assert_close(fast.dense_bary(), bary, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.dense_depth()[:, 0], depth, atol=1e-9, rtol=0)


def test_fast_path_matches_reference_in_float32_and_non_square_images():
    vertices, faces = triangle_soup(3, dtype=torch.float32)
    camera = Camera(image_size=(12, 20))
    fast = rasterize(vertices, faces, camera)
    face_index, bary, _ = rasterize_reference(vertices, faces, camera)
    assert torch.equal(fast.face_index, face_index)
    torch.testing.assert_close(fast.dense_bary().double(), bary, atol=1e-5, rtol=0)


def test_fast_path_matches_reference_on_a_closed_mesh_and_in_small_chunks():
    vertices, faces = icosphere(1, radius=12.0, dtype=torch.float64)
    vertices = (vertices @ yaw_matrix(20.0, torch.float64).T)[None]
    camera = Camera(image_size=16)
    face_index, bary, _ = rasterize_reference(vertices, faces, camera)
    for max_candidates in (1 << 22, 7):  # chunking must not change the result
        fast = rasterize(vertices, faces, camera, max_candidates=max_candidates)
        assert torch.equal(fast.face_index, face_index)
        torch.testing.assert_close(fast.dense_bary(), bary, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("max_candidates", [7, 1 << 22])
def test_grouped_visibility_equals_the_flat_candidate_list(dtype, max_candidates):
    # visible_faces_grouped computes the same edge functions and depth keys: identical ids, bit for bit.
    for seed in range(6):
        vertices, faces = triangle_soup(seed, batch=3, count=20, dtype=dtype)
        camera = Camera(image_size=(24, 40))
        uv, depth = camera.project(vertices)
        for cull in (False, True):
            expected = visible_faces(uv, depth, faces, 24, 40, cull_backfaces=cull)
            got = visible_faces_grouped(uv, depth, faces, 24, 40, cull_backfaces=cull, max_candidates=max_candidates)
            assert torch.equal(got, expected)
    vertices, faces = square(8.0, 24.0, dtype=dtype)  # shared diagonal through pixel centres: the top-left rule
    uv, depth = Camera(image_size=64).project(vertices)
    assert torch.equal(visible_faces_grouped(uv, depth, faces, 64, 64), visible_faces(uv, depth, faces, 64, 64))


def test_grouped_visibility_equals_the_flat_list_on_the_ict_head(ict_head):
    vertices, faces, _, _ = ict_head
    posed = torch.stack([vertices @ yaw_matrix(a).T for a in (-20.0, 5.0)])
    for size in (64, 200):
        uv, depth = Camera(image_size=size).project(posed)
        expected = visible_faces(uv, depth, faces, size, size)
        assert (expected >= 0).sum() > 0.2 * expected.numel()
        assert torch.equal(visible_faces_grouped(uv, depth, faces, size, size), expected)


# ---------------------------------------------------------------------- the compiled z-buffer (Numba)
def _needs_numba():
    from stylerig_lite import rasterize_jit

    if rasterize_jit.numba is None:
        skip_or_fail(f"numba is not importable ({rasterize_jit._MISSING}): pip install numba")


def _addcmul_is_fused() -> bool:
    """Whether torch.addcmul rounds once here (FMA hardware): then the two z-buffers agree bit for bit."""
    one = 1 + 2.0**-12
    t = torch.full((67,), one)  # a vectorised body and a scalar tail
    return bool((torch.addcmul(torch.full_like(t, -(1 + 2.0**-11)), t, t) == 2.0**-24).all())


def _assert_same_ids(got, expected):
    if _addcmul_is_fused():
        assert torch.equal(got, expected)
    else:  # a CPU without FMA: the tensor path's edge functions round twice; near-ties may differ
        assert (got == expected).float().mean() > 0.9999


@pytest.mark.parametrize("size", [(24, 40), (64, 64)])
def test_compiled_zbuffer_equals_the_tensor_path_on_triangle_soups(size):
    from stylerig_lite.rasterize_jit import visible_faces_jit

    _needs_numba()
    height, width = size
    for seed in range(6):
        vertices, faces = triangle_soup(seed, batch=3, count=20, dtype=torch.float32)
        uv, depth = Camera(image_size=size).project(vertices)
        for cull in (False, True):
            expected = visible_faces(uv, depth, faces, height, width, cull_backfaces=cull, backend="torch")
            assert (expected >= 0).any() and (expected < 0).any()
            _assert_same_ids(visible_faces_jit(uv, depth, faces, height, width, cull), expected)
    vertices, faces = square(8.0, 24.0, dtype=torch.float32)  # a shared diagonal through pixel centres
    uv, depth = Camera(image_size=64).project(vertices)
    got = visible_faces(uv, depth, faces, 64, 64, backend="jit")
    assert torch.equal(got, visible_faces(uv, depth, faces, 64, 64, backend="torch"))
    assert ((got >= 0).sum() == 16 * 16) and (got == 0).any() and (got == 1).any()


def test_compiled_zbuffer_equals_the_tensor_path_on_the_ict_head(ict_head):
    _needs_numba()
    vertices, faces, _, _ = ict_head
    posed = torch.stack([vertices @ yaw_matrix(a).T for a in (-20.0, 5.0, 30.0)])
    for size in (64, 128, 256):
        uv, depth = Camera(image_size=size).project(posed)
        expected = visible_faces(uv, depth, faces, size, size, backend="torch")
        assert (expected >= 0).sum() > 0.2 * expected.numel()
        _assert_same_ids(visible_faces(uv, depth, faces, size, size, backend="jit"), expected)


def test_visibility_backend_is_chosen_and_checked(monkeypatch):
    from stylerig_lite import rasterize_jit

    _needs_numba()
    vertices, faces = triangle_soup(0, dtype=torch.float32)
    uv, depth = Camera(image_size=16).project(vertices)
    calls = []
    real = rasterize_jit.visible_faces_jit
    monkeypatch.setattr(rasterize_jit, "visible_faces_jit", lambda *a: calls.append(1) or real(*a))
    auto = visible_faces(uv, depth, faces, 16, 16)
    assert calls == [1]  # float32 on the CPU: the compiled loop
    visible_faces(uv.double(), depth.double(), faces, 16, 16)
    assert calls == [1]  # float64: the tensor path
    monkeypatch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
    assert torch.equal(visible_faces(uv, depth, faces, 16, 16), auto) and calls == [1]
    with pytest.raises(ValueError, match="backend must be one of"):
        visible_faces(uv, depth, faces, 16, 16, backend="numba")
    with pytest.raises(TypeError, match="float32 CPU tensors"):
        visible_faces(uv.double(), depth.double(), faces, 16, 16, backend="jit")
    with pytest.raises(ValueError, match="valid 0.."):
        visible_faces(uv, depth, faces + 100, 16, 16, backend="jit")
    monkeypatch.setenv("STYLERIG_LITE_RASTERIZER", "numba")
    with pytest.raises(ValueError, match="expected 'auto'"):
        visible_faces(uv, depth, faces, 16, 16)


def test_shared_edges_through_pixel_centres_are_drawn_exactly_once():
    # The diagonal of this square passes exactly through pixel centres; a strict inside test
    # leaves holes there, an inclusive one draws them twice. The top-left rule does neither.
    vertices, faces = square(8.0, 24.0)
    fast = rasterize(vertices, faces, Camera(image_size=64))
    assert torch.equal(fast.face_index, rasterize_reference(vertices, faces, Camera(image_size=64))[0])
    assert int((fast.face_index >= 0).sum()) == 16 * 16
    diagonal = torch.arange(8, 24)
    assert (fast.face_index[0, diagonal, diagonal] >= 0).all()
    # A fan of 8 triangles around a vertex that sits exactly on a pixel centre.
    centre = 16.5
    ring = [(centre + 6 * math.cos(k * math.pi / 4), centre + 6 * math.sin(k * math.pi / 4)) for k in range(8)]
    ring = [(round(u * 4) / 4, round(v * 4) / 4) for u, v in ring]  # exactly representable
    to_cm = lambda p: (p - 16.0) * 100.0 / 80.0  # noqa: E731  32 px: f = 80 px
    pts = [(to_cm(u), -to_cm(v), 0.0) for u, v in [(centre, centre)] + ring]
    vertices = torch.tensor([pts], dtype=torch.float64)
    faces = torch.tensor([[0, 1 + (k + 1) % 8, 1 + k] for k in range(8)])
    fast = rasterize(vertices, faces, Camera(image_size=32))
    reference, _, _ = rasterize_reference(vertices, faces, Camera(image_size=32))
    assert torch.equal(fast.face_index, reference)
    assert fast.face_index[0, 16, 16] >= 0  # the shared vertex's pixel is drawn


# ------------------------------------------------------------------------------------- known answers
def test_square_facing_the_camera_covers_the_expected_pixels_and_colour():
    vertices, faces = square(8.0, 24.0)
    albedo = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64).expand(1, 4, 3)
    out = render_mesh(vertices, faces, albedo, ambient_gamma(1.0, dtype=torch.float64), Camera(), image_size=64,
                      background=torch.tensor([0.0, 1.0, 0.0]), landmark_indices=torch.tensor([0, 2]))
    assert out.image.shape == (1, 3, 64, 64) and out.mask.shape == (1, 1, 64, 64)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[8:24, 8:24] = True
    assert torch.equal(out.mask[0, 0] > 0, expected)
    torch.testing.assert_close(out.image[0, :, 12, 20], torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64))
    torch.testing.assert_close(out.image[0, :, 40, 40], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out.landmarks[0], torch.tensor([[8.0, 8.0], [24.0, 24.0]], dtype=torch.float64))
    torch.testing.assert_close(out.depth[0, 0, 8:24, 8:24], torch.full((16, 16), 100.0, dtype=torch.float64))
    assert (out.depth[0, 0][~expected] == 0).all() and (out.face_index[0][~expected] == -1).all()
    torch.testing.assert_close(out.normals[0], torch.tensor([[0.0, 0.0, 1.0]] * 4, dtype=torch.float64))


def test_landmark_equals_the_hand_computed_projection():
    vertices = torch.tensor([[[3.0, -2.0, 10.0], [8.0, -2.0, 10.0], [3.0, 4.0, 10.0]]])
    out = render_mesh(vertices, torch.tensor([[0, 1, 2]]), white(vertices), ambient_gamma(1.0),
                      image_size=64, landmark_indices=torch.tensor([0]))
    f, depth = 2.5 * 64, 100.0 - 10.0
    expected = torch.tensor([[[f * 3.0 / depth + 32.0, f * 2.0 / depth + 32.0]]])
    torch.testing.assert_close(out.landmarks, expected)


def test_perspective_correct_interpolation_lands_on_the_ray():
    # A strongly tilted quad: interpolating world positions with the barycentrics must give the
    # point where the pixel's ray meets the plane (screen-space barycentrics would not).
    vertices = torch.tensor([[[-15.0, -15.0, 40.0], [15.0, -15.0, -40.0], [15.0, 15.0, -40.0], [-15.0, 15.0, 40.0]]],
                            dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    camera = Camera(image_size=32)
    fragments = rasterize(vertices, faces, camera)
    from stylerig_lite.rasterize import interpolate

    points = interpolate(fragments, vertices)  # [1, 3, H, W] world position per pixel
    covered = fragments.face_index[0] >= 0
    assert covered.sum() > 100
    uv, depth = camera.project(points[0].permute(1, 2, 0)[covered][None])
    torch.testing.assert_close(uv[0], camera.pixel_centres(torch.float64)[covered])
    torch.testing.assert_close(depth[0], fragments.dense_depth()[0, 0][covered])


def test_nearest_surface_wins_and_culling_removes_back_faces():
    near, faces = square(4.0, 20.0)
    far = near.clone()
    far[..., 2] = -10.0
    far[..., :2] += 2.0
    vertices = torch.cat([far, near], dim=1)
    faces2 = torch.cat([faces, faces + 4])
    out = render_mesh(vertices, faces2, white(vertices), ambient_gamma(1.0, dtype=torch.float64), image_size=64)
    assert (out.face_index[0, 10, 10] >= 2) and out.depth[0, 0, 10, 10] == pytest.approx(100.0)
    flipped = faces.flip(1)  # now clockwise seen from the camera: a back face
    out = render_mesh(near, flipped, white(near), ambient_gamma(1.0, dtype=torch.float64), image_size=64)
    assert out.mask.sum() == 16 * 16
    out = render_mesh(near, flipped, white(near), ambient_gamma(1.0, dtype=torch.float64), image_size=64,
                      cull_backfaces=True)
    assert out.mask.sum() == 0


def test_parts_and_backgrounds(ict_head):
    vertices, faces, face_part, names = ict_head
    albedo = torch.full((1, len(vertices), 3), 0.8)
    bg = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = render_mesh(vertices[None], faces, albedo, directional_gamma([0, 0, 1], 0.7, 0.3), image_size=32,
                      face_part=face_part, part_names=names, background=bg)
    assert out.part_index.shape == (1, 32, 32)
    assert torch.equal(out.part_index >= 0, out.face_index >= 0)
    face = out.part_mask("M_Face")
    assert 50 < face.sum() < out.mask.sum()
    masks = out.part_masks()
    assert set(masks) == set(names)
    torch.testing.assert_close(sum(masks.values()), out.mask)
    torch.testing.assert_close(out.part_mask(["M_Face", 1]), face + out.part_mask("M_BackHead"))
    background = out.mask[0, 0] == 0
    torch.testing.assert_close(out.image[0][:, background], bg[:, background])
    # The nose (largest z) faces the camera: its normal points along +z.
    nose = vertices[:, 2].argmax()
    assert out.normals[0, nose, 2] > 0.95
    with pytest.raises(ValueError, match="unknown part name"):
        out.part_mask("M_Hair")
    plain = render_mesh(vertices[None], faces, albedo, ambient_gamma(1.0), image_size=16, background=0.5)
    assert plain.part_index is None and plain.landmarks is None
    with pytest.raises(ValueError, match="face_part"):
        plain.part_mask(0)


def test_mesh_outside_the_image_draws_only_background():
    vertices = torch.tensor([[[100.0, 100.0, 0.0], [120.0, 100.0, 0.0], [100.0, 120.0, 0.0]]], requires_grad=True)
    out = render_mesh(vertices, torch.tensor([[0, 1, 2]]), white(vertices), ambient_gamma(1.0), image_size=8,
                      background=0.25)
    assert out.mask.sum() == 0 and (out.face_index == -1).all()
    torch.testing.assert_close(out.image, torch.full((1, 3, 8, 8), 0.25))
    out.image.sum().backward()
    assert (vertices.grad == 0).all()


def _shade_every_vertex(vertices, faces, albedo, gamma, camera):
    """The renderer before the shading support: every vertex projected, lit and kept (the reference)."""
    uv, depth = camera.project(vertices)
    face_index = visible_faces(uv.detach(), depth.detach(), faces, camera.height, camera.width)
    fragments = fragments_from_face_index(face_index, uv, depth, faces)
    return interpolate(fragments, albedo * sh_shading(vertex_normals(vertices, faces), gamma))


def test_shading_only_the_support_gives_the_same_image_and_gradients(ict_head):
    vertices, faces, _, _ = ict_head
    posed = torch.stack([vertices @ yaw_matrix(a).T for a in (-35.0, 20.0)]).double()
    g = torch.Generator().manual_seed(3)
    albedo = torch.rand(2, len(vertices), 3, generator=g, dtype=torch.float64)
    gamma = directional_gamma([0.3, 0.2, 1.0], 0.7, 0.3, batch_size=2, dtype=torch.float64)
    camera = Camera(image_size=32)
    uv, depth = camera.project(posed)
    support = shading_support(visible_faces(uv, depth, faces, 32, 32), faces, len(vertices))
    assert len(support.faces) < len(faces) / 2  # the test exercises a real subset
    weights = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    grads = []
    for render in (lambda *a: render_mesh(*a).image, _shade_every_vertex):
        inputs = [posed.clone().requires_grad_(), albedo.clone().requires_grad_(), gamma.clone().requires_grad_()]
        image = render(inputs[0], faces, *inputs[1:], camera)
        (image * weights).sum().backward()
        grads.append((image.detach(), *(x.grad for x in inputs)))
    assert torch.equal(grads[0][0], grads[1][0])  # the image, bit for bit
    for ours, reference in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    # The public record speaks in mesh vertex ids: full-mesh colours through it give the image again.
    out = render_mesh(posed, faces, albedo, gamma, camera)
    assert torch.equal(interpolate(out.fragments, out.vertex_colors), out.image)
    assert torch.equal(out.normals, vertex_normals(posed, faces))


# ---------------------------------------------------------------------------------------- gradients
def _two_triangles():
    vertices = torch.tensor([[[-12.0, -10.0, 0.0], [10.3, -8.1, 5.0], [-9.1, 11.7, -3.0],
                              [4.2, 6.1, 8.0], [13.4, 3.3, 2.0], [9.7, 14.9, -4.0]]], dtype=torch.float64)
    return vertices, torch.tensor([[0, 1, 2], [3, 4, 5]])


def test_gradients_match_finite_differences():
    vertices, faces = _two_triangles()
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(1, 6, 3, generator=g, dtype=torch.float64)
    gamma = directional_gamma([0.2, 0.5, 1.0], 0.6, 0.4, dtype=torch.float64)
    camera = Camera(image_size=12)
    face_index = render_mesh(vertices, faces, colours, gamma, camera).face_index
    # Visibility must not change under the finite-difference steps (it has no gradient).
    for step in (1e-4, -1e-4):
        moved = render_mesh(vertices + step, faces, colours, gamma, camera).face_index
        assert torch.equal(moved, face_index)

    def image(v, c, l):
        return render_mesh(v, faces, c, l, camera).image

    inputs = (vertices.requires_grad_(), colours.requires_grad_(), gamma.requires_grad_())
    assert torch.autograd.gradcheck(image, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_depth_and_landmarks_are_differentiable_and_mask_is_not():
    vertices, faces = _two_triangles()
    vertices.requires_grad_()
    out = render_mesh(vertices, faces, white(vertices), ambient_gamma(1.0, dtype=torch.float64),
                      image_size=12, landmark_indices=torch.tensor([0, 4]))
    assert not out.mask.requires_grad
    (out.depth.sum() + out.landmarks.sum()).backward()
    assert vertices.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- errors
def _good():
    vertices, faces = _two_triangles()
    return dict(vertices=vertices, faces=faces, vertex_colors=white(vertices),
                gamma=ambient_gamma(1.0, dtype=torch.float64), image_size=12)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(vertices=torch.zeros(6, 3)), ValueError, "vertices has shape"),
        (dict(faces=torch.zeros(2, 4, dtype=torch.long)), ValueError, "faces has shape"),
        (dict(faces=torch.zeros(2, 3)), TypeError, "integer"),
        (dict(vertices=torch.zeros(1, 0, 3, dtype=torch.float64), vertex_colors=torch.zeros(1, 0, 3)),
         ValueError, "empty mesh"),
        (dict(faces=torch.zeros(0, 3, dtype=torch.long)), ValueError, "empty mesh"),
        (dict(faces=torch.tensor([[0, 1, 6]])), ValueError, "faces index vertices"),
        (dict(faces=torch.tensor([[0, 1, -1]])), ValueError, "faces index vertices"),
        (dict(vertex_colors=torch.ones(1, 5, 3)), ValueError, "vertex_colors has shape"),
        (dict(vertex_colors=torch.ones(3, 6, 3)), ValueError, "vertex_colors has batch size"),
        (dict(vertex_colors=torch.full((1, 6, 3), float("nan"))), ValueError, "vertex_colors contains"),
        (dict(gamma=torch.zeros(1, 9)), ValueError, "gamma has shape"),
        (dict(gamma=torch.full((1, 27), float("nan"))), ValueError, "gamma contains"),
        (dict(image_size=0), ValueError, "positive"),
        (dict(image_size=(16, -2)), ValueError, "positive"),
        (dict(backend="opengl"), ValueError, "backend"),
        (dict(camera="default"), TypeError, "Camera"),
        (dict(camera=Camera(distance=5.0)), ValueError, "camera behind the head"),
        (dict(landmark_indices=torch.tensor([0, 6])), ValueError, "landmark_indices"),
        (dict(face_part=torch.tensor([0])), ValueError, "face_part"),
        (dict(background=torch.zeros(4)), ValueError, "background"),
        (dict(background=torch.zeros(1, 3, 5, 5)), ValueError, "background"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    kwargs = _good()
    kwargs.update(change)
    with pytest.raises(error, match=match):
        render_mesh(**kwargs)


def test_nan_vertices_are_rejected():
    kwargs = _good()
    kwargs["vertices"] = kwargs["vertices"].clone()
    kwargs["vertices"][0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="vertices contains"):
        render_mesh(**kwargs)


def test_missing_pytorch3d_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch3d", None)  # makes `import pytorch3d...` raise ImportError
    monkeypatch.setitem(sys.modules, "pytorch3d.renderer", None)
    with pytest.raises(ImportError, match="pip install stylerig-lite\\[pytorch3d\\]") as info:
        render_mesh(**_good(), backend="pytorch3d")
    assert "easypytorch3d==0.7.9.post1" in str(info.value) and "2.11.0 or 2.12.1" in str(info.value)
    assert "easypytorch3d" in PYTORCH3D_MISSING


# -------------------------------------------------------------------------------- pytorch3d parity
# Tolerances. Measured here (torch 2.11, pytorch3d 0.7.9.post1, float32): mask IoU 1.0 on the
# icosphere and the ICT head at 32-128 px; same face at >= 99.97 % of pixels (the rest: nearly
# coplanar overlapping layers of the head, e.g. eye occlusion shells, where float round-off
# picks the other face); image mean |diff| <= 6e-8 (icosphere) and <= 1e-5 (head at 128 px,
# 1e-7 at 64 px); landmarks <= 4e-6 px. The bounds leave 10x head-room or more.
MASK_IOU_MIN = 0.99
IMAGE_MAD_MAX = 1e-4  # mean absolute difference, colours in [0, 1]
LANDMARK_PX_MAX = 0.05


@pytest.fixture
def need_pytorch3d():
    if not pytorch3d_available():
        skip_or_fail("pytorch3d is not importable (pip install stylerig-lite[pytorch3d])")


def _compare_backends(vertices, faces, albedo, gamma, camera, landmarks, **kwargs):
    ours = render_mesh(vertices, faces, albedo, gamma, camera, landmark_indices=landmarks, **kwargs)
    ref = render_mesh(vertices, faces, albedo, gamma, camera, landmark_indices=landmarks, backend="pytorch3d",
                      **kwargs)
    a, b = ours.mask > 0, ref.mask > 0
    iou = float((a & b).sum()) / float((a | b).sum())
    mad = float((ours.image - ref.image).abs().mean())
    lm = float((ours.landmarks - ref.landmarks).abs().max())
    same_face = float((ours.face_index == ref.face_index).float().mean())
    return ours, ref, iou, mad, lm, same_face


@pytest.mark.pytorch3d
@pytest.mark.usefixtures("need_pytorch3d")
@pytest.mark.parametrize("image_size", [32, (24, 40)])
def test_pytorch3d_parity_on_an_icosphere(image_size):
    sphere, faces = icosphere(2, radius=14.0)  # 320 triangles
    poses = torch.stack([yaw_matrix(a) for a in (0.0, 25.0)])
    vertices = sphere[None] @ poses.transpose(1, 2) + torch.tensor([[[3.0, -2.0, 5.0]], [[-4.0, 1.0, -8.0]]])
    g = torch.Generator().manual_seed(1)
    albedo = torch.rand(2, len(sphere), 3, generator=g)
    gamma = directional_gamma(torch.tensor([[0.3, 0.4, 1.0], [-0.5, 0.2, 0.8]]), 0.7, 0.3)
    for cull in (False, True):
        ours, ref, iou, mad, lm, same = _compare_backends(vertices, faces, albedo, gamma, Camera(image_size=image_size),
                                                          torch.arange(0, len(sphere), 7), cull_backfaces=cull)
        assert iou >= MASK_IOU_MIN and mad <= IMAGE_MAD_MAX and lm <= LANDMARK_PX_MAX
        assert same >= 0.99
        both = (ours.mask > 0) & (ref.mask > 0)
        torch.testing.assert_close(ours.depth[both], ref.depth[both], atol=1e-3, rtol=0)
    # Gradients agree too where both pick the same faces (same barycentric formulas).
    grads = []
    for backend in ("ours", "pytorch3d"):
        v = vertices.clone().requires_grad_()
        c = albedo.clone().requires_grad_()
        out = render_mesh(v, faces, c, gamma, Camera(image_size=image_size), backend=backend)
        (out.image * torch.linspace(0, 1, out.image.numel()).view_as(out.image)).sum().backward()
        grads.append((v.grad, c.grad))
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-3, rtol=1e-2)


@pytest.mark.pytorch3d
@pytest.mark.usefixtures("need_pytorch3d")
def test_pytorch3d_parity_on_the_full_ict_head(ict_head):
    vertices, faces, face_part, _ = ict_head  # 26,719 vertices, 52,220 triangles
    assert faces.shape == (52220, 3)
    posed = (vertices @ yaw_matrix(15.0).T)[None]
    albedo = (0.5 + 0.4 * torch.rand(1, len(vertices), 3, generator=torch.Generator().manual_seed(2)))
    gamma = directional_gamma([0.4, 0.3, 1.0], 0.6, 0.4)
    landmarks = torch.arange(0, len(vertices), 401)[:68]
    ours, ref, iou, mad, lm, same = _compare_backends(posed, faces, albedo, gamma, Camera(image_size=64), landmarks,
                                                      face_part=face_part)
    assert iou >= MASK_IOU_MIN and mad <= IMAGE_MAD_MAX and lm <= LANDMARK_PX_MAX
    assert same >= 0.99
    assert float((ours.part_index == ref.part_index).float().mean()) >= 0.99


def test_compiled_normals_and_shading_equal_the_tensor_path_on_the_ict_head(ict_head, monkeypatch):
    from stylerig_lite.shading import SH_FACTORS, directional_gamma, sh_shading, vertex_normals
    from stylerig_lite.shading_jit import sh_shading_jit, vertex_normals_jit

    _needs_numba()
    vertices, faces, _, _ = ict_head
    posed = torch.stack([vertices @ yaw_matrix(a).T for a in (-20.0, 5.0, 30.0)]).float()
    gamma = directional_gamma([0.3, 0.5, 1.0], ambient=0.4, batch_size=3)
    with monkeypatch.context() as patch:
        patch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
        normals = vertex_normals(posed, faces)
        shaded = sh_shading(normals, gamma)
    assert torch.equal(vertex_normals_jit(posed, faces), normals)
    assert torch.equal(sh_shading_jit(normals, gamma, SH_FACTORS), shaded)
