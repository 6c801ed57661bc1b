"""FaceWorld: determinism, label consistency, scene context (pre-rendered shards: test_datasets.py)."""

from __future__ import annotations

import json

import pytest
import torch

from stylerig_lite import morphable
from stylerig_lite.world import WORLD_PART_NAMES, FaceWorld, WorldConfig


@pytest.fixture(scope="module")
def world() -> FaceWorld:
    return FaceWorld(morphable.load_face_model(progress=False))


def test_sampling_is_deterministic_given_a_seed(world):
    a, b, c = world.sample(4, seed=11), world.sample(4, seed=11), world.sample(4, seed=12)
    assert torch.equal(a.images, b.images) and torch.equal(a.params.to_vector(), b.params.to_vector())
    assert not torch.equal(a.images, c.images)


def test_outputs_have_the_documented_layout(world):
    batch = world.sample(3, seed=0)
    size = world.config.image_size
    assert batch.images.shape == (3, 3, size, size)
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert batch.params.to_vector().shape == (3, morphable.NUM_PARAMS)
    assert batch.landmarks.shape == (3, 68, 2)
    assert batch.face_mask.shape == batch.mask.shape == (3, 1, size, size)
    assert torch.allclose(batch.images_pm1(), batch.images * 2 - 1)


def test_landmarks_are_the_projection_of_the_landmark_vertices(world):
    batch = world.sample(4, seed=3)
    vertices = world.model(batch.params).landmarks  # [B, 68, 3] posed
    uv, _ = world.camera.project(vertices)
    assert torch.allclose(batch.landmarks, uv, atol=1e-4)
    # And they land on the face: most landmark pixels show the face or its features.
    idx = batch.landmarks.round().long().clamp(0, world.config.image_size - 1)
    parts = torch.stack([batch.part_index[b, idx[b, :, 1], idx[b, :, 0]] for b in range(4)])
    face_like = torch.isin(parts, torch.tensor([WORLD_PART_NAMES.index(p) for p in ("face", "eyes", "eyelashes", "mouth_interior", "teeth", "hair")]))
    assert face_like.float().mean() > 0.8


def test_scenes_contain_context_a_3dmm_lacks(world):
    batch = world.sample(16, seed=5)
    seen = {WORLD_PART_NAMES[i] for i in batch.part_index.unique().tolist() if i >= 0}
    assert {"face", "hair", "clothes", "head_neck"} <= seen
    background_share = (batch.part_index == -1).float().mean()
    assert 0.2 < background_share < 0.8
    # Pose spread follows the documented distribution (roll included).
    angles = batch.params.angles_deg
    d = world.config.params
    assert angles[:, 0].abs().max() <= d.yaw_deg and angles[:, 2].abs().max() <= d.roll_deg
    assert angles[:, 2].std() > 3.0


def test_hair_can_be_removed_and_the_face_stays(world):
    batch = world.sample(2, seed=8)
    bald = dict(batch.scene, hair_front_cm=torch.full((2,), 99.0), hair_back_cm=torch.full((2,), 99.0))
    rendered = world.render(batch.params, bald)
    assert (rendered.part_index == WORLD_PART_NAMES.index("hair")).sum() == 0
    assert torch.equal(rendered.landmarks, batch.landmarks)


def test_render_is_differentiable_in_the_parameters(world):
    batch = world.sample(2, seed=9)
    vector = batch.params.to_vector().clone().requires_grad_(True)
    out = world.render(morphable.FaceParams.from_vector(vector), batch.scene)
    (out.images * batch.face_mask).mean().backward()
    grad = vector.grad
    for name in ("expression", "albedo", "light", "pose"):
        assert grad[:, morphable.SLICES[name]].abs().sum() > 0, name


def test_config_changes_the_distribution():
    world = FaceWorld(morphable.load_face_model(progress=False), WorldConfig(bald_prob=1.0, headwear_prob=0.0))
    batch = world.sample(4, seed=0)
    assert (batch.part_index == WORLD_PART_NAMES.index("hair")).sum() == 0


def test_world_benchmark_prints_images_per_second(capsys):
    from stylerig_lite import bench

    assert bench.main(["world", "--json", "--batch", "2", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch"] == 2 and result["images_per_s"] > 0


def test_a_fixed_seed_renders_the_pinned_images(world):
    # Pinned from the renderer of issue 26 (the images the fast paths must not change). Tolerances
    # allow for float round-off of other CPUs and BLAS builds (a few pixels of coverage, 1e-4 in colour),
    # not for a change of the scene, the sampler or the coverage rule.
    batch = world.sample(4, seed=0)
    torch.testing.assert_close(batch.mask.sum((1, 2, 3)), torch.tensor([1852.0, 1780.0, 1832.0, 1575.0]), atol=4, rtol=0)
    torch.testing.assert_close(batch.face_mask.sum((1, 2, 3)), torch.tensor([746.0, 806.0, 654.0, 751.0]), atol=4, rtol=0)
    torch.testing.assert_close(batch.images.mean((1, 2, 3)), torch.tensor([0.424183, 0.465120, 0.510092, 0.522388]),
                               atol=1e-4, rtol=0)
    centre = torch.tensor([[0.583947, 0.343982, 0.271274], [0.796000, 0.522574, 0.429632],
                           [0.172424, 0.110472, 0.099138], [0.905829, 0.586077, 0.436486]])
    torch.testing.assert_close(batch.images[:, :, 32, 32], centre, atol=1e-4, rtol=0)


def test_grouped_visibility_renders_identical_images(world, monkeypatch):
    from stylerig_lite import rasterize, render

    expected = world.sample(8, seed=3)
    monkeypatch.setattr(render, "visible_faces", rasterize.visible_faces_grouped)
    got = world.sample(8, seed=3)
    assert torch.equal(got.images, expected.images) and torch.equal(got.part_index, expected.part_index)


def test_compiled_loops_render_identical_images(world, monkeypatch):
    """The z-buffer, normals and shading loops (rasterize_jit, shading_jit) against the tensor path."""
    from stylerig_lite import rasterize_jit

    if not rasterize_jit.available():
        pytest.skip("numba is not importable: both runs would take the tensor path")
    expected = world.sample(8, seed=5)
    monkeypatch.setenv("STYLERIG_LITE_RASTERIZER", "torch")
    got = world.sample(8, seed=5)
    assert torch.equal(got.images, expected.images) and torch.equal(got.part_index, expected.part_index)
